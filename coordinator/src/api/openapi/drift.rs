//! The drift test: a sample of every request and reply type the route table names, serialized as the API
//! sends or reads it, must have exactly the properties its generated schema lists, recursively. A property
//! the schema does not know, a required one that is missing, a value of the wrong type or outside an enum
//! or range, a reply property that is always present but not listed as required, a listed property no
//! sample ever carries, or a schema no sample reaches, fails it.
//!
//! The samples are struct literals, so a field added to a type does not compile until its sample names it,
//! and then this test checks that the schema describes it (which the derive does by itself; the test is
//! what proves it, and what catches a hand-written part or an annotation that went stale).

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::{document, OpenApiDocument};
use crate::api::audit::verify::AuditVerification;
use crate::api::audit::AuditList;
use crate::api::cluster::{AddMemberRequest, ClusterOverview, FleetSite, Health};
use crate::api::error::{ErrorKind, ServiceError};
use crate::api::fleet::{
    AllowIdentityRequest, ClusterPolicyRequest, ClusterPolicyView, DenyIdentityRequest, NodeView,
};
use crate::api::jobs::exec::{ExecJobRequest, ExecJobView};
use crate::api::jobs::{
    AttemptView, ConstraintsBody, JobLogsView, JobPlanView, JobView, LocalityBody, PlannedReplica,
    ResourcesBody, RetryBody, SubmitJobRequest,
};
use crate::api::routes::rest_routes;
use crate::api::secrets::{PutSecretRequest, RewrapResult, SecretResource};
use crate::api::service::ListPage;
use crate::api::tenancy::{
    CreateBindingRequest, CreateKeyRequest, CreateProjectRequest, CreateServiceAccountRequest,
    CreatedKey, RoleBindingView, SetPolicyRequest, WhoAmI,
};
use crate::audit_archive::MissingRange;
use crate::authz::Role;
use crate::node::{ClusterStatus, MemberStatus};
use crate::scheduler::{Constraints, GpuDevice, Locality, ResourceRequest, Resources, Strategy};
use crate::state::{
    Actor, ApiKeyView, ApprovedGpu, ApprovedResources, AttemptOutcome, AuditOutcome, AuditRecord,
    DeniedIdentity, DenyKind, JobState, JobUsage, NetworkPolicy, NodeAdmission, NodeHealthState,
    Principal, PrincipalKind, ProjectPolicy, ProjectView, RetryPolicy, SealedValue, Secret,
    SecretVersion, UsageFigures, UsageReport,
};

const SCHEMAS: &str = "#/components/schemas/";

/// A body as JSON, and the component schema it must match.
struct Sample {
    schema: String,
    json: Value,
    /// A reply (the server writes it) rather than a request (the server reads it).
    reply: bool,
}

/// A reply body as the handler serializes it, which the type must read back into the same JSON: clients
/// (the CLI) decode replies into these types (`api::dto`), so a reply they would misread fails here.
fn reply<T: ToSchema + Serialize + DeserializeOwned>(value: T) -> Sample {
    let json = serde_json::to_value(&value).expect("a reply serializes");
    match serde_json::from_value::<T>(json.clone()) {
        Ok(back) => assert_eq!(
            serde_json::to_value(&back).expect("a reply serializes"),
            json,
            "the {} sample changes when a client reads it back",
            T::name()
        ),
        Err(e) => panic!("a client cannot read the {} sample: {e}: {json}", T::name()),
    }
    Sample {
        schema: T::name().into_owned(),
        json,
        reply: true,
    }
}

/// A request body: the sample serialized, which the type must read back (so the JSON is one the API
/// accepts, not merely one the type can write).
fn request<T: ToSchema + Serialize + DeserializeOwned>(value: T) -> Sample {
    let json = serde_json::to_value(&value).expect("a request serializes");
    if let Err(e) = serde_json::from_value::<T>(json.clone()) {
        panic!("the {} sample is not accepted: {e}: {json}", T::name());
    }
    Sample {
        schema: T::name().into_owned(),
        json,
        reply: false,
    }
}

fn page<T: ToSchema + Serialize + DeserializeOwned>(item: T) -> Sample {
    reply(ListPage {
        items: vec![item],
        next_page_token: "2".to_owned(),
    })
}

fn s(text: &str) -> String {
    text.to_owned()
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([(s("zone"), s("a"))])
}

fn project() -> ProjectView {
    ProjectView {
        id: s("p1"),
        name: s("ml-team"),
        description: s("The ML team"),
        created_at: 1_700_000_000_000,
        policy: ProjectPolicy {
            network: NetworkPolicy::None,
            preemption_ceiling: 10,
            ..ProjectPolicy::BUILTIN
        },
    }
}

fn principal() -> Principal {
    Principal {
        id: s("u1"),
        kind: PrincipalKind::ServiceAccount,
        name: s("ci"),
        project_id: Some(s("p1")),
        created_at: 1,
        disabled: false,
    }
}

fn key() -> ApiKeyView {
    ApiKeyView {
        id: s("k1"),
        prefix: s("mrd_k1_"),
        principal_id: s("u1"),
        project_id: s("p1"),
        name: s("ci"),
        last4: s("abcd"),
        created_at: 1,
        expires_at: Some(2),
        revoked_at: Some(3),
        roles: Some(vec![Role::Viewer, Role::ProjectAdmin]),
        project_scoped: true,
    }
}

fn binding() -> RoleBindingView {
    RoleBindingView {
        id: s("b1"),
        principal_id: s("u1"),
        role: Role::SecretUser,
        scope: s("project:p1"),
        project_id: Some(s("p1")),
        created_at: 1,
    }
}

/// Through the registry's own view (its version type is not exported).
fn secret() -> SecretResource {
    let stored = Secret {
        project_id: s("p1"),
        name: s("hf-token"),
        versions: vec![SecretVersion {
            version: 2,
            sealed: SealedValue {
                nonce_b64: s("bm9uY2U="),
                ciphertext_b64: s("Y2lwaGVy"),
            },
            created_at: 5,
        }],
        bindings: vec![s("principal:u1/job:train-*")],
        created_at: 1,
        updated_at: 5,
    };
    SecretResource::from(stored.view())
}

fn member() -> MemberStatus {
    MemberStatus {
        id: 2,
        name: s("coord-2"),
        raft_addr: s("10.0.0.2:7001"),
        admin_addr: s("10.0.0.2:7070"),
        voter: true,
    }
}

fn node() -> NodeView {
    NodeView {
        key: s("eu/eu1/a-1"),
        region: s("eu"),
        cluster: s("eu1"),
        node: s("a-1"),
        cpu_cores: 64,
        memory_bytes: 1 << 40,
        gpu_count: 1,
        gpus: vec![GpuDevice {
            uuid: s("GPU-1"),
            index: 0,
            model: s("NVIDIA H200"),
            memory_mib: 143_771,
            healthy: true,
        }],
        labels: labels(),
        idle_gpus: vec![s("GPU-1")],
        os: s("linux"),
        limit_mode: s("cgroup v2"),
        rpc_addr: s("10.0.1.1:7443"),
        agent_version: s("0.1.0"),
        lease_epoch: 3,
        health: NodeHealthState::Unreachable,
        draining: true,
        registered_at: 1,
        health_changed_at: 2,
        admission: NodeAdmission::Quarantined,
        admission_reason: s("reported 2 GPUs, approved 1"),
        approved: Some(ApprovedResources {
            cpu_cores: 64,
            memory_bytes: 1 << 40,
            gpu_count: 1,
            gpus: vec![ApprovedGpu {
                uuid: s("GPU-1"),
                model: s("NVIDIA H200"),
                memory_mib: 143_771,
            }],
            labels: labels(),
        }),
        denied: true,
    }
}

fn denied() -> DeniedIdentity {
    DeniedIdentity {
        id: s("serial:0a1b"),
        kind: DenyKind::Serial,
        value: s("0a1b"),
        reason: s("key leaked"),
        denied_at: 1,
        denied_by: s("admin"),
    }
}

fn job() -> JobView {
    JobView {
        id: s("j1"),
        project_id: s("p1"),
        name: s("train"),
        state: JobState::Running,
        command: s("python"),
        args: vec![s("train.py")],
        env: BTreeMap::from([(s("EPOCHS"), s("3"))]),
        working_dir: Some(s("/work")),
        resources: ResourceRequest {
            cpu_millis: 500,
            memory_bytes: 1 << 30,
            gpus: 1,
            gpu_model: Some(s("H200")),
            gpu_min_memory_mib: Some(80_000),
        },
        replicas: 2,
        constraints: Constraints {
            region: Some(s("eu")),
            cluster: Some(s("eu1")),
            labels: labels(),
        },
        data_locality: Some(Locality {
            region: s("eu"),
            cluster: Some(s("eu1")),
        }),
        priority: -5,
        preemption: true,
        preemptible: true,
        strategy: Strategy::Spread,
        retry: RetryPolicy {
            max_attempts: 3,
            on_failure: true,
        },
        timeout_secs: Some(3_600),
        cancel_grace_secs: 30,
        secrets: BTreeMap::from([(s("HF_TOKEN"), s("hf-token"))]),
        secrets_env: true,
        node: Some(s("eu/eu1/a-1")),
        region: Some(s("eu")),
        cluster: Some(s("eu1")),
        attempt_count: 1,
        attempts: vec![AttemptView {
            attempt: 1,
            replica: 1,
            node: s("eu/eu1/a-1"),
            region: s("eu"),
            cluster: s("eu1"),
            gpu_uuids: vec![s("GPU-1")],
            resources: Resources {
                cpu_millis: 500,
                memory_bytes: 1 << 30,
                gpus: 1,
            },
            scheduled_at: 1,
            started_at: Some(2),
            ended_at: Some(3),
            outcome: Some(AttemptOutcome::Preempted),
            exit_code: Some(137),
            signal: Some(9),
            cpu_time_ms: Some(10),
            max_rss_bytes: Some(1 << 20),
            detail: s("preempted by j2"),
        }],
        pending_reason: Some(s("no node has 1 free GPU")),
        unsatisfiable: Some(s(
            "no node in the fleet could ever run it, even with nothing else running: 3 nodes have no GPUs",
        )),
        cancel_requested: true,
        exit_code: Some(137),
        created_by: s("ci"),
        principal_id: Some(s("u1")),
        created_at: 1,
        updated_at: 3,
        finished_at: Some(3),
    }
}

fn figures() -> UsageFigures {
    UsageFigures {
        cpu_core_seconds: 1.5,
        memory_gib_seconds: 2.0,
        gpu_seconds: 0.5,
        cpu_time_seconds: 1.0,
    }
}

fn submission() -> SubmitJobRequest {
    SubmitJobRequest {
        name: Some(s("train")),
        command: Some(s("python")),
        args: vec![s("train.py")],
        env: BTreeMap::from([(s("EPOCHS"), s("3"))]),
        working_dir: Some(s("/work")),
        resources: ResourcesBody {
            cpu: Some(json!("500m")),
            cpu_millis: Some(500),
            memory: Some(json!(1_073_741_824_u64)),
            memory_bytes: Some(1 << 30),
            gpus: Some(1),
            gpu_model: Some(s("H200")),
            gpu_min_memory_mib: Some(80_000),
        },
        replicas: Some(2),
        constraints: ConstraintsBody {
            region: Some(s("eu")),
            cluster: Some(s("eu1")),
            labels: labels(),
        },
        data_locality: Some(LocalityBody {
            region: s("eu"),
            cluster: Some(s("eu1")),
        }),
        priority: Some(-5),
        preemption: true,
        preemptible: Some(false),
        strategy: Some(s("spread")),
        retry: RetryBody {
            max_attempts: Some(5),
            on_failure: true,
        },
        timeout_secs: Some(3_600),
        cancel_grace_secs: Some(30),
        secrets: BTreeMap::from([(s("HF_TOKEN"), s("hf-token"))]),
        secrets_env: true,
    }
}

/// A sample of every body the API reads or writes.
fn samples() -> Vec<Sample> {
    vec![
        reply(Health {
            status: "ok".into(),
        }),
        Sample {
            schema: OpenApiDocument::name().into_owned(),
            json: document().clone(),
            reply: true,
        },
        Sample {
            schema: s("Error"),
            json: ServiceError::new(ErrorKind::NotFound, "no such job").body(),
            reply: true,
        },
        reply(WhoAmI {
            principal: principal(),
            key: key(),
            project: project(),
            bindings: vec![binding()],
        }),
        reply(project()),
        page(project()),
        reply(principal()),
        page(principal()),
        reply(CreatedKey {
            id: s("k1"),
            token: s("mrd_k1_secret"),
            key: key(),
            principal: principal(),
            binding: Some(binding()),
        }),
        reply(key()),
        page(key()),
        reply(binding()),
        page(binding()),
        reply(AuditList {
            items: vec![AuditRecord {
                seq: 7,
                at_ms: 1,
                actor: Actor {
                    principal_id: Some(s("u1")),
                    name: s("ci"),
                    key_id: Some(s("k1")),
                },
                action: s("key.revoke"),
                project: Some(s("p1")),
                target: s("k1"),
                outcome: AuditOutcome::Denied,
                detail: s(""),
                prev_hash: s("00"),
                hash: s("ab"),
            }],
            next_page_token: s("7"),
            next_after_seq: Some(7),
            archived_through_seq: Some(3),
        }),
        reply(AuditVerification {
            ok: false,
            records: 7,
            archived_records: 3,
            live_records: 4,
            missing: vec![MissingRange {
                from_seq: 1,
                to_seq: 2,
            }],
            broken_at_seq: Some(4),
            broken_segment: Some(s("1-3.jsonl")),
            error: Some(s("hash mismatch")),
        }),
        reply(secret()),
        page(secret()),
        reply(RewrapResult {
            projects: 2,
            master_key_id: s("mk-2"),
            new_data_keys: true,
            secret_versions: 5,
        }),
        reply(ClusterOverview {
            status: ClusterStatus {
                node_id: 1,
                name: s("coord-1"),
                state: s("Leader"),
                leader: Some(1),
                term: 4,
                applied_index: 100,
                committed_index: Some(100),
                members: vec![member()],
                apply_version: 4,
                apply_version_known: 5,
            },
            sites: vec![FleetSite {
                region: s("eu"),
                cluster: s("eu1"),
                nodes: 3,
                ready: 1,
                unreachable: 1,
                lost: 1,
                draining: 1,
                cpu_cores: 192,
                memory_bytes: 3 << 40,
                gpus: 1,
                gpu_models: BTreeMap::from([(s("NVIDIA H200"), 1)]),
                idle_gpus: 1,
                active_jobs: 2,
            }],
        }),
        reply(member()),
        page(member()),
        reply(node()),
        page(node()),
        reply(ClusterPolicyView {
            region: s("eu"),
            cluster: s("eu1"),
            auto_approve: true,
        }),
        reply(denied()),
        page(denied()),
        reply(job()),
        page(job()),
        reply(JobPlanView {
            placeable: true,
            replicas: vec![PlannedReplica {
                replica: 0,
                node: s("eu/eu1/a1"),
                region: s("eu"),
                cluster: s("eu1"),
                gpu_uuids: vec![s("GPU-1")],
                resources: Resources {
                    cpu_millis: 1000,
                    memory_bytes: 1 << 30,
                    gpus: 1,
                },
            }],
            preempts: 1,
            pending_reason: Some(s("no node has 1 GPU free")),
            unsatisfiable: Some(s("no node in the fleet could ever run it")),
            queue_ahead: 2,
        }),
        reply(JobLogsView {
            attempt: 1,
            replica: 0,
            node: s("eu/eu1/a-1"),
            stream: crate::api::jobs::LogStream::Stderr,
            start_offset: 0,
            next_offset: 5,
            data: s("hello"),
            job_state: JobState::Succeeded,
            done: true,
            cursor: crate::api::jobs::LogCursor::Bytes,
            records: vec![],
        }),
        reply(JobLogsView {
            attempt: 1,
            replica: 0,
            node: s("eu/eu1/a-1"),
            stream: crate::api::jobs::LogStream::All,
            start_offset: 0,
            next_offset: 48,
            data: s("out\nerr\n"),
            job_state: JobState::Running,
            done: false,
            cursor: crate::api::jobs::LogCursor::Records,
            records: vec![
                crate::api::jobs::JobLogRecordView {
                    stream: crate::api::jobs::LogStream::Stdout,
                    at_ms: 1_790_000_000_000,
                    data: s("out\n"),
                },
                crate::api::jobs::JobLogRecordView {
                    stream: crate::api::jobs::LogStream::Stderr,
                    at_ms: 1_790_000_000_001,
                    data: s("err\n"),
                },
            ],
        }),
        reply(UsageReport {
            project_id: s("p1"),
            since: 1,
            until: 2,
            cpu_core_seconds: 3.0,
            memory_gib_seconds: 4.0,
            gpu_seconds: 1.0,
            cpu_time_seconds: 2.0,
            archived: figures(),
            jobs: vec![JobUsage {
                job_id: s("j1"),
                name: s("train"),
                cpu_core_seconds: 1.5,
                memory_gib_seconds: 2.0,
                gpu_seconds: 0.5,
                cpu_time_seconds: 1.0,
            }],
        }),
        request(CreateProjectRequest {
            name: s("ml-team"),
            description: Some(s("The ML team")),
        }),
        request(SetPolicyRequest {
            max_pending_jobs: Some(10),
            max_running_cpu_millis: Some(8_000),
            max_running_memory_bytes: Some(1 << 34),
            max_running_gpus: Some(2),
            max_spec_bytes: Some(1 << 20),
            network: Some(s("egress")),
            preemption_ceiling: Some(100),
        }),
        request(CreateServiceAccountRequest { name: s("ci") }),
        request(CreateKeyRequest {
            name: s("ci"),
            role: Some(s("editor")),
            expires_in_seconds: Some(3_600),
            no_expiry: false,
            principal_id: Some(s("u1")),
            roles: Some(vec![s("viewer"), s("deployer")]),
            project_scoped: true,
        }),
        request(CreateBindingRequest {
            principal_id: s("u1"),
            role: s("platform-admin"),
            platform: true,
        }),
        request(PutSecretRequest {
            name: s("hf-token"),
            value: s("hf_xyz"),
            bindings: Some(vec![s("principal:u1")]),
        }),
        request(AddMemberRequest {
            id: 3,
            name: s("coord-3"),
            raft_addr: s("10.0.0.3:7001"),
            admin_addr: s("10.0.0.3:7070"),
            voter: false,
        }),
        request(ClusterPolicyRequest { auto_approve: true }),
        request(DenyIdentityRequest {
            identity: Some(s("spiffe://meridian/agent/eu/eu1/a-1")),
            serial: Some(s("0a:1b")),
            node: Some(s("eu/eu1/a-1")),
            reason: Some(s("key leaked")),
        }),
        request(AllowIdentityRequest {
            identity: Some(s("spiffe://meridian/agent/eu/eu1/a-1")),
            serial: Some(s("0a1b")),
            node: Some(s("eu/eu1/a-1")),
        }),
        request(submission()),
        // The other spellings of `cpu` and `memory`, and a submission that leaves everything else out.
        request(SubmitJobRequest {
            resources: ResourcesBody {
                cpu: Some(json!(0.5)),
                memory: Some(json!("512Mi")),
                ..ResourcesBody::default()
            },
            ..submission()
        }),
        request(SubmitJobRequest {
            command: Some(s("true")),
            ..SubmitJobRequest::default()
        }),
        request(ExecJobRequest {
            command: vec![s("cat"), s("out/result.txt")],
            replica: Some(1),
            stdin: Some(s("aGVsbG8=")),
            timeout_secs: Some(30),
        }),
        request(ExecJobRequest {
            command: vec![s("ls")],
            ..ExecJobRequest::default()
        }),
        reply(ExecJobView {
            exit_code: Some(0),
            signal: None,
            stdout: s("aGVsbG8="),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            timed_out: false,
            attempt: 1,
            replica: 0,
            node: s("eu/eu1/a-1"),
        }),
        reply(ExecJobView {
            exit_code: None,
            signal: Some(9),
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: true,
            stderr_truncated: true,
            timed_out: true,
            attempt: 2,
            replica: 1,
            node: s("eu/eu1/a-2"),
        }),
    ]
}

/// Checks JSON values against the document's schemas, and remembers which object schemas and which of
/// their properties the values reached.
#[derive(Clone)]
struct Checker<'d> {
    doc: &'d Value,
    /// Component schemas reached.
    reached: BTreeSet<String>,
    /// Object schemas (by location in the document) and the properties they list.
    listed: BTreeMap<String, BTreeSet<String>>,
    /// The properties of each object schema that some value carried, not null.
    carried: BTreeMap<String, BTreeSet<String>>,
}

fn types(schema: &Value) -> Vec<&str> {
    match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn has_type(value: &Value, t: &str) -> bool {
    match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}

impl<'d> Checker<'d> {
    fn new(doc: &'d Value) -> Self {
        Checker {
            doc,
            reached: BTreeSet::new(),
            listed: BTreeMap::new(),
            carried: BTreeMap::new(),
        }
    }

    /// `schema` with its `$ref`s followed, and where it is.
    fn resolve(
        &mut self,
        mut schema: &'d Value,
        mut at: String,
    ) -> Result<(&'d Value, String), String> {
        while let Some(target) = schema.get("$ref").and_then(Value::as_str) {
            let name = target
                .strip_prefix(SCHEMAS)
                .ok_or_else(|| format!("{at}: $ref {target} is not a component schema"))?;
            schema = self.doc["components"]["schemas"]
                .get(name)
                .ok_or_else(|| format!("{at}: $ref {target} does not resolve"))?;
            self.reached.insert(name.to_owned());
            at = target.to_owned();
        }
        Ok((schema, at))
    }

    /// Whether `schema` admits null.
    fn nullable(&mut self, schema: &'d Value, at: &str) -> bool {
        let Ok((schema, _)) = self.resolve(schema, at.to_owned()) else {
            return false;
        };
        types(schema).contains(&"null")
            || ["oneOf", "anyOf"].iter().any(|k| {
                schema[*k]
                    .as_array()
                    .is_some_and(|alts| alts.iter().any(|a| types(a).contains(&"null")))
            })
    }

    /// The properties, required names and extra-property schema of an object schema, through `$ref` and
    /// `allOf` (serde's `flatten`).
    fn object(
        &mut self,
        schema: &'d Value,
        at: &str,
        props: &mut BTreeMap<String, (&'d Value, String)>,
        required: &mut BTreeSet<String>,
        extra: &mut Option<&'d Value>,
    ) -> Result<(), String> {
        let (schema, at) = self.resolve(schema, at.to_owned())?;
        if let Some(parts) = schema["allOf"].as_array() {
            for (i, part) in parts.iter().enumerate() {
                self.object(part, &format!("{at}/allOf/{i}"), props, required, extra)?;
            }
        }
        if let Some(map) = schema["properties"].as_object() {
            for (name, prop) in map {
                props.insert(name.clone(), (prop, format!("{at}/properties/{name}")));
            }
        }
        for name in schema["required"].as_array().into_iter().flatten() {
            required.insert(name.as_str().unwrap_or_default().to_owned());
        }
        if let Some(more) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            *extra = Some(more);
        }
        Ok(())
    }

    /// Every way `value` (at `path` in the sample) fails `schema` (at `at` in the document).
    fn check(
        &mut self,
        value: &Value,
        schema: &'d Value,
        at: &str,
        path: &str,
        reply: bool,
    ) -> Vec<String> {
        let (schema, at) = match self.resolve(schema, at.to_owned()) {
            Ok(found) => found,
            Err(e) => return vec![e],
        };
        for key in ["oneOf", "anyOf"] {
            if let Some(alternatives) = schema[key].as_array() {
                let mut matched = Vec::new();
                for (i, alternative) in alternatives.iter().enumerate() {
                    let mut trial = self.clone();
                    if trial
                        .check(value, alternative, &format!("{at}/{key}/{i}"), path, reply)
                        .is_empty()
                    {
                        matched.push(trial);
                    }
                }
                let fits = if key == "oneOf" {
                    matched.len() == 1
                } else {
                    !matched.is_empty()
                };
                return match matched.into_iter().next() {
                    Some(trial) if fits => {
                        *self = trial;
                        Vec::new()
                    }
                    _ => vec![format!(
                        "{path}: {value} fits not exactly one of {at}/{key}"
                    )],
                };
            }
        }
        let mut errors = Vec::new();
        let allowed = types(schema);
        if !allowed.is_empty() && !allowed.iter().any(|t| has_type(value, t)) {
            errors.push(format!("{path}: {value} is not of type {allowed:?} ({at})"));
            return errors;
        }
        if let Some(values) = schema["enum"].as_array() {
            if !values.contains(value) {
                errors.push(format!("{path}: {value} is not one of {values:?} ({at})"));
            }
        }
        if let Some(n) = value.as_f64() {
            if schema["minimum"].as_f64().is_some_and(|min| n < min)
                || schema["maximum"].as_f64().is_some_and(|max| n > max)
            {
                errors.push(format!("{path}: {n} is out of the range of {at}"));
            }
        }
        if let (Some(items), Some(schema)) = (value.as_array(), schema.get("items")) {
            for (i, item) in items.iter().enumerate() {
                errors.extend(self.check(
                    item,
                    schema,
                    &format!("{at}/items"),
                    &format!("{path}[{i}]"),
                    reply,
                ));
            }
        }
        if let Some(fields) = value.as_object() {
            let mut props = BTreeMap::new();
            let mut required = BTreeSet::new();
            let mut extra = None;
            if let Err(e) = self.object(schema, &at, &mut props, &mut required, &mut extra) {
                errors.push(e);
                return errors;
            }
            if props.is_empty() && extra.is_none() {
                // A free-form object (the OpenAPI document itself): any properties.
                return errors;
            }
            if !props.is_empty() {
                self.listed
                    .entry(at.clone())
                    .or_default()
                    .extend(props.keys().cloned());
            }
            for name in &required {
                if !fields.contains_key(name) {
                    errors.push(format!(
                        "{path}: required property {name} is missing ({at})"
                    ));
                }
            }
            if reply {
                for (name, (prop, prop_at)) in &props {
                    if !required.contains(name) && !self.nullable(prop, prop_at) {
                        errors.push(format!(
                            "{path}: {name} is never null, so a reply always carries it, but {at} does not \
                             require it"
                        ));
                    }
                }
            }
            for (name, field) in fields {
                let field_path = format!("{path}.{name}");
                match (props.get(name), extra) {
                    (Some((prop, prop_at)), _) => {
                        if !field.is_null() {
                            self.carried
                                .entry(at.clone())
                                .or_default()
                                .insert(name.clone());
                        }
                        errors.extend(self.check(field, prop, prop_at, &field_path, reply));
                    }
                    (None, Some(more)) => {
                        errors.extend(self.check(
                            field,
                            more,
                            &format!("{at}/additionalProperties"),
                            &field_path,
                            reply,
                        ));
                    }
                    (None, None) => {
                        errors.push(format!("{field_path}: {at} does not know this property"))
                    }
                }
            }
        }
        errors
    }

    /// Listed properties no value carried, and component schemas no value reached.
    fn unexercised(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for (at, listed) in &self.listed {
            let carried = self.carried.get(at).cloned().unwrap_or_default();
            for name in listed.difference(&carried) {
                errors.push(format!(
                    "{at}: no sample carries {name} (give it a value in a sample)"
                ));
            }
        }
        for name in self.doc["components"]["schemas"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            if !self.reached.contains(name) {
                errors.push(format!("{SCHEMAS}{name}: no sample reaches this schema"));
            }
        }
        errors
    }

    /// Checks a sample against the component schema it names.
    fn sample(&mut self, sample: &Sample) -> Vec<String> {
        let Some(schema) = self.doc["components"]["schemas"].get(&sample.schema) else {
            return vec![format!("no component schema {}", sample.schema)];
        };
        self.reached.insert(sample.schema.clone());
        let at = format!("{SCHEMAS}{}", sample.schema);
        let path = format!("{} sample", sample.schema);
        self.check(&sample.json, schema, &at, &path, sample.reply)
    }
}

#[test]
fn every_body_sample_has_exactly_the_properties_of_its_schema() {
    let doc = document();
    let samples = samples();
    let mut checker = Checker::new(doc);
    let mut errors: Vec<String> = samples.iter().flat_map(|s| checker.sample(s)).collect();
    errors.extend(checker.unexercised());
    assert!(
        errors.is_empty(),
        "the OpenAPI schemas and the types disagree:\n{}",
        errors.join("\n")
    );
}

#[test]
fn every_route_body_has_a_sample() {
    let samples = samples();
    for route in rest_routes() {
        for (body, reply) in [(route.request, false), (route.reply.schema, true)] {
            let Some(body) = body else { continue };
            let name = body().name;
            assert!(
                samples.iter().any(|s| s.schema == name && s.reply == reply),
                "{} {}: no {} sample of {name} in drift::samples",
                route.method.openapi(),
                route.path,
                if reply { "reply" } else { "request" },
            );
        }
    }
}

#[test]
fn the_checker_refuses_what_the_schema_does_not_describe() {
    let doc = document();
    let project = reply(project());
    let check = |json: Value| {
        Checker::new(doc).sample(&Sample {
            schema: project.schema.clone(),
            json,
            reply: true,
        })
    };
    assert!(check(project.json.clone()).is_empty());

    // A field the type gained but the schema lacks.
    let mut extra = project.json.clone();
    extra["owner"] = json!("someone");
    assert!(check(extra)
        .iter()
        .any(|e| e.contains("does not know this property")));
    // A required field the type lost, a nested one too.
    let mut missing = project.json.clone();
    missing.as_object_mut().map(|m| m.remove("name"));
    assert!(check(missing)
        .iter()
        .any(|e| e.contains("required property name")));
    let mut nested = project.json.clone();
    nested["policy"]
        .as_object_mut()
        .map(|m| m.remove("network"));
    assert!(check(nested)
        .iter()
        .any(|e| e.contains("required property network")));
    // A wrong type and a value outside an enum.
    let mut wrong = project.json.clone();
    wrong["created_at"] = json!("yesterday");
    assert!(!check(wrong).is_empty());
    let mut outside = project.json;
    outside["policy"]["network"] = json!("internet");
    assert!(check(outside).iter().any(|e| e.contains("is not one of")));

    // A property no sample carries, and a schema no sample reaches.
    let mut checker = Checker::new(doc);
    assert!(checker.sample(&reply(principal())).is_empty());
    let unexercised = checker.unexercised();
    assert!(unexercised
        .iter()
        .any(|e| e.ends_with("Job: no sample reaches this schema")));
}
