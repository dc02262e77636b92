//! Checking a job submission, field by field, into the registry's `JobSpec`: names, environment, labels,
//! resources with their units, constraints, locality, retries, secrets and limits; and the query
//! parameters of job lists and usage. Every refusal names the field. Pure: no state, no I/O.

use super::*;

pub(super) fn invalid(field: &str, message: impl std::fmt::Display) -> ServiceError {
    ServiceError::invalid(field, message)
}

pub(super) fn unit(field: &str) -> impl Fn(UnitError) -> ServiceError + '_ {
    move |e| invalid(field, e)
}

/// `[A-Za-z0-9_-]{1,64}`, the rule for region, cluster and node names.
pub(super) fn validate_name_part(field: &str, v: &str) -> Result<(), ServiceError> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(field, "must be 1-64 characters of [A-Za-z0-9_-]"))
    }
}

pub(super) fn validate_env_name(name: &str) -> Result<(), ServiceError> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 256
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(invalid(
            "env",
            format!("{name:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*, at most 256 bytes)"),
        ));
    }
    if RESERVED_ENV.contains(&name) {
        return Err(invalid(
            "env",
            format!("{name} is set by Meridian from the GPUs assigned to the job"),
        ));
    }
    Ok(())
}

pub(super) fn validate_label(key: &str, value: &str) -> Result<(), ServiceError> {
    let key_ok = !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if !key_ok {
        return Err(invalid(
            "constraints.labels",
            format!("{key:?} is not a label name (1-128 characters of [A-Za-z0-9._/-])"),
        ));
    }
    if value.len() > 256 || value.chars().any(char::is_control) {
        return Err(invalid(
            "constraints.labels",
            format!("the value of {key} must be at most 256 bytes without control characters"),
        ));
    }
    Ok(())
}

pub(super) fn cpu_millis(r: &ResourcesBody) -> Result<u64, ServiceError> {
    let millis = match (&r.cpu, r.cpu_millis) {
        (Some(_), Some(_)) => {
            return Err(invalid("resources.cpu", "give cpu or cpu_millis, not both"))
        }
        (None, None) => return Ok(0),
        (None, Some(m)) => (m, "resources.cpu_millis"),
        (Some(Value::Number(n)), None) => (
            parse_cpu_millis(&n.to_string()).map_err(unit("resources.cpu"))?,
            "resources.cpu",
        ),
        (Some(Value::String(s)), None) => (
            parse_cpu_millis(s).map_err(unit("resources.cpu"))?,
            "resources.cpu",
        ),
        (Some(_), None) => {
            return Err(invalid(
                "resources.cpu",
                "must be a number of cores (0.5) or a string (\"2\", \"500m\")",
            ))
        }
    };
    let (millis, field) = millis;
    if millis == 0 {
        return Err(invalid(field, "must be more than 0"));
    }
    if millis > MAX_CPU_MILLIS {
        return Err(invalid(
            field,
            format!("at most {} cores", MAX_CPU_MILLIS / 1000),
        ));
    }
    Ok(millis)
}

pub(super) fn memory_bytes(r: &ResourcesBody) -> Result<u64, ServiceError> {
    let (bytes, field) = match (&r.memory, r.memory_bytes) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "resources.memory",
                "give memory or memory_bytes, not both",
            ))
        }
        (None, None) => return Ok(0),
        (None, Some(b)) => (b, "resources.memory_bytes"),
        (Some(Value::Number(n)), None) => match n.as_u64() {
            Some(b) => (b, "resources.memory"),
            None => {
                return Err(invalid(
                    "resources.memory",
                    "must be a whole number of bytes or a size such as \"512Mi\"",
                ))
            }
        },
        (Some(Value::String(s)), None) => (
            parse_byte_size(s).map_err(unit("resources.memory"))?,
            "resources.memory",
        ),
        (Some(_), None) => {
            return Err(invalid(
                "resources.memory",
                "must be a number of bytes or a size such as \"512Mi\", \"2G\" or \"1GiB\"",
            ))
        }
    };
    if bytes == 0 {
        return Err(invalid(field, "must be more than 0"));
    }
    Ok(bytes)
}

pub(super) fn resources(r: &ResourcesBody) -> Result<ResourceRequest, ServiceError> {
    let cpu_millis = cpu_millis(r)?;
    let memory_bytes = memory_bytes(r)?;
    let gpus = r.gpus.unwrap_or(0);
    if gpus > MAX_GPUS {
        return Err(invalid("resources.gpus", format!("at most {MAX_GPUS}")));
    }
    let gpu_model = match r.gpu_model.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(m) if m.len() > 128 || m.chars().any(char::is_control) => {
            return Err(invalid(
                "resources.gpu_model",
                "at most 128 bytes without control characters",
            ))
        }
        Some(m) => Some(m.to_owned()),
    };
    if gpu_model.is_some() && gpus == 0 {
        return Err(invalid(
            "resources.gpu_model",
            "needs resources.gpus of at least 1",
        ));
    }
    if let Some(mib) = r.gpu_min_memory_mib {
        if gpus == 0 {
            return Err(invalid(
                "resources.gpu_min_memory_mib",
                "needs resources.gpus of at least 1",
            ));
        }
        if mib == 0 {
            return Err(invalid(
                "resources.gpu_min_memory_mib",
                "must be more than 0",
            ));
        }
    }
    Ok(ResourceRequest {
        cpu_millis,
        memory_bytes,
        // Bounded by MAX_GPUS above.
        gpus: u32::try_from(gpus).unwrap_or(u32::MAX),
        gpu_model,
        gpu_min_memory_mib: r.gpu_min_memory_mib,
    })
}

pub(super) fn optional_name_part(
    field: &str,
    v: &Option<String>,
) -> Result<Option<String>, ServiceError> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => validate_name_part(field, s).map(|()| Some(s.to_owned())),
    }
}

pub(super) fn constraints(c: &ConstraintsBody) -> Result<Constraints, ServiceError> {
    if c.labels.len() > MAX_LABELS {
        return Err(invalid(
            "constraints.labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (k, v) in &c.labels {
        validate_label(k, v)?;
    }
    Ok(Constraints {
        region: optional_name_part("constraints.region", &c.region)?,
        cluster: optional_name_part("constraints.cluster", &c.cluster)?,
        labels: c.labels.clone(),
    })
}

pub(super) fn strategy(s: Option<&str>) -> Result<Strategy, ServiceError> {
    match s.map(str::trim) {
        None | Some("") => Ok(Strategy::default()),
        Some("bin_pack" | "binpack" | "bin-pack") => Ok(Strategy::BinPack),
        Some("spread") => Ok(Strategy::Spread),
        Some(other) => Err(invalid(
            "strategy",
            format!("{other:?} is not bin_pack or spread"),
        )),
    }
}

/// Turns a submission into the spec that enters the state, naming the first offending field.
pub(crate) fn job_spec(req: SubmitJobRequest) -> Result<JobSpec, ServiceError> {
    let command = req.command.unwrap_or_default();
    if command.trim().is_empty() {
        return Err(invalid("command", "required: the program to run"));
    }
    let mut spec = JobSpec::new(command);
    spec.name = req.name.unwrap_or_default();
    for name in req.env.keys() {
        validate_env_name(name)?;
    }
    if let Some(dir) = &req.working_dir {
        if !dir.starts_with('/') {
            return Err(invalid("working_dir", "must be an absolute path"));
        }
    }
    spec.args = req.args;
    spec.env = req.env;
    spec.working_dir = req.working_dir.filter(|d| !d.is_empty());
    spec.resources = resources(&req.resources)?;
    spec.replicas = match req.replicas {
        None => 1,
        Some(n) if (1..=u64::from(MAX_REPLICAS)).contains(&n) => {
            // Bounded by the check above.
            u32::try_from(n).unwrap_or(1)
        }
        Some(_) => {
            return Err(invalid(
                "replicas",
                format!("must be 1-{MAX_REPLICAS} (more than 1 runs a gang: all replicas or none)"),
            ))
        }
    };
    spec.constraints = constraints(&req.constraints)?;
    spec.data_locality = match req.data_locality {
        None => None,
        Some(l) => {
            validate_name_part("data_locality.region", &l.region)?;
            Some(Locality {
                region: l.region,
                cluster: optional_name_part("data_locality.cluster", &l.cluster)?,
            })
        }
    };
    let priority = req.priority.unwrap_or(0);
    if !PRIORITY_RANGE.contains(&priority) {
        return Err(invalid(
            "priority",
            format!(
                "must be between {} and {}",
                PRIORITY_RANGE.start(),
                PRIORITY_RANGE.end()
            ),
        ));
    }
    // Bounded by PRIORITY_RANGE above.
    spec.priority = i32::try_from(priority).unwrap_or_default();
    spec.preemption = req.preemption;
    spec.preemptible = req.preemptible.unwrap_or(true);
    spec.strategy = strategy(req.strategy.as_deref())?;
    let max_attempts = req.retry.max_attempts.unwrap_or(3);
    if !(1..=20).contains(&max_attempts) {
        return Err(invalid("retry.max_attempts", "must be 1-20"));
    }
    spec.retry = RetryPolicy {
        // Bounded by the check above.
        max_attempts: u32::try_from(max_attempts).unwrap_or(3),
        on_failure: req.retry.on_failure,
    };
    spec.timeout_secs = match req.timeout_secs {
        None => None,
        Some(0) => {
            return Err(invalid(
                "timeout_secs",
                "must be positive (leave it out for no timeout)",
            ))
        }
        Some(s) if s > MAX_TIMEOUT_SECS => {
            return Err(invalid(
                "timeout_secs",
                format!("at most {MAX_TIMEOUT_SECS} (365 days)"),
            ))
        }
        Some(s) => Some(s),
    };
    if let Some(grace) = req.cancel_grace_secs {
        if grace > MAX_CANCEL_GRACE_SECS {
            return Err(invalid(
                "cancel_grace_secs",
                format!("at most {MAX_CANCEL_GRACE_SECS}"),
            ));
        }
        spec.cancel_grace_secs = grace;
    }
    spec.secrets = req.secrets.clone();
    if req.secrets_env && spec.secrets.is_empty() {
        return Err(invalid("secrets_env", "needs secrets to pass"));
    }
    spec.secrets_env = req.secrets_env;
    // The limits every replica enforces (sizes, NUL bytes): the same rule, checked before proposing.
    spec.validate()?;
    Ok(spec)
}

pub(super) fn job_state(s: Option<&str>) -> Result<Option<JobState>, ServiceError> {
    match s.map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => JobState::parse(t).map(Some).ok_or_else(|| {
            let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
            invalid("state", format!("{t:?} is not one of {}", names.join(", ")))
        }),
    }
}

/// `(since, until)` of a usage query, defaulting to the 24 hours before now.
pub(crate) fn usage_range(q: &UsageQuery, now: u64) -> Result<(u64, u64), ServiceError> {
    let parse = |field: &'static str, v: &Option<String>| match v.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => parse_instant_ms(t).map(Some).map_err(unit(field)),
    };
    let until = parse("until", &q.until)?.unwrap_or(now);
    let since = parse("since", &q.since)?.unwrap_or(until.saturating_sub(DEFAULT_USAGE_WINDOW_MS));
    if since > until {
        return Err(invalid("since", "must not be after until"));
    }
    Ok((since, until))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: serde_json::Value) -> SubmitJobRequest {
        crate::api::extract::parse_json(v.to_string().as_bytes()).expect("valid shape")
    }

    fn field_of(v: serde_json::Value) -> String {
        let e = job_spec(body(v)).expect_err("invalid");
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        e.message.split(':').next().unwrap_or_default().to_owned()
    }

    /// The bounds the OpenAPI schema states (written as literals, which is all `#[schema(minimum, maximum)]`
    /// takes) are exactly the ones a submission is held to: each bound is accepted, one step past it refused.
    #[test]
    fn the_openapi_bounds_of_a_submission_are_the_ones_enforced() {
        let schema = serde_json::to_value(<SubmitJobRequest as utoipa::PartialSchema>::schema())
            .expect("schema");
        let fields: [&[&str]; 6] = [
            &["replicas"],
            &["priority"],
            &["timeout_secs"],
            &["cancel_grace_secs"],
            &["resources", "gpus"],
            &["retry", "max_attempts"],
        ];
        for path in fields {
            let at = path
                .iter()
                .map(|p| format!("/properties/{p}"))
                .collect::<String>();
            for (key, step) in [("minimum", -1), ("maximum", 1)] {
                let bound = schema
                    .pointer(&format!("{at}/{key}"))
                    .and_then(serde_json::Value::as_i64)
                    .unwrap_or_else(|| panic!("{} has no {key}", path.join(".")));
                for (value, accepted) in [(bound, true), (bound + step, false)] {
                    let mut req = serde_json::json!({ "command": "x" });
                    let mut slot = &mut req;
                    for p in &path[..path.len() - 1] {
                        slot = &mut slot[*p];
                    }
                    slot[path[path.len() - 1]] = serde_json::json!(value);
                    let ok = crate::api::extract::parse_json::<SubmitJobRequest>(
                        req.to_string().as_bytes(),
                    )
                    .is_ok_and(|r| job_spec(r).is_ok());
                    assert_eq!(ok, accepted, "{} = {value}", path.join("."));
                }
            }
        }
        // The policy update's ceiling, checked by `SetPolicyRequest::update`.
        let policy = serde_json::to_value(
            <crate::api::tenancy::SetPolicyRequest as utoipa::PartialSchema>::schema(),
        )
        .expect("schema");
        assert_eq!(
            policy.pointer("/properties/preemption_ceiling/maximum"),
            Some(&serde_json::json!(crate::state::MAX_PREEMPTION_CEILING))
        );
    }

    #[test]
    fn secrets_reach_the_environment_only_when_asked() {
        let files = job_spec(body(serde_json::json!({
            "command": "true", "secrets": {"TOKEN": "api-token"}
        })))
        .expect("valid");
        assert!(!files.secrets_env, "files only by default");
        let env = job_spec(body(serde_json::json!({
            "command": "true", "secrets": {"TOKEN": "api-token"}, "secrets_env": true
        })))
        .expect("valid");
        assert!(env.secrets_env);
        assert_eq!(
            field_of(serde_json::json!({"command": "true", "secrets_env": true})),
            "secrets_env"
        );
        // Older specs (no field) read as files only, and a spec without it serializes as before.
        let old: JobSpec = serde_json::from_str(r#"{"command":"true"}"#).expect("old spec");
        assert!(!old.secrets_env);
        assert!(!serde_json::to_string(&old)
            .expect("serializes")
            .contains("secrets_env"));
    }

    #[test]
    fn a_full_submission_becomes_its_spec() {
        let spec = job_spec(body(serde_json::json!({
            "name": "train",
            "command": "python3",
            "args": ["train.py", "--epochs", "3"],
            "env": {"SEED": "1"},
            "working_dir": "/data",
            "resources": {"cpu": 0.5, "memory": "512Mi", "gpus": 2, "gpu_model": "H200",
                          "gpu_min_memory_mib": 40000},
            "constraints": {"region": "eu", "cluster": "eu1", "labels": {"zone": "a"}},
            "data_locality": {"region": "eu"},
            "priority": 10,
            "preemption": true,
            "strategy": "spread",
            "retry": {"max_attempts": 5, "on_failure": true},
            "timeout_secs": 300,
            "cancel_grace_secs": 2,
        })))
        .expect("valid");
        assert_eq!(spec.command, "python3");
        assert_eq!(spec.args, ["train.py", "--epochs", "3"]);
        assert_eq!(spec.resources.cpu_millis, 500);
        assert_eq!(spec.resources.memory_bytes, 512 << 20);
        assert_eq!(spec.resources.gpus, 2);
        assert_eq!(spec.resources.gpu_model.as_deref(), Some("H200"));
        assert_eq!(spec.constraints.region.as_deref(), Some("eu"));
        assert_eq!(
            spec.constraints.labels.get("zone").map(String::as_str),
            Some("a")
        );
        assert_eq!(spec.priority, 10);
        assert_eq!(spec.strategy, Strategy::Spread);
        assert_eq!(spec.retry.max_attempts, 5);
        assert!(spec.retry.on_failure);
        assert_eq!(spec.timeout_secs, Some(300));
        assert_eq!(spec.cancel_grace_secs, 2);

        let minimal = job_spec(body(serde_json::json!({"command": "true"}))).expect("valid");
        assert_eq!(minimal.resources, ResourceRequest::default());
        assert_eq!(minimal.retry.max_attempts, 3);
        assert!(minimal.preemptible);
        assert_eq!(minimal.cancel_grace_secs, 10);
        let cores = job_spec(body(
            serde_json::json!({"command": "x", "resources": {"cpu": "250m", "memory": 1024}}),
        ))
        .expect("valid");
        assert_eq!(
            (cores.resources.cpu_millis, cores.resources.memory_bytes),
            (250, 1024)
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        use serde_json::json;
        let cases = [
            (json!({}), "command"),
            (json!({"command": "  "}), "command"),
            (json!({"command": "a\u{0}b"}), "command"),
            (
                json!({"command": "x", "resources": {"cpu": 0}}),
                "resources.cpu",
            ),
            (
                json!({"command": "x", "resources": {"cpu": -1}}),
                "resources.cpu",
            ),
            (
                json!({"command": "x", "resources": {"cpu": "lots"}}),
                "resources.cpu",
            ),
            (
                json!({"command": "x", "resources": {"cpu": 1, "cpu_millis": 5}}),
                "resources.cpu",
            ),
            (
                json!({"command": "x", "resources": {"memory": "12X"}}),
                "resources.memory",
            ),
            (
                json!({"command": "x", "resources": {"memory": 1.5}}),
                "resources.memory",
            ),
            (
                json!({"command": "x", "resources": {"gpus": 65}}),
                "resources.gpus",
            ),
            (
                json!({"command": "x", "resources": {"gpu_model": "H200"}}),
                "resources.gpu_model",
            ),
            (json!({"command": "x", "env": {"1X": "v"}}), "env"),
            (json!({"command": "x", "env": {"A=B": "v"}}), "env"),
            (
                json!({"command": "x", "env": {"CUDA_VISIBLE_DEVICES": "0"}}),
                "env",
            ),
            (
                json!({"command": "x", "working_dir": "rel/dir"}),
                "working_dir",
            ),
            (json!({"command": "x", "timeout_secs": 0}), "timeout_secs"),
            (
                json!({"command": "x", "retry": {"max_attempts": 0}}),
                "retry.max_attempts",
            ),
            (
                json!({"command": "x", "retry": {"max_attempts": 21}}),
                "retry.max_attempts",
            ),
            (json!({"command": "x", "priority": 1001}), "priority"),
            (json!({"command": "x", "strategy": "random"}), "strategy"),
            (
                json!({"command": "x", "constraints": {"region": "e u"}}),
                "constraints.region",
            ),
            (
                json!({"command": "x", "constraints": {"labels": {"": "v"}}}),
                "constraints.labels",
            ),
            (
                json!({"command": "x", "cancel_grace_secs": 7200}),
                "cancel_grace_secs",
            ),
            (json!({"command": "x", "name": "a\nb"}), "name"),
            (json!({"command": "x", "replicas": 0}), "replicas"),
            (json!({"command": "x", "replicas": 65}), "replicas"),
        ];
        for (input, field) in cases {
            assert_eq!(field_of(input.clone()), field, "{input}");
        }
    }

    #[test]
    fn usage_ranges_default_to_a_day_and_must_be_ordered() {
        let now = 1_700_000_000_000;
        let q = |since: Option<&str>, until: Option<&str>| UsageQuery {
            since: since.map(str::to_owned),
            until: until.map(str::to_owned),
        };
        assert_eq!(
            usage_range(&q(None, None), now),
            Ok((now - 86_400_000, now))
        );
        assert_eq!(
            usage_range(&q(Some("2023-11-14T00:00:00Z"), Some("1700000000000")), now),
            Ok((1_699_920_000_000, now))
        );
        let e = usage_range(&q(Some("tomorrow"), None), now).expect_err("bad");
        assert!(e.message.starts_with("since: "), "{}", e.message);
        let e = usage_range(&q(Some("20"), Some("10")), now).expect_err("reversed");
        assert!(e.message.starts_with("since: "), "{}", e.message);
    }

    #[test]
    fn states_parse_or_name_the_field() {
        assert_eq!(job_state(Some("Pending")), Ok(Some(JobState::Pending)));
        assert_eq!(job_state(Some("")), Ok(None));
        assert!(job_state(Some("done")).is_err_and(|e| e.message.starts_with("state: ")));
    }
}
