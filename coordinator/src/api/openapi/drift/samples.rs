//! The drift test's samples: one struct literal per request and reply body the route table names (a field
//! added to a type does not compile until its sample names it), with the values the checker needs to see.

use std::collections::BTreeMap;

use serde_json::json;
use utoipa::ToSchema;

use super::super::{document, OpenApiDocument};
use super::{page, reply, request, Sample};
use crate::api::audit::verify::AuditVerification;
use crate::api::audit::AuditList;
use crate::api::cluster::{AddMemberRequest, ClusterOverview, FleetSite, Health};
use crate::api::error::{ErrorKind, ServiceError};
use crate::api::fleet::{
    AllowIdentityRequest, ClusterPolicyRequest, ClusterPolicyView, DenyIdentityRequest, NodeView,
};
use crate::api::jobs::exec::{
    ExecJobRequest, ExecJobView, JobDirEntryView, JobDirView, JobFileKind,
};
use crate::api::jobs::{
    AttemptView, ConstraintsBody, JobLogsView, JobPlanView, JobView, LocalityBody, PlannedReplica,
    ResourcesBody, RetryBody, SubmitJobRequest,
};
use crate::api::secrets::{PutSecretRequest, RewrapResult, SecretResource};
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

fn s(text: &str) -> String {
    text.to_owned()
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([(s("zone"), s("a"))])
}

pub(super) fn project() -> ProjectView {
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

pub(super) fn principal() -> Principal {
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
pub(super) fn samples() -> Vec<Sample> {
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
        reply(JobDirView {
            path: s("out"),
            entries: [
                ("model.bin", JobFileKind::File),
                ("logs", JobFileKind::Dir),
                ("latest", JobFileKind::Link),
                ("pipe", JobFileKind::Other),
            ]
            .into_iter()
            .map(|(name, kind)| JobDirEntryView {
                name: s(name),
                kind,
                size: 4096,
                mode: 0o644,
            })
            .collect(),
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
