//! Job specs from files: `meridian job run -f job.toml` and `meridian job plan -f job.yaml`.
//!
//! A spec file holds the admin API's submission body (`SubmitJobRequest`, the `SubmitJobRequest` schema of
//! `/v1/openapi.json`) in TOML, YAML or JSON, chosen by the file's extension (`-` reads stdin: JSON when it
//! starts with `{`, YAML otherwise). Unknown fields are refused and every error names the field's path, so a
//! typo does not silently become a default. Flags given beside `-f` override the file's values (lists and maps
//! — labels, environment, secrets — are merged, the flag winning on a repeated key), and a command after `--`
//! replaces the file's command and arguments.

use std::io::Read as _;
use std::path::Path;

use coordinator::api::dto::{LocalityBody, SubmitJobRequest};

use crate::cli::JobRunArgs;
use crate::client::ClientError;

/// The formats a spec file may be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Toml,
    Yaml,
    Json,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Toml => "TOML",
            Format::Yaml => "YAML",
            Format::Json => "JSON",
        }
    }
}

/// The format `path`'s extension names.
fn format_of(path: &Path) -> Result<Format, ClientError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("toml") => Ok(Format::Toml),
        Some("yaml" | "yml") => Ok(Format::Yaml),
        Some("json") => Ok(Format::Json),
        _ => Err(ClientError::Usage(format!(
            "-f {}: name the format by the extension: .toml, .yaml/.yml or .json",
            path.display()
        ))),
    }
}

/// Reads the spec at `path` (`-` for stdin).
pub fn load(path: &Path) -> Result<SubmitJobRequest, ClientError> {
    let usage = |e: std::io::Error| ClientError::Usage(format!("-f {}: {e}", path.display()));
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(usage)?;
        let format = if text.trim_start().starts_with('{') {
            Format::Json
        } else {
            Format::Yaml
        };
        return parse(&text, format, "stdin");
    }
    let format = format_of(path)?;
    let text = std::fs::read_to_string(path).map_err(usage)?;
    parse(&text, format, &path.display().to_string())
}

/// Parses `text` as a spec in `format`; `origin` names it in errors.
fn parse(text: &str, format: Format, origin: &str) -> Result<SubmitJobRequest, ClientError> {
    let invalid = |path: String, e: String| {
        let at = if path.is_empty() || path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        ClientError::Invalid(format!("{origin} ({}): {at}{e}", format.name()))
    };
    match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(&mut de)
                .map_err(|e| invalid(e.path().to_string(), e.inner().to_string()))
        }
        Format::Toml => {
            let de = toml::Deserializer::new(text);
            serde_path_to_error::deserialize(de)
                .map_err(|e| invalid(e.path().to_string(), e.inner().message().to_owned()))
        }
        Format::Yaml => {
            let de = serde_norway::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de)
                .map_err(|e| invalid(e.path().to_string(), e.inner().to_string()))
        }
    }
}

/// `base` with the values `flags` gives on the command line put over it.
pub fn merge(mut base: SubmitJobRequest, flags: SubmitJobRequest) -> SubmitJobRequest {
    fn over<T>(base: &mut Option<T>, flag: Option<T>) {
        if flag.is_some() {
            *base = flag;
        }
    }
    over(&mut base.name, flags.name);
    if flags.command.is_some() {
        base.command = flags.command;
        base.args = flags.args;
    }
    base.env.extend(flags.env);
    over(&mut base.working_dir, flags.working_dir);
    let (r, f) = (&mut base.resources, flags.resources);
    if f.cpu_millis.is_some() {
        r.cpu = None;
        r.cpu_millis = f.cpu_millis;
    }
    if f.memory_bytes.is_some() {
        r.memory = None;
        r.memory_bytes = f.memory_bytes;
    }
    over(&mut r.gpus, f.gpus);
    over(&mut r.gpu_model, f.gpu_model);
    over(&mut r.gpu_min_memory_mib, f.gpu_min_memory_mib);
    over(&mut base.replicas, flags.replicas);
    over(&mut base.constraints.region, flags.constraints.region);
    over(&mut base.constraints.cluster, flags.constraints.cluster);
    base.constraints.labels.extend(flags.constraints.labels);
    over::<LocalityBody>(&mut base.data_locality, flags.data_locality);
    over(&mut base.priority, flags.priority);
    base.preemption |= flags.preemption;
    over(&mut base.preemptible, flags.preemptible);
    over(&mut base.strategy, flags.strategy);
    over(&mut base.retry.max_attempts, flags.retry.max_attempts);
    base.retry.on_failure |= flags.retry.on_failure;
    over(&mut base.timeout_secs, flags.timeout_secs);
    over(&mut base.cancel_grace_secs, flags.cancel_grace_secs);
    base.secrets.extend(flags.secrets);
    base.secrets_env |= flags.secrets_env;
    base
}

/// The submission `job run` / `job plan` sends: the file's spec (when `-f` names one) under the flags.
pub fn submission(args: &JobRunArgs) -> Result<SubmitJobRequest, ClientError> {
    let flags = super::jobs::flag_submission(args)?;
    match &args.file {
        Some(path) => {
            let spec = merge(load(path)?, flags);
            if spec.command.as_deref().is_none_or(str::is_empty) {
                return Err(ClientError::Usage(format!(
                    "{} names no command: add `command = \"…\"` or give one after --",
                    path.display()
                )));
            }
            Ok(spec)
        }
        None if flags.command.is_none() => Err(ClientError::Usage(
            "give the command to run after -- (or a spec file with -f)".into(),
        )),
        None => Ok(flags),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
name = "train"
command = "python3"
args = ["train.py", "--epochs", "10"]
env = { EPOCHS = "10" }
resources = { cpu = 4, memory = "16Gi", gpus = 2, gpu_model = "H200" }
constraints = { region = "eu", labels = { instance = "spot" } }
retry = { max_attempts = 3, on_failure = true }
timeout_secs = 7200
"#;

    const YAML: &str = "
name: train
command: python3
args: [train.py, --epochs, '10']
env: {EPOCHS: '10'}
resources: {cpu: 4, memory: 16Gi, gpus: 2, gpu_model: H200}
constraints: {region: eu, labels: {instance: spot}}
retry: {max_attempts: 3, on_failure: true}
timeout_secs: 7200
";

    #[test]
    fn the_three_formats_read_the_same_spec() {
        let toml = parse(TOML, Format::Toml, "job.toml").expect("toml");
        let yaml = parse(YAML, Format::Yaml, "job.yaml").expect("yaml");
        let json_text = serde_json::to_string(&toml).expect("json");
        let json = parse(&json_text, Format::Json, "job.json").expect("json");
        for spec in [&toml, &yaml, &json] {
            assert_eq!(spec.command.as_deref(), Some("python3"));
            assert_eq!(spec.args, ["train.py", "--epochs", "10"]);
            assert_eq!(spec.resources.gpus, Some(2));
            assert_eq!(spec.resources.memory, Some(serde_json::json!("16Gi")));
            assert_eq!(spec.constraints.labels["instance"], "spot");
            assert_eq!(spec.retry.max_attempts, Some(3));
            assert_eq!(spec.timeout_secs, Some(7200));
        }
    }

    #[test]
    fn errors_name_the_field_and_unknown_fields_are_refused() {
        let typo = parse(
            "command = \"x\"\n[resources]\ngpu = 1\n",
            Format::Toml,
            "job.toml",
        )
        .expect_err("unknown field");
        let text = typo.to_string();
        assert!(text.contains("job.toml (TOML): resources"), "{text}");
        assert!(text.contains("gpu"), "{text}");
        let wrong = parse(
            "command: x\nresources: {gpus: two}\n",
            Format::Yaml,
            "job.yaml",
        )
        .expect_err("wrong type");
        assert!(wrong.to_string().contains("resources.gpus"), "{wrong}");
        let json = parse(
            r#"{"command": "x", "priority": "high"}"#,
            Format::Json,
            "job.json",
        )
        .expect_err("wrong type");
        assert!(json.to_string().contains("priority"), "{json}");
        assert!(format_of(Path::new("job.txt")).is_err());
        assert_eq!(format_of(Path::new("JOB.YML")).ok(), Some(Format::Yaml));
    }

    #[test]
    fn flags_override_the_file_and_a_command_replaces_it() {
        let base = parse(TOML, Format::Toml, "job.toml").expect("toml");
        let mut flags = SubmitJobRequest::default();
        flags.resources.gpus = Some(1);
        flags.resources.memory_bytes = Some(1 << 30);
        flags.constraints.labels.insert("zone".into(), "a".into());
        flags.env.insert("EPOCHS".into(), "20".into());
        let merged = merge(base.clone(), flags);
        assert_eq!(merged.resources.gpus, Some(1));
        assert_eq!(
            merged.resources.memory, None,
            "the flag's size replaces the file's"
        );
        assert_eq!(merged.resources.memory_bytes, Some(1 << 30));
        assert_eq!(merged.resources.gpu_model.as_deref(), Some("H200"));
        assert_eq!(merged.constraints.labels.len(), 2);
        assert_eq!(merged.env["EPOCHS"], "20");
        assert_eq!(
            merged.args, base.args,
            "no command on the line: the file's stays"
        );

        let command = SubmitJobRequest {
            command: Some("echo".into()),
            args: vec!["hi".into()],
            ..SubmitJobRequest::default()
        };
        let merged = merge(base, command);
        assert_eq!(
            (merged.command.as_deref(), merged.args.as_slice()),
            (Some("echo"), &["hi".to_owned()][..])
        );
    }
}
