//! Conversions between the admin API's views and `admin.proto`'s messages, one function per resource.
//!
//! Every converter destructures what it converts and builds its message without `..`: a field added on
//! either side fails to compile here until the gRPC face carries it, or binds it to `_` with the reason.

use protocol::pb;

use crate::node::{ClusterStatus, MemberStatus};
use crate::scheduler::{Constraints, Locality, ResourceRequest, Resources};
use crate::state::{
    Actor, ApiKeyView, AuditRecord, JobUsage, Principal, PrincipalKind, ProjectPolicy, ProjectView,
    RetryPolicy, SecretVersionView, SecretView, UsageFigures, UsageReport,
};

use super::non_empty;
use crate::api::cluster::{ClusterOverview, FleetSite};
use crate::api::jobs::{
    AttemptView, ConstraintsBody, JobView, LocalityBody, ResourcesBody, RetryBody, SubmitJobRequest,
};
use crate::api::secrets::SecretResource;
use crate::api::tenancy::RoleBindingView;

pub(super) fn project(v: ProjectView) -> pb::Project {
    let ProjectView {
        id,
        name,
        description,
        created_at,
        policy,
    } = v;
    let ProjectPolicy {
        max_pending_jobs,
        max_running_cpu_millis,
        max_running_memory_bytes,
        max_running_gpus,
        max_spec_bytes,
        network,
        preemption_ceiling,
    } = policy;
    pb::Project {
        id,
        name,
        description,
        created_at,
        policy: Some(pb::ProjectPolicy {
            max_pending_jobs,
            max_running_cpu_millis,
            max_running_memory_bytes,
            max_running_gpus,
            max_spec_bytes,
            network: network.as_str().to_owned(),
            preemption_ceiling,
        }),
    }
}

pub(super) fn principal(p: Principal) -> pb::Principal {
    let Principal {
        id,
        kind,
        name,
        project_id,
        created_at,
        disabled,
    } = p;
    let kind = match kind {
        PrincipalKind::User => "user",
        PrincipalKind::ServiceAccount => "service_account",
    };
    pb::Principal {
        id,
        kind: kind.to_owned(),
        name,
        // Empty for a platform principal.
        project_id: project_id.unwrap_or_default(),
        created_at,
        disabled,
    }
}

pub(super) fn api_key(k: ApiKeyView) -> pb::ApiKey {
    let ApiKeyView {
        id,
        prefix,
        principal_id,
        project_id,
        name,
        last4,
        created_at,
        expires_at,
        revoked_at,
        roles,
        project_scoped,
    } = k;
    pb::ApiKey {
        id,
        prefix,
        principal_id,
        project_id,
        name,
        last4,
        created_at,
        expires_at,
        revoked_at,
        roles: roles
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.to_string())
            .collect(),
        project_scoped,
    }
}

pub(super) fn binding(b: RoleBindingView) -> pb::RoleBinding {
    let RoleBindingView {
        id,
        principal_id,
        role,
        scope,
        project_id,
        created_at,
    } = b;
    pb::RoleBinding {
        id,
        principal_id,
        role: role.to_string(),
        scope,
        created_at,
        project_id: project_id.unwrap_or_default(),
    }
}

pub(super) fn audit_record(r: AuditRecord) -> pb::AuditRecord {
    let json = serde_json::to_string(&r).unwrap_or_default();
    let AuditRecord {
        seq,
        at_ms,
        actor,
        action,
        project,
        target,
        outcome,
        detail,
        prev_hash,
        hash,
    } = r;
    let outcome = match serde_json::to_value(outcome) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    };
    let Actor {
        principal_id,
        name: actor_name,
        // The acting key is in `json`; the message names the principal.
        key_id: _,
    } = actor;
    pb::AuditRecord {
        seq,
        at_ms,
        actor_principal_id: principal_id.unwrap_or_default(),
        actor_name,
        action,
        project: project.unwrap_or_default(),
        target,
        outcome,
        detail,
        prev_hash,
        hash,
        json,
    }
}

pub(super) fn secret(s: SecretResource) -> pb::Secret {
    let SecretResource {
        // REST's resource id is the secret's name, which the message carries as `name`.
        id: _,
        secret,
    } = s;
    let SecretView {
        project_id,
        name,
        latest_version,
        versions,
        bindings,
        created_at,
        updated_at,
    } = secret;
    pb::Secret {
        project_id,
        name,
        latest_version,
        versions: versions
            .into_iter()
            .map(|v| {
                let SecretVersionView {
                    version,
                    created_at,
                } = v;
                pb::SecretVersion {
                    version,
                    created_at,
                }
            })
            .collect(),
        bindings,
        created_at,
        updated_at,
    }
}

pub(super) fn member(m: MemberStatus) -> pb::ClusterMember {
    let MemberStatus {
        id,
        name,
        raft_addr,
        admin_addr,
        voter,
    } = m;
    pb::ClusterMember {
        id,
        name,
        raft_addr,
        admin_addr,
        voter,
    }
}

pub(super) fn fleet_site(f: FleetSite) -> pb::FleetSite {
    let FleetSite {
        region,
        cluster,
        nodes,
        ready,
        unreachable,
        lost,
        draining,
        cpu_cores,
        memory_bytes,
        gpus,
        gpu_models,
        idle_gpus,
        active_jobs,
    } = f;
    pb::FleetSite {
        region,
        cluster,
        nodes,
        ready,
        unreachable,
        lost,
        cpu_cores,
        memory_bytes,
        gpus,
        gpu_models: gpu_models.into_iter().collect(),
        idle_gpus,
        active_jobs,
        draining,
    }
}

pub(super) fn cluster_status(overview: ClusterOverview) -> pb::ClusterStatusResponse {
    let ClusterOverview { status, sites } = overview;
    let ClusterStatus {
        node_id,
        name,
        state,
        leader,
        term,
        applied_index,
        committed_index,
        members,
        apply_version,
        apply_version_known,
    } = status;
    pb::ClusterStatusResponse {
        sites: sites.into_iter().map(fleet_site).collect(),
        node_id,
        name,
        state,
        leader,
        term,
        applied_index,
        committed_index,
        members: members.into_iter().map(member).collect(),
        apply_version,
        apply_version_known,
    }
}

pub(super) fn attempt(a: AttemptView) -> pb::JobAttempt {
    let AttemptView {
        attempt,
        replica,
        node,
        region,
        cluster,
        gpu_uuids,
        resources,
        scheduled_at,
        started_at,
        ended_at,
        outcome,
        exit_code,
        signal,
        cpu_time_ms,
        max_rss_bytes,
        detail,
    } = a;
    let Resources {
        cpu_millis,
        memory_bytes,
        gpus,
    } = resources;
    pb::JobAttempt {
        attempt,
        replica,
        node,
        region,
        cluster,
        gpu_uuids,
        scheduled_at,
        started_at,
        ended_at,
        outcome: outcome.map_or("", |o| o.as_str()).to_owned(),
        exit_code,
        signal,
        detail,
        cpu_time_ms,
        max_rss_bytes,
        resources: Some(pb::ReservedResources {
            cpu_millis,
            memory_bytes,
            gpus,
        }),
    }
}

pub(super) fn job(j: JobView) -> pb::Job {
    let JobView {
        id,
        project_id,
        name,
        state,
        command,
        args,
        env,
        working_dir,
        resources,
        replicas,
        constraints,
        data_locality,
        priority,
        preemption,
        preemptible,
        strategy,
        retry,
        timeout_secs,
        cancel_grace_secs,
        secrets,
        secrets_env,
        node,
        region,
        cluster,
        attempt_count,
        attempts,
        pending_reason,
        cancel_requested,
        exit_code,
        created_by,
        principal_id,
        created_at,
        updated_at,
        finished_at,
    } = j;
    let strategy = match serde_json::to_value(strategy) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    };
    let (locality_region, locality_cluster) = match data_locality {
        Some(Locality { region, cluster }) => (region, cluster.unwrap_or_default()),
        None => (String::new(), String::new()),
    };
    let ResourceRequest {
        cpu_millis,
        memory_bytes,
        gpus,
        gpu_model,
        gpu_min_memory_mib,
    } = resources;
    let Constraints {
        region: constraint_region,
        cluster: constraint_cluster,
        labels,
    } = constraints;
    let RetryPolicy {
        max_attempts,
        on_failure,
    } = retry;
    pb::Job {
        id,
        project_id,
        name,
        state: state.as_str().to_owned(),
        command,
        args,
        env: env.into_iter().collect(),
        working_dir: working_dir.unwrap_or_default(),
        resources: Some(pb::JobResources {
            cpu_millis,
            memory_bytes,
            gpus,
            gpu_model: gpu_model.unwrap_or_default(),
            gpu_min_memory_mib,
        }),
        constraints: Some(pb::JobConstraints {
            region: constraint_region.unwrap_or_default(),
            cluster: constraint_cluster.unwrap_or_default(),
            labels: labels.into_iter().collect(),
        }),
        priority,
        retry: Some(pb::JobRetry {
            max_attempts,
            on_failure,
        }),
        timeout_secs,
        node: node.unwrap_or_default(),
        region: region.unwrap_or_default(),
        cluster: cluster.unwrap_or_default(),
        attempt_count,
        attempts: attempts.into_iter().map(attempt).collect(),
        pending_reason: pending_reason.unwrap_or_default(),
        cancel_requested,
        exit_code,
        created_by,
        created_at,
        updated_at,
        finished_at,
        preemption,
        preemptible,
        strategy,
        cancel_grace_secs,
        secrets: secrets.into_iter().collect(),
        data_locality_region: locality_region,
        data_locality_cluster: locality_cluster,
        replicas,
        principal_id: principal_id.unwrap_or_default(),
        secrets_env,
    }
}

/// A gRPC submission in the REST body's terms; proto3 zero values mean "not given".
pub(super) fn submission(r: pb::SubmitJobRequest) -> SubmitJobRequest {
    let pb::SubmitJobRequest {
        name,
        command,
        args,
        env,
        working_dir,
        resources,
        constraints,
        priority,
        retry,
        timeout_secs,
        preemption,
        preemptible,
        strategy,
        cancel_grace_secs,
        data_locality_region,
        data_locality_cluster,
        secrets,
        replicas,
        secrets_env,
    } = r;
    let pb::JobResources {
        cpu_millis,
        memory_bytes,
        gpus,
        gpu_model,
        gpu_min_memory_mib,
    } = resources.unwrap_or_default();
    let pb::JobConstraints {
        region,
        cluster,
        labels,
    } = constraints.unwrap_or_default();
    let pb::JobRetry {
        max_attempts,
        on_failure,
    } = retry.unwrap_or_default();
    SubmitJobRequest {
        name: non_empty(name),
        command: Some(command),
        args,
        env: env.into_iter().collect(),
        working_dir: non_empty(working_dir),
        resources: ResourcesBody {
            cpu: None,
            cpu_millis: (cpu_millis > 0).then_some(cpu_millis),
            memory: None,
            memory_bytes: (memory_bytes > 0).then_some(memory_bytes),
            gpus: (gpus > 0).then_some(u64::from(gpus)),
            gpu_model: non_empty(gpu_model),
            gpu_min_memory_mib,
        },
        constraints: ConstraintsBody {
            region: non_empty(region),
            cluster: non_empty(cluster),
            labels: labels.into_iter().collect(),
        },
        data_locality: non_empty(data_locality_region).map(|region| LocalityBody {
            region,
            cluster: non_empty(data_locality_cluster),
        }),
        priority: Some(i64::from(priority)),
        preemption,
        preemptible,
        strategy: non_empty(strategy),
        retry: RetryBody {
            max_attempts: (max_attempts > 0).then_some(u64::from(max_attempts)),
            on_failure,
        },
        timeout_secs: (timeout_secs > 0).then_some(timeout_secs),
        cancel_grace_secs,
        secrets: secrets.into_iter().collect(),
        secrets_env,
        replicas: (replicas > 0).then_some(u64::from(replicas)),
    }
}

pub(super) fn usage_figures(f: UsageFigures) -> pb::UsageFigures {
    let UsageFigures {
        cpu_core_seconds,
        memory_gib_seconds,
        gpu_seconds,
        cpu_time_seconds,
    } = f;
    pb::UsageFigures {
        cpu_core_seconds,
        memory_gib_seconds,
        gpu_seconds,
        cpu_time_seconds,
    }
}

pub(super) fn usage_report(u: UsageReport) -> pb::UsageReport {
    let UsageReport {
        project_id,
        since,
        until,
        cpu_core_seconds,
        memory_gib_seconds,
        gpu_seconds,
        cpu_time_seconds,
        archived,
        jobs,
    } = u;
    pb::UsageReport {
        project_id,
        since,
        until,
        cpu_core_seconds,
        memory_gib_seconds,
        gpu_seconds,
        cpu_time_seconds,
        archived: Some(usage_figures(archived)),
        jobs: jobs
            .into_iter()
            .map(|j| {
                let JobUsage {
                    job_id,
                    name,
                    cpu_core_seconds,
                    memory_gib_seconds,
                    gpu_seconds,
                    cpu_time_seconds,
                } = j;
                pb::JobUsage {
                    job_id,
                    name,
                    cpu_core_seconds,
                    memory_gib_seconds,
                    gpu_seconds,
                    cpu_time_seconds,
                }
            })
            .collect(),
    }
}
