//! The admin API's jobs and usage against a real single-node coordinator (real QUIC, TLS certificates and
//! sled; REST over HTTP and gRPC on the same listener): submission and validation, listing and reading,
//! cancel, tenancy (another project's job is a 404 and the attempt is audited), policies, logs, usage (a
//! purged job is a 404 whose usage still counts), and the node listing's fleet fields. No agent runs here,
//! so jobs stay pending unless a test places one.

mod api_common;

use std::time::Duration;

use anyhow::Context;
use coordinator::scheduler::{GpuDevice, Resources};
use coordinator::state::{
    Actor, Command, FleetOp, JobEventKind, JobEventOp, JobOp, Op, PlacementOp, ReplicaPlacement,
};
use protocol::pb;
use serde_json::{json, Value};
use tonic::{Code, Request};

use api_common::{start, Answer, TestApi};

async fn submit(api: &TestApi, body: Value) -> anyhow::Result<Answer> {
    api.post("/v1/jobs").json(body).send().await
}

async fn submit_ok(api: &TestApi, body: Value) -> anyhow::Result<String> {
    let a = submit(api, body).await?;
    anyhow::ensure!(a.status == 201, "submit: {} {}", a.status, a.body);
    Ok(a.str("/id"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[tokio::test]
async fn a_submitted_job_is_pending_listed_and_readable() -> anyhow::Result<()> {
    let api = start().await?;
    let default_id = api.get("/v1/projects/default").send().await?.str("/id");

    let created = submit(
        &api,
        json!({
            "name": "hello",
            "command": "echo",
            "args": ["hi", "there"],
            "env": {"GREETING": "hi"},
            "resources": {"cpu": 0.5, "memory": "64Mi", "gpus": 1, "gpu_model": "H200"},
            "constraints": {"region": "eu", "labels": {"zone": "a"}},
            "priority": 5,
            "retry": {"max_attempts": 2, "on_failure": true},
            "timeout_secs": 60,
        }),
    )
    .await?;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.str("/id");
    assert!(id.starts_with("job_"), "{id}");
    let job = &created.body;
    assert_eq!(job["state"], "pending");
    assert_eq!(job["project_id"], json!(default_id));
    assert_eq!(job["name"], "hello");
    assert_eq!(job["command"], "echo");
    assert_eq!(job["args"], json!(["hi", "there"]));
    assert_eq!(job["env"], json!({"GREETING": "hi"}));
    assert_eq!(job["resources"]["cpu_millis"], 500);
    assert_eq!(job["resources"]["memory_bytes"], 64 << 20);
    assert_eq!(job["resources"]["gpus"], 1);
    assert_eq!(job["resources"]["gpu_model"], "H200");
    assert_eq!(job["constraints"]["region"], "eu");
    assert_eq!(job["constraints"]["labels"], json!({"zone": "a"}));
    assert_eq!(job["priority"], 5);
    assert_eq!(job["retry"], json!({"max_attempts": 2, "on_failure": true}));
    assert_eq!(job["timeout_secs"], 60);
    assert_eq!(job["attempt_count"], 0);
    assert_eq!(job["attempts"], json!([]));
    assert_eq!(job["node"], Value::Null);
    assert_eq!(job["exit_code"], Value::Null);
    assert_eq!(job["cancel_requested"], false);
    assert!(job["created_at"].as_u64().is_some_and(|t| t > 0));

    let read = api.get(&format!("/v1/jobs/{id}")).send().await?;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.str("/id"), id);
    assert_eq!(read.str("/command"), "echo");

    let other = submit_ok(&api, json!({"command": "true"})).await?;
    let listed = api.get("/v1/jobs").send().await?;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let ids: Vec<&str> = listed.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert!(
        ids.contains(&id.as_str()) && ids.contains(&other.as_str()),
        "{ids:?}"
    );
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "jobs are listed in id order");

    let page = api.get("/v1/jobs?page_size=1").send().await?;
    assert_eq!(page.body["items"].as_array().map(Vec::len), Some(1));
    assert!(!page.str("/next_page_token").is_empty());

    let pending = api.get("/v1/jobs?state=pending").send().await?;
    assert_eq!(pending.body["items"].as_array().map(Vec::len), Some(2));
    let running = api.get("/v1/jobs?state=running").send().await?;
    assert_eq!(running.body["items"], json!([]));
    let bad = api.get("/v1/jobs?state=finished").send().await?;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.error_message().starts_with("state: "), "{}", bad.body);

    // Without agents the job cannot be placed: it stays pending, and the leader's scheduler says why.
    let reason = testkit::eventually_async("a pending reason", Duration::from_secs(15), || async {
        let a = api.get(&format!("/v1/jobs/{id}")).send().await.ok()?;
        assert_eq!(a.str("/state"), "pending", "{}", a.body);
        a.body["pending_reason"].as_str().map(str::to_owned)
    })
    .await?;
    assert!(!reason.trim().is_empty(), "an empty pending reason");

    let missing = api.get("/v1/jobs/job_nosuchjob").send().await?;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_message(), "job job_nosuchjob not found");

    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn validation_errors_name_the_field() -> anyhow::Result<()> {
    let api = start().await?;
    let cases = [
        (json!({}), "command"),
        (json!({"command": ""}), "command"),
        (json!({"command": "   "}), "command"),
        (
            json!({"command": "x", "resources": {"cpu": 0}}),
            "resources.cpu",
        ),
        (
            json!({"command": "x", "resources": {"cpu": "many"}}),
            "resources.cpu",
        ),
        (
            json!({"command": "x", "resources": {"cpu": 0.0001}}),
            "resources.cpu",
        ),
        (
            json!({"command": "x", "resources": {"memory": "2 lots"}}),
            "resources.memory",
        ),
        (
            json!({"command": "x", "resources": {"memory": 0}}),
            "resources.memory",
        ),
        (
            json!({"command": "x", "resources": {"gpus": 65}}),
            "resources.gpus",
        ),
        (json!({"command": "x", "env": {"9LIVES": "1"}}), "env"),
        (
            json!({"command": "x", "env": {"CUDA_VISIBLE_DEVICES": "0"}}),
            "env",
        ),
        (
            json!({"command": "x", "working_dir": "relative"}),
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
        (json!({"command": "x", "priority": 100000}), "priority"),
        (json!({"command": "x", "strategy": "random"}), "strategy"),
        (
            json!({"command": "x", "constraints": {"cluster": "a/b"}}),
            "constraints.cluster",
        ),
        (json!({"command": "x", "args": "not-a-list"}), "args"),
        (json!({"command": "x", "name": "x".repeat(200)}), "name"),
    ];
    for (body, field) in cases {
        let a = submit(&api, body.clone()).await?;
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert_eq!(a.error_code(), "invalid_argument", "{body}");
        assert!(
            a.error_message().starts_with(&format!("{field}: ")),
            "{body}: expected the message to name {field}, got {:?}",
            a.error_message()
        );
    }
    let unknown = submit(&api, json!({"command": "x", "colour": "red"})).await?;
    assert_eq!(unknown.status, 400);
    assert!(
        unknown.error_message().contains("colour"),
        "{}",
        unknown.body
    );
    let malformed = api
        .post("/v1/jobs")
        .raw("application/json", "{\"command\": ")
        .send()
        .await?;
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.error_code(), "malformed_json");

    // Nothing invalid reached the registry.
    let listed = api.get("/v1/jobs").send().await?;
    assert_eq!(listed.body["items"], json!([]));
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_pending_job_cancels_at_once_and_only_once() -> anyhow::Result<()> {
    let api = start().await?;
    let id = submit_ok(&api, json!({"command": "sleep", "args": ["600"]})).await?;

    let cancelled = api.post(&format!("/v1/jobs/{id}:cancel")).send().await?;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.str("/id"), id);
    assert_eq!(cancelled.str("/state"), "cancelled");
    assert!(cancelled.body["finished_at"].as_u64().is_some());

    let again = api.post(&format!("/v1/jobs/{id}:cancel")).send().await?;
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(again.error_code(), "conflict");
    assert!(
        again.error_message().contains("cancelled"),
        "{}",
        again.body
    );

    let read = api.get(&format!("/v1/jobs/{id}")).send().await?;
    assert_eq!(read.str("/state"), "cancelled");
    let listed = api.get("/v1/jobs?state=cancelled").send().await?;
    assert_eq!(listed.body["items"][0]["id"], json!(id));

    // A cancelled job never ran: there is no output to read.
    let logs = api.get(&format!("/v1/jobs/{id}/logs")).send().await?;
    assert_eq!(logs.status, 409, "{}", logs.body);

    let missing = api.post("/v1/jobs/job_nosuchjob:cancel").send().await?;
    assert_eq!(missing.status, 404);
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn another_projects_job_is_not_found_and_the_attempt_is_audited() -> anyhow::Result<()> {
    let api = start().await?;
    let default_id = api.get("/v1/projects/default").send().await?.str("/id");
    api.create_project("team-b").await?;
    let (editor_b, _, _) = api.create_key("team-b", "b-editor", "editor").await?;
    let id = submit_ok(&api, json!({"command": "true"})).await?;

    let missing = api
        .get("/v1/jobs/job_doesnotexist")
        .token(&editor_b)
        .send()
        .await?;
    let hidden = api
        .get(&format!("/v1/jobs/{id}"))
        .token(&editor_b)
        .send()
        .await?;
    assert_eq!(hidden.status, 404, "{}", hidden.body);
    assert_eq!(hidden.error_code(), missing.error_code());
    assert_eq!(hidden.error_message(), format!("job {id} not found"));

    let cancel = api
        .post(&format!("/v1/jobs/{id}:cancel"))
        .token(&editor_b)
        .send()
        .await?;
    assert_eq!(cancel.status, 404, "{}", cancel.body);
    let logs = api
        .get(&format!("/v1/jobs/{id}/logs"))
        .token(&editor_b)
        .send()
        .await?;
    assert_eq!(logs.status, 404, "{}", logs.body);
    let listed = api.get("/v1/jobs").token(&editor_b).send().await?;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["items"], json!([]));

    // The job is untouched, and each attempt is recorded against the project that owns it.
    assert_eq!(
        api.get(&format!("/v1/jobs/{id}"))
            .send()
            .await?
            .str("/state"),
        "pending"
    );
    let denied = |records: &[Value], action: &str| {
        records.iter().any(|r| {
            r["outcome"] == "denied"
                && r["action"] == action
                && r["target"] == json!(id)
                && r["project"] == json!(default_id)
        })
    };
    let records = api
        .audit_until("the denied attempts on the job", |r| {
            ["job.get", "job.cancel", "job.logs"]
                .iter()
                .all(|action| denied(r, action))
        })
        .await?;
    // A truly missing job takes the same path (so its answer takes as long) but belongs to no project.
    assert!(records.iter().any(|r| r["outcome"] == "denied"
        && r["target"] == "job_doesnotexist"
        && r["project"].is_null()));
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn viewers_read_jobs_but_only_editors_and_admins_run_them() -> anyhow::Result<()> {
    let api = start().await?;
    let (viewer, _, _) = api.create_key("default", "viewer", "viewer").await?;
    let (editor, _, _) = api.create_key("default", "editor", "editor").await?;
    let (deployer, _, _) = api.create_key("default", "deployer", "deployer").await?;

    for token in [&viewer, &deployer] {
        let refused = api
            .post("/v1/jobs")
            .token(token)
            .json(json!({"command": "true"}))
            .send()
            .await?;
        assert_eq!(refused.status, 403, "{}", refused.body);
        assert_eq!(refused.error_code(), "permission_denied");
        // The refusal names the roles that would grant it, not only the internal permission.
        assert_eq!(
            refused.error_message(),
            "permission denied: this operation needs run-jobs, which the editor or project-admin role \
             (or platform-admin) grants"
        );
    }
    let id = {
        let a = api
            .post("/v1/jobs")
            .token(&editor)
            .json(json!({"command": "true"}))
            .send()
            .await?;
        assert_eq!(a.status, 201, "{}", a.body);
        assert_eq!(a.str("/created_by"), "editor");
        a.str("/id")
    };
    let read = api
        .get(&format!("/v1/jobs/{id}"))
        .token(&viewer)
        .send()
        .await?;
    assert_eq!(read.status, 200, "{}", read.body);
    let usage = api.get("/v1/usage").token(&viewer).send().await?;
    assert_eq!(usage.status, 200, "{}", usage.body);
    let cancel = api
        .post(&format!("/v1/jobs/{id}:cancel"))
        .token(&viewer)
        .send()
        .await?;
    assert_eq!(cancel.status, 403, "{}", cancel.body);
    let cancel = api
        .post(&format!("/v1/jobs/{id}:cancel"))
        .token(&editor)
        .send()
        .await?;
    assert_eq!(cancel.status, 200, "{}", cancel.body);
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn logs_need_an_attempt_and_a_reachable_agent() -> anyhow::Result<()> {
    let api = start().await?;
    let id = submit_ok(&api, json!({"command": "echo", "args": ["hi"]})).await?;

    let none = api.get(&format!("/v1/jobs/{id}/logs")).send().await?;
    assert_eq!(none.status, 409, "{}", none.body);
    assert_eq!(none.error_code(), "conflict");
    assert!(none.error_message().contains("not run"), "{}", none.body);
    let bad_stream = api
        .get(&format!("/v1/jobs/{id}/logs?stream=both"))
        .send()
        .await?;
    assert_eq!(bad_stream.status, 400);
    assert!(bad_stream.error_message().starts_with("stream: "));
    let bad_offset = api
        .get(&format!("/v1/jobs/{id}/logs?offset=-4"))
        .send()
        .await?;
    assert_eq!(bad_offset.status, 400);
    assert!(
        bad_offset.error_message().contains("offset"),
        "{}",
        bad_offset.body
    );
    let no_such_attempt = api
        .get(&format!("/v1/jobs/{id}/logs?attempt=3"))
        .send()
        .await?;
    assert_eq!(no_such_attempt.status, 404, "{}", no_such_attempt.body);

    // A node whose agent address answers nothing: the job is placed there (by this test, or by the
    // leader's scheduler if it got there first), and reading its output is a 503 naming the node.
    let key = "eu/eu1/ghost";
    let gpu = GpuDevice {
        uuid: "GPU-0000".into(),
        index: 0,
        model: "NVIDIA H200".into(),
        memory_mib: 143_771,
        healthy: true,
    };
    register_unreachable_node(&api, "ghost", vec![gpu], &[("zone", "a")]).await?;
    place_by_hand(&api, &id, key, Resources::default(), now_ms()).await?;
    let job = api.get(&format!("/v1/jobs/{id}")).send().await?;
    assert_eq!(job.body["attempts"][0]["node"], key, "{}", job.body);
    assert_eq!(job.str("/node"), key);
    assert_eq!(job.str("/region"), "eu");
    assert_eq!(job.str("/cluster"), "eu1");

    let unreachable = api.get(&format!("/v1/jobs/{id}/logs")).send().await?;
    assert_eq!(unreachable.status, 503, "{}", unreachable.body);
    assert_eq!(unreachable.error_code(), "unavailable");
    assert!(
        unreachable.error_message().contains(key),
        "{}",
        unreachable.body
    );

    // The node listing carries the fleet fields.
    let nodes = api.get("/v1/nodes").send().await?;
    let node = nodes.body["items"]
        .as_array()
        .and_then(|items| items.iter().find(|n| n["key"] == key))
        .cloned()
        .context("the node is listed")?;
    assert_eq!(node["gpus"][0]["uuid"], "GPU-0000");
    assert_eq!(node["gpus"][0]["model"], "NVIDIA H200");
    assert_eq!(node["labels"], json!({"zone": "a"}));
    assert_eq!(node["idle_gpus"], json!([]));
    assert_eq!(node["os"], "Linux test");
    assert_eq!(node["limit_mode"], "rlimits");
    assert_eq!(node["rpc_addr"], "127.0.0.1:9");
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn usage_of_a_fresh_project_is_zero() -> anyhow::Result<()> {
    let api = start().await?;
    let project_id = api.create_project("fresh").await?;
    // A job that never started uses nothing.
    let a = api
        .post("/v1/jobs")
        .project("fresh")
        .json(json!({"command": "true", "resources": {"cpu": 2, "memory": "1Gi"}}))
        .send()
        .await?;
    assert_eq!(a.status, 201, "{}", a.body);

    let before = now_ms();
    let usage = api.get("/v1/usage").project("fresh").send().await?;
    assert_eq!(usage.status, 200, "{}", usage.body);
    let u = &usage.body;
    assert_eq!(u["project_id"], json!(project_id));
    for figure in [
        "cpu_core_seconds",
        "memory_gib_seconds",
        "gpu_seconds",
        "cpu_time_seconds",
    ] {
        assert_eq!(u[figure].as_f64(), Some(0.0), "{figure}: {u}");
    }
    assert_eq!(u["jobs"], json!([]));
    let (since, until) = (
        u["since"].as_u64().context("since")?,
        u["until"].as_u64().context("until")?,
    );
    assert_eq!(
        until - since,
        24 * 3_600 * 1_000,
        "the default window is a day"
    );
    assert!(until + 60_000 >= before && until <= now_ms() + 60_000);

    let ranged = api
        .get("/v1/usage?since=2026-01-01T00:00:00Z&until=1767312000000")
        .project("fresh")
        .send()
        .await?;
    assert_eq!(ranged.status, 200, "{}", ranged.body);
    assert_eq!(ranged.body["since"], 1_767_225_600_000u64);
    assert_eq!(ranged.body["until"], 1_767_312_000_000u64);
    let bad = api
        .get("/v1/usage?since=last-tuesday")
        .project("fresh")
        .send()
        .await?;
    assert_eq!(bad.status, 400);
    assert!(bad.error_message().starts_with("since: "), "{}", bad.body);
    let reversed = api
        .get("/v1/usage?since=2000&until=1000")
        .project("fresh")
        .send()
        .await?;
    assert_eq!(reversed.status, 400, "{}", reversed.body);
    api.stop().await;
    Ok(())
}

fn authed<T>(message: T, token: &str) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(req)
}

#[tokio::test]
async fn jobs_round_trip_over_grpc() -> anyhow::Result<()> {
    let api = start().await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", api.addr))?
        .connect()
        .await?;
    let mut jobs = pb::job_service_client::JobServiceClient::new(channel.clone());
    let mut usage = pb::usage_service_client::UsageServiceClient::new(channel);
    let admin = api.admin_token.clone();

    let submission = pb::SubmitJobRequest {
        name: "grpc".into(),
        command: "python3".into(),
        args: vec!["-c".into(), "print(1)".into()],
        env: [("SEED".to_owned(), "7".to_owned())].into_iter().collect(),
        resources: Some(pb::JobResources {
            cpu_millis: 1500,
            memory_bytes: 1 << 30,
            gpus: 1,
            ..Default::default()
        }),
        retry: Some(pb::JobRetry {
            max_attempts: 4,
            on_failure: true,
        }),
        timeout_secs: 30,
        replicas: 3,
        ..Default::default()
    };
    let err = jobs
        .submit_job(submission.clone())
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);

    let job = jobs
        .submit_job(authed(submission, &admin)?)
        .await?
        .into_inner();
    assert!(job.id.starts_with("job_"), "{}", job.id);
    assert_eq!(job.state, "pending");
    assert_eq!(job.command, "python3");
    assert_eq!(job.args, ["-c", "print(1)"]);
    assert_eq!(job.env.get("SEED").map(String::as_str), Some("7"));
    let resources = job.resources.clone().context("resources")?;
    assert_eq!(
        (resources.cpu_millis, resources.memory_bytes, resources.gpus),
        (1500, 1 << 30, 1)
    );
    assert_eq!(
        job.retry.map(|r| (r.max_attempts, r.on_failure)),
        Some((4, true))
    );
    assert_eq!(job.timeout_secs, Some(30));
    assert_eq!(job.replicas, 3, "a gang of three");

    let read = jobs
        .get_job(authed(pb::GetJobRequest { id: job.id.clone() }, &admin)?)
        .await?
        .into_inner();
    assert_eq!(read.id, job.id);
    assert_eq!(read.created_at, job.created_at);
    // The same object REST sees.
    let rest = api.get(&format!("/v1/jobs/{}", job.id)).send().await?;
    assert_eq!(rest.body["resources"]["cpu_millis"], 1500);
    assert_eq!(rest.body["replicas"], 3);

    let listed = jobs
        .list_jobs(authed(
            pb::ListJobsRequest {
                state: "pending".into(),
                ..Default::default()
            },
            &admin,
        )?)
        .await?
        .into_inner();
    assert!(listed.items.iter().any(|j| j.id == job.id));

    let invalid = jobs
        .submit_job(authed(
            pb::SubmitJobRequest {
                command: "x".into(),
                resources: Some(pb::JobResources {
                    gpus: 65,
                    ..Default::default()
                }),
                ..Default::default()
            },
            &admin,
        )?)
        .await
        .expect_err("too many GPUs");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert!(
        invalid.message().starts_with("resources.gpus: "),
        "{}",
        invalid.message()
    );
    let too_many = jobs
        .submit_job(authed(
            pb::SubmitJobRequest {
                command: "x".into(),
                replicas: 65,
                ..Default::default()
            },
            &admin,
        )?)
        .await
        .expect_err("too many replicas");
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert!(
        too_many.message().starts_with("replicas: "),
        "{}",
        too_many.message()
    );

    let logs = jobs
        .read_job_logs(authed(
            pb::ReadJobLogsRequest {
                id: job.id.clone(),
                ..Default::default()
            },
            &admin,
        )?)
        .await
        .expect_err("no attempt yet");
    assert_eq!(logs.code(), Code::FailedPrecondition);

    let cancelled = jobs
        .cancel_job(authed(pb::CancelJobRequest { id: job.id.clone() }, &admin)?)
        .await?
        .into_inner();
    assert_eq!(cancelled.state, "cancelled");
    let again = jobs
        .cancel_job(authed(pb::CancelJobRequest { id: job.id.clone() }, &admin)?)
        .await
        .expect_err("already cancelled");
    assert_eq!(again.code(), Code::FailedPrecondition);
    let missing = jobs
        .get_job(authed(
            pb::GetJobRequest {
                id: "job_missing".into(),
            },
            &admin,
        )?)
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);

    let report = usage
        .get_usage(authed(pb::GetUsageRequest::default(), &admin)?)
        .await?
        .into_inner();
    assert_eq!(report.until - report.since, 86_400_000);
    assert!(report.jobs.is_empty());
    assert_eq!(report.gpu_seconds, 0.0);
    let archived = report.archived.context("the archived totals are present")?;
    assert_eq!(archived.gpu_seconds, 0.0);
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_purged_job_is_gone_but_its_usage_stays() -> anyhow::Result<()> {
    let api = start().await?;
    // A label no node has keeps the leader's scheduler off it: this test places it by hand.
    let id = submit_ok(
        &api,
        json!({"command": "train", "resources": {"cpu": 2, "memory": "1Gi"},
               "constraints": {"labels": {"pool": "by-hand"}}}),
    )
    .await?;
    let key = "eu/eu1/purge";
    register_unreachable_node(&api, "purge", Vec::new(), &[]).await?;

    // The attempt runs for 1h10m, so across an hour boundary. Command time never goes back, so it is
    // placed now and its end is reported by a command stamped when it ended (an agent's event is never
    // dated before the placement or after the command that reports it).
    const HOUR: u64 = 3_600_000;
    let placed = now_ms();
    let started = placed + 60_000;
    let ended = started + HOUR + 10 * 60_000;
    let reserved = Resources {
        cpu_millis: 2_000,
        memory_bytes: 1 << 30,
        gpus: 0,
    };
    place_by_hand(&api, &id, key, reserved, placed).await?;
    let event = |at_ms: u64, kind: JobEventKind| JobEventOp {
        job_id: id.clone(),
        attempt: 1,
        replica: 0,
        at_ms,
        kind,
    };
    let report = Op::Jobs(JobOp::ReportJobEvents {
        node: key.into(),
        lease_epoch: 1,
        events: vec![
            event(started, JobEventKind::Started),
            event(
                ended,
                JobEventKind::Exited {
                    exit_code: Some(0),
                    signal: None,
                    cancelled: false,
                    timed_out: false,
                    cpu_time_ms: Some(4_250),
                    max_rss_bytes: None,
                    oom_killed: false,
                },
            ),
        ],
    });
    api.handle
        .write(Command::new(ended, Actor::system(), report))
        .await?;
    let job = api.get(&format!("/v1/jobs/{id}")).send().await?;
    assert_eq!(job.str("/state"), "succeeded", "{}", job.body);

    // Whole hours around the attempt: over hour-aligned ranges a purge changes no figure.
    let since = (placed / HOUR - 1) * HOUR;
    let until = (ended / HOUR + 2) * HOUR;
    let range = format!("/v1/usage?since={since}&until={until}");
    let figures = [
        "cpu_core_seconds",
        "memory_gib_seconds",
        "gpu_seconds",
        "cpu_time_seconds",
    ];
    let before = api.get(&range).send().await?;
    assert_eq!(before.status, 200, "{}", before.body);
    assert_eq!(before.body["jobs"][0]["job_id"], json!(id));
    assert_eq!(before.body["cpu_core_seconds"], json!(2.0 * 70.0 * 60.0));
    assert_eq!(before.body["cpu_time_seconds"], json!(4.25));
    assert_eq!(before.body["archived"]["cpu_core_seconds"], json!(0.0));

    let purge = Op::Jobs(JobOp::PurgeJobs {
        finished_before: ended + 1,
        max: 10,
    });
    let outcome = api
        .handle
        .write(Command::new(ended + 1, Actor::system(), purge))
        .await?;
    assert_eq!(
        outcome,
        coordinator::state::Outcome::Jobs(coordinator::state::JobOutcome::JobsPurged { purged: 1 }),
        "{outcome:?}"
    );

    let gone = api.get(&format!("/v1/jobs/{id}")).send().await?;
    assert_eq!(gone.status, 404, "{}", gone.body);
    assert_eq!(gone.error_code(), "not_found");
    let after = api.get(&range).send().await?;
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(after.body["jobs"], json!([]), "purged jobs have no line");
    for figure in figures {
        assert_eq!(after.body[figure], before.body[figure], "{figure}");
        assert_eq!(
            after.body["archived"][figure], after.body[figure],
            "{figure}"
        );
    }
    api.stop().await;
    Ok(())
}

/// Registers node `eu/eu1/<node>` (4 cores, 8 GiB, the GPUs and labels given) whose agent address answers
/// nothing, as if its agent had registered.
async fn register_unreachable_node(
    api: &TestApi,
    node: &str,
    gpus: Vec<GpuDevice>,
    labels: &[(&str, &str)],
) -> anyhow::Result<()> {
    let register = Op::Fleet(FleetOp::RegisterNode {
        region: "eu".into(),
        cluster: "eu1".into(),
        node: node.into(),
        cpu_cores: 4,
        memory_bytes: 8 << 30,
        gpu_count: u32::try_from(gpus.len())?,
        agent_version: "test".into(),
        gpus,
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        rpc_addr: "127.0.0.1:9".into(),
        held: Vec::new(),
        os: "Linux test".into(),
        limit_mode: "rlimits".into(),
        admit_new: None,
    });
    api.handle
        .write(Command::new(now_ms(), Actor::system(), register))
        .await?;
    Ok(())
}

/// Commits attempt 1 of job `id` on node `key` (lease epoch 1) with `resources`, stamped `at`.
async fn place_by_hand(
    api: &TestApi,
    id: &str,
    key: &str,
    resources: Resources,
    at: u64,
) -> anyhow::Result<()> {
    let place = Op::Jobs(JobOp::PlaceJobs {
        placements: vec![PlacementOp::Place {
            job_id: id.to_owned(),
            attempt: 1,
            replicas: vec![ReplicaPlacement {
                node: key.into(),
                lease_epoch: 1,
                gpu_uuids: Vec::new(),
                resources,
            }],
        }],
    });
    api.handle
        .write(Command::new(at, Actor::system(), place))
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_plan_says_where_a_job_would_land_and_a_job_no_node_could_run_says_so(
) -> anyhow::Result<()> {
    let api = start().await?;
    register_unreachable_node(&api, "a1", Vec::new(), &[]).await?;

    // A dry run: where it would land, and nothing is submitted.
    let plan = api
        .post("/v1/jobs:plan")
        .json(json!({"command": "true", "resources": {"cpu": 1, "memory": "1Gi"}}))
        .send()
        .await?;
    assert_eq!(plan.status, 200, "{}", plan.body);
    assert_eq!(plan.body["placeable"], true, "{}", plan.body);
    assert_eq!(plan.body["replicas"][0]["node"], "eu/eu1/a1");
    assert_eq!(plan.body["replicas"][0]["region"], "eu");
    assert_eq!(plan.body["replicas"][0]["resources"]["cpu_millis"], 1000);
    assert_eq!(plan.body["unsatisfiable"], Value::Null);
    let listed = api.get("/v1/jobs").send().await?;
    assert_eq!(listed.body["items"], json!([]), "a plan submits nothing");

    // A GPU job on a fleet without GPUs: told at submission, and on every read while it waits.
    let gpu_job = json!({"command": "train", "resources": {"gpus": 1}});
    let plan = api
        .post("/v1/jobs:plan")
        .json(gpu_job.clone())
        .send()
        .await?;
    assert_eq!(plan.body["placeable"], false, "{}", plan.body);
    assert!(plan.body["pending_reason"].is_string(), "{}", plan.body);
    let created = submit(&api, gpu_job).await?;
    assert_eq!(created.status, 201, "{}", created.body);
    let never = created.str("/unsatisfiable");
    assert!(
        never.starts_with("no node in the fleet could ever run it")
            && never.ends_with("1 node has no GPUs"),
        "{never}"
    );
    let id = created.str("/id");
    let read = api.get(&format!("/v1/jobs/{id}")).send().await?;
    assert_eq!(read.str("/unsatisfiable"), never);
    let listed = api.get("/v1/jobs").send().await?;
    assert_eq!(listed.body["items"][0]["unsatisfiable"], json!(never));
    // A job that only waits for room says nothing of the kind.
    let cpu = submit(&api, json!({"command": "true", "resources": {"cpu": 1}})).await?;
    assert_eq!(cpu.body["unsatisfiable"], Value::Null, "{}", cpu.body);

    // The same over gRPC.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", api.addr))?
        .connect()
        .await?;
    let mut jobs = pb::job_service_client::JobServiceClient::new(channel);
    let grpc_plan = jobs
        .plan_job(authed(
            pb::SubmitJobRequest {
                command: "train".into(),
                resources: Some(pb::JobResources {
                    gpus: 1,
                    ..Default::default()
                }),
                ..Default::default()
            },
            &api.admin_token,
        )?)
        .await?
        .into_inner();
    assert!(!grpc_plan.placeable);
    assert_eq!(grpc_plan.unsatisfiable.as_deref(), Some(never.as_str()));

    // Planning is running jobs' right: a viewer may not; a bad body names its field.
    let (viewer, _, _) = api.create_key("default", "planner", "viewer").await?;
    let denied = api
        .post("/v1/jobs:plan")
        .token(&viewer)
        .json(json!({"command": "true"}))
        .send()
        .await?;
    assert_eq!(denied.status, 403, "{}", denied.body);
    let bad = api
        .post("/v1/jobs:plan")
        .json(json!({"command": ""}))
        .send()
        .await?;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.error_message().starts_with("command"), "{}", bad.body);

    api.stop().await;
    Ok(())
}
