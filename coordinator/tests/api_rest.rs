//! The admin API's REST face against a real single-node coordinator: conventions, tenancy, keys, errors,
//! the audit chain, secrets and the policy on every route.

mod api_common;

use std::collections::BTreeSet;

use anyhow::Context;
use serde_json::{json, Value};

use api_common::{start, start_with, Setup};

#[tokio::test]
async fn projects_are_created_once_listed_in_pages_and_deleted() -> anyhow::Result<()> {
    let api = start().await?;

    let created = api
        .post("/v1/projects")
        .json(json!({ "name": "alpha", "description": "first" }))
        .send()
        .await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let alpha_id = created.str("/id");
    assert!(alpha_id.starts_with("prj_"), "{alpha_id}");
    assert_eq!(created.str("/name"), "alpha");
    assert_eq!(created.str("/description"), "first");

    let dup = api
        .post("/v1/projects")
        .json(json!({ "name": "alpha" }))
        .send()
        .await?;
    assert_eq!(dup.status, 409, "{:?}", dup.body);
    assert_eq!(dup.error_code(), "already_exists");

    let mut expected: BTreeSet<String> =
        ["default", "alpha"].iter().map(|s| s.to_string()).collect();
    for i in 0..5 {
        let name = format!("p{i}");
        api.create_project(&name).await?;
        expected.insert(name);
    }

    let mut seen = BTreeSet::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = api
            .get(&format!("/v1/projects?page_size=2&page_token={token}"))
            .send()
            .await?;
        assert_eq!(page.status, 200, "{:?}", page.body);
        let items = page.body["items"].as_array().context("items")?.clone();
        assert!(items.len() <= 2);
        for item in items {
            let name = item["name"].as_str().context("name")?.to_owned();
            assert!(seen.insert(name.clone()), "{name} listed twice");
        }
        pages += 1;
        token = page.str("/next_page_token");
        if token.is_empty() {
            break;
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(seen, expected);
    assert_eq!(pages, 4);

    let by_name = api.get("/v1/projects/alpha").send().await?;
    let by_id = api.get(&format!("/v1/projects/{alpha_id}")).send().await?;
    assert_eq!(by_name.status, 200);
    assert_eq!(by_name.body, by_id.body);

    let deleted = api.delete("/v1/projects/alpha").send().await?;
    assert_eq!(deleted.status, 204, "{:?}", deleted.body);
    let gone = api.get("/v1/projects/alpha").send().await?;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.error_code(), "not_found");
    assert_eq!(gone.error_message(), "project alpha not found");

    let default_gone = api.delete("/v1/projects/default").send().await?;
    assert_eq!(default_gone.status, 412, "{:?}", default_gone.body);
    assert_eq!(default_gone.error_code(), "failed_precondition");

    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn keys_work_never_show_their_secret_and_stop_working_when_revoked() -> anyhow::Result<()> {
    let api = start().await?;
    let project_id = api.create_project("vision").await?;

    let created = api
        .post("/v1/keys")
        .project("vision")
        .json(json!({ "name": "ci", "role": "editor", "expires_in_seconds": 3600 }))
        .send()
        .await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let token = created.str("/token");
    let key_id = created.str("/key/id");
    assert_eq!(created.str("/id"), key_id);
    assert!(token.starts_with(&format!("mrd_{key_id}_")), "{token}");
    assert_eq!(created.str("/key/project_id"), project_id);
    assert_eq!(created.str("/binding/role"), "editor");
    assert!(created.body["key"].get("hash").is_none());

    // The new token works, in its own project by default.
    let me = api.get("/v1/whoami").token(&token).send().await?;
    assert_eq!(me.status, 200, "{:?}", me.body);
    assert_eq!(me.str("/key/id"), key_id);
    assert_eq!(me.str("/project/name"), "vision");
    assert_eq!(me.str("/principal/id"), created.str("/principal/id"));

    // Listing and reading show the prefix and last four characters, never the token or its hash.
    let hash = coordinator::crypto::hash_token(&token);
    // The secret is everything after `mrd_<key id>_`; base64url may itself contain '_'.
    let secret_part = token
        .splitn(3, '_')
        .nth(2)
        .context("secret part")?
        .to_owned();
    let list = api.get("/v1/keys").project("vision").send().await?;
    assert_eq!(list.status, 200);
    let items = list.body["items"].as_array().context("items")?;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["prefix"], json!(format!("mrd_{key_id}_")));
    assert_eq!(items[0]["last4"], json!(&token[token.len() - 4..]));
    for body in [
        &list.body,
        &api.get(&format!("/v1/keys/{key_id}"))
            .project("vision")
            .send()
            .await?
            .body,
    ] {
        let text = body.to_string();
        assert!(
            !text.contains(&secret_part) && !text.contains(&hash),
            "secret leaked: {text}"
        );
        assert!(!text.contains("\"hash\""), "{text}");
    }

    // Revocation bites at once.
    let revoked = api
        .post(&format!("/v1/keys/{key_id}:revoke"))
        .project("vision")
        .send()
        .await?;
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert!(revoked.body["revoked_at"].as_u64().is_some());
    let after = api.get("/v1/whoami").token(&token).send().await?;
    assert_eq!(after.status, 401);
    assert_eq!(after.error_code(), "unauthenticated");

    // DELETE revokes too.
    let (token2, key2, _) = api.create_key("vision", "ci2", "viewer").await?;
    assert_eq!(
        api.get("/v1/whoami").token(&token2).send().await?.status,
        200
    );
    let deleted = api
        .delete(&format!("/v1/keys/{key2}"))
        .project("vision")
        .send()
        .await?;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    assert_eq!(
        api.get("/v1/whoami").token(&token2).send().await?.status,
        401
    );

    // Unknown role, past expiry and a new service account without a role are refused by name.
    let bad_role = api
        .post("/v1/keys")
        .json(json!({ "name": "x", "role": "root" }))
        .send()
        .await?;
    assert_eq!(bad_role.status, 400);
    assert!(
        bad_role.error_message().starts_with("role: "),
        "{}",
        bad_role.error_message()
    );
    let no_role = api
        .post("/v1/keys")
        .json(json!({ "name": "x" }))
        .send()
        .await?;
    assert_eq!(no_role.status, 400);
    assert!(
        no_role.error_message().starts_with("role: "),
        "{}",
        no_role.error_message()
    );

    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn other_projects_answer_like_missing_ones_and_attempts_are_audited() -> anyhow::Result<()> {
    let api = start().await?;
    let a_id = api.create_project("team-a").await?;
    let b_id = api.create_project("team-b").await?;
    let (token_a, _, _) = api.create_key("team-a", "admin-a", "project-admin").await?;
    let (_, key_b, _) = api.create_key("team-b", "worker-b", "editor").await?;

    // An object id of project B, read with project A's key.
    let hidden = api
        .get(&format!("/v1/keys/{key_b}"))
        .token(&token_a)
        .send()
        .await?;
    let missing = api
        .get("/v1/keys/zzzzzzzzzzzz")
        .token(&token_a)
        .send()
        .await?;
    assert_eq!(hidden.status, 404);
    assert_eq!(missing.status, 404);
    let normalize = |v: &Value, id: &str| v.to_string().replace(id, "<id>");
    assert_eq!(
        normalize(&hidden.body, &key_b),
        normalize(&missing.body, "zzzzzzzzzzzz")
    );
    let revoke_hidden = api
        .post(&format!("/v1/keys/{key_b}:revoke"))
        .token(&token_a)
        .send()
        .await?;
    assert_eq!(revoke_hidden.status, 404);

    // Project B itself, selected by name and by id, answers like a project that does not exist.
    let hidden_project = api
        .get("/v1/keys")
        .token(&token_a)
        .project("team-b")
        .send()
        .await?;
    let missing_project = api
        .get("/v1/keys")
        .token(&token_a)
        .project("team-zz")
        .send()
        .await?;
    assert_eq!(hidden_project.status, 404);
    assert_eq!(missing_project.status, 404);
    assert_eq!(
        normalize(&hidden_project.body, "team-b"),
        normalize(&missing_project.body, "team-zz")
    );
    assert_eq!(
        api.get("/v1/keys")
            .token(&token_a)
            .project(&b_id)
            .send()
            .await?
            .status,
        404
    );
    let by_path = api
        .get("/v1/projects/team-b")
        .token(&token_a)
        .send()
        .await?;
    assert_eq!(by_path.status, 404);
    assert_eq!(
        normalize(&by_path.body, "team-b"),
        normalize(
            &api.get("/v1/projects/team-zz")
                .token(&token_a)
                .send()
                .await?
                .body,
            "team-zz"
        )
    );
    // Project A's own listing works and shows none of B's projects.
    let own = api.get("/v1/projects").token(&token_a).send().await?;
    let names: Vec<&str> = own.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, vec!["team-a"]);

    // The attempts are in the audit log (coalesced, a window later), attributed to project B.
    let denied = |records: &[Value], action: &str, target: &str| {
        records.iter().any(|r| {
            r["outcome"] == "denied"
                && r["action"] == action
                && r["target"] == target
                && r["project"] == json!(b_id)
        })
    };
    let records = api
        .audit_until("the denied attempts on project B", |r| {
            denied(r, "key.get", &key_b)
                && denied(r, "key.revoke", &key_b)
                && denied(r, "key.list", &b_id)
                && denied(r, "project.get", "team-b")
        })
        .await?;
    // Nothing was recorded against project A for its own successful reads.
    assert!(!records
        .iter()
        .any(|r| r["outcome"] == "denied" && r["project"] == json!(a_id)));
    // The key of B is untouched.
    let b_key = api
        .get(&format!("/v1/keys/{key_b}"))
        .project("team-b")
        .send()
        .await?;
    assert_eq!(b_key.status, 200);
    assert!(b_key.body["revoked_at"].is_null());

    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn roles_limit_what_a_key_can_do() -> anyhow::Result<()> {
    let api = start().await?;
    api.create_project("ops").await?;
    let (viewer, _, viewer_principal) = api.create_key("ops", "watcher", "viewer").await?;
    let (padmin, _, _) = api.create_key("ops", "lead", "project-admin").await?;

    let refused = api
        .post("/v1/keys")
        .token(&viewer)
        .json(json!({ "name": "more", "role": "viewer" }))
        .send()
        .await?;
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    assert_eq!(refused.error_code(), "permission_denied");
    assert_eq!(api.get("/v1/keys").token(&viewer).send().await?.status, 200);
    assert_eq!(api.get("/metrics").token(&viewer).send().await?.status, 403);
    assert_eq!(
        api.post("/v1/projects")
            .token(&padmin)
            .json(json!({ "name": "mine" }))
            .send()
            .await?
            .status,
        403
    );
    assert_eq!(
        api.get("/v1/audit").token(&viewer).send().await?.status,
        403
    );

    api.audit_until("the viewer's denied key.create", |records| {
        records.iter().any(|r| {
            r["outcome"] == "denied"
                && r["action"] == "key.create"
                && r["actor"]["principal_id"] == json!(viewer_principal)
        })
    })
    .await?;

    // A project admin manages bindings in its project, but not platform-wide.
    let sa = api
        .post("/v1/principals")
        .token(&padmin)
        .json(json!({ "name": "robot" }))
        .send()
        .await?;
    assert_eq!(sa.status, 201, "{:?}", sa.body);
    let sa_id = sa.str("/id");
    let bound = api
        .post("/v1/role-bindings")
        .token(&padmin)
        .json(json!({ "principal_id": sa_id, "role": "deployer" }))
        .send()
        .await?;
    assert_eq!(bound.status, 201, "{:?}", bound.body);
    assert!(bound.str("/scope").starts_with("project:"));
    let dup = api
        .post("/v1/role-bindings")
        .token(&padmin)
        .json(json!({ "principal_id": sa_id, "role": "deployer" }))
        .send()
        .await?;
    assert_eq!(dup.status, 409);
    let platform = api
        .post("/v1/role-bindings")
        .token(&padmin)
        .json(json!({ "principal_id": sa_id, "role": "platform-admin", "platform": true }))
        .send()
        .await?;
    assert_eq!(platform.status, 403);
    let listed = api.get("/v1/role-bindings").token(&padmin).send().await?;
    assert!(listed.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .any(|b| b["id"] == bound.body["id"]));
    let principals = api.get("/v1/principals").token(&padmin).send().await?;
    assert!(principals.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .any(|p| p["id"] == json!(sa_id)));
    let unbound = api
        .delete(&format!("/v1/role-bindings/{}", bound.str("/id")))
        .token(&padmin)
        .send()
        .await?;
    assert_eq!(unbound.status, 204, "{:?}", unbound.body);
    assert_eq!(
        api.delete(&format!("/v1/role-bindings/{}", bound.str("/id")))
            .token(&padmin)
            .send()
            .await?
            .status,
        404
    );

    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_requests_get_json_errors_that_name_the_problem() -> anyhow::Result<()> {
    let api = start_with(Setup {
        tls: false,
        max_body_bytes: 16 * 1024,
        ..Setup::default()
    })
    .await?;

    let malformed = api
        .post("/v1/projects")
        .raw("application/json", "{\"name\": ")
        .send()
        .await?;
    assert_eq!(
        (malformed.status, malformed.error_code()),
        (400, "malformed_json"),
        "{:?}",
        malformed.body
    );

    let unknown = api
        .post("/v1/projects")
        .json(json!({ "name": "ok", "colour": "red" }))
        .send()
        .await?;
    assert_eq!(
        (unknown.status, unknown.error_code()),
        (400, "invalid_argument")
    );
    assert!(
        unknown.error_message().contains("colour"),
        "{}",
        unknown.error_message()
    );

    // The project travels in a header; a query parameter that looks like it chooses one is refused.
    let by_query = api.get("/v1/jobs?project=default").send().await?;
    assert_eq!(
        (by_query.status, by_query.error_code()),
        (400, "invalid_argument"),
        "{:?}",
        by_query.body
    );
    assert!(
        by_query.error_message().starts_with("project: ")
            && by_query.error_message().contains("X-Meridian-Project"),
        "{}",
        by_query.error_message()
    );

    let wrong_type = api
        .post("/v1/projects")
        .json(json!({ "name": 5 }))
        .send()
        .await?;
    assert_eq!(wrong_type.status, 400);
    assert!(
        wrong_type.error_message().starts_with("name: "),
        "{}",
        wrong_type.error_message()
    );

    let bad_name = api
        .post("/v1/projects")
        .json(json!({ "name": "Bad_Name" }))
        .send()
        .await?;
    assert_eq!(bad_name.status, 400);
    assert_eq!(bad_name.error_code(), "invalid_argument");
    assert_eq!(
        bad_name.error_message(),
        "name: must match [a-z0-9][a-z0-9-]{0,62}"
    );

    let not_json = api
        .post("/v1/projects")
        .raw("text/plain", "name=x")
        .send()
        .await?;
    assert_eq!(
        (not_json.status, not_json.error_code()),
        (415, "unsupported_media_type")
    );

    let huge = api
        .post("/v1/projects")
        .json(json!({ "name": "big", "description": "x".repeat(64 * 1024) }))
        .send()
        .await?;
    assert_eq!(
        (huge.status, huge.error_code()),
        (413, "payload_too_large"),
        "{:?}",
        huge.body
    );
    assert!(huge.content_type.starts_with("application/json"));

    let no_route = api.get("/v1/nothing-here").send().await?;
    assert_eq!((no_route.status, no_route.error_code()), (404, "not_found"));
    let wrong_method = api
        .request(reqwest::Method::PUT, "/v1/projects")
        .json(json!({}))
        .send()
        .await?;
    assert_eq!(
        (wrong_method.status, wrong_method.error_code()),
        (405, "method_not_allowed")
    );

    let bad_size = api.get("/v1/projects?page_size=lots").send().await?;
    assert_eq!(bad_size.status, 400);
    assert!(
        bad_size.error_message().contains("page_size"),
        "{}",
        bad_size.error_message()
    );
    let bad_token = api.get("/v1/projects?page_token=%21%21").send().await?;
    assert_eq!(bad_token.status, 400);
    assert!(
        bad_token.error_message().starts_with("page_token: "),
        "{}",
        bad_token.error_message()
    );
    let empty_params = api.get("/v1/audit?after_seq=&page_size=").send().await?;
    assert_eq!(empty_params.status, 200, "{:?}", empty_params.body);
    let negative = api.get("/v1/audit?after_seq=-1").send().await?;
    assert_eq!(negative.status, 400);
    assert!(
        negative.error_message().contains("after_seq"),
        "{}",
        negative.error_message()
    );
    let bad_member = api.delete("/v1/cluster/members/first").send().await?;
    assert_eq!(bad_member.status, 400, "{:?}", bad_member.body);
    let bad_addr = api
        .post("/v1/cluster/members")
        .json(json!({ "id": 9, "name": "c9", "raft_addr": "nowhere", "admin_addr": "x:1" }))
        .send()
        .await?;
    assert_eq!(bad_addr.status, 400);
    assert!(bad_addr.error_message().starts_with("raft_addr: "));

    // None of these produced a server error, and every error body has the same shape.
    for a in [
        &malformed,
        &unknown,
        &wrong_type,
        &bad_name,
        &not_json,
        &huge,
        &no_route,
        &wrong_method,
        &bad_size,
    ] {
        assert!(
            a.body["error"]["code"].is_string() && a.body["error"]["message"].is_string(),
            "{:?}",
            a.body
        );
    }

    api.stop().await;
    Ok(())
}

/// Fills path parameters of an OpenAPI path with placeholder values.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map_or(rest.len(), |e| start + e + 1);
        out.push_str("x1");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn every_non_public_route_needs_a_valid_token() -> anyhow::Result<()> {
    let api = start().await?;
    let doc = api.get("/v1/openapi.json").no_token().send().await?;
    assert_eq!(doc.status, 200);
    let paths = doc.body["paths"].as_object().context("paths")?;
    let (revoked, revoked_id, _) = api.create_key("default", "soon-gone", "viewer").await?;
    assert_eq!(
        api.post(&format!("/v1/keys/{revoked_id}:revoke"))
            .send()
            .await?
            .status,
        200
    );
    let unknown = coordinator::crypto::generate_token(&mut rand::rngs::OsRng).token;
    let mut tampered = api.admin_token.clone();
    let last = tampered.pop().context("token")?;
    tampered.push(if last == 'A' { 'B' } else { 'A' });

    let mut checked = 0;
    let mut message = None;
    for (path, methods) in paths {
        for (method, op) in methods.as_object().context("methods")? {
            let method: reqwest::Method = method.to_uppercase().parse()?;
            let url = concrete(path);
            let public = op["security"].as_array().is_some_and(Vec::is_empty);
            let bare = api.request(method.clone(), &url).no_token().send().await?;
            if public {
                assert_ne!(bare.status, 401, "{method} {path} is public");
                continue;
            }
            for token in [
                None,
                Some("garbage"),
                Some(unknown.as_str()),
                Some(revoked.as_str()),
                Some(tampered.as_str()),
            ] {
                let call = api.request(method.clone(), &url);
                let call = match token {
                    Some(t) => call.token(t),
                    None => call.no_token(),
                };
                let a = call.send().await?;
                assert_eq!(
                    a.status, 401,
                    "{method} {path} with {token:?}: {:?}",
                    a.body
                );
                assert_eq!(a.error_code(), "unauthenticated");
                // One message for every failure: nothing says which part was wrong.
                let m = a.error_message().to_owned();
                assert_eq!(message.get_or_insert_with(|| m.clone()), &m);
            }
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} routes checked");
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_audit_chain_verifies_and_tampering_is_detected() -> anyhow::Result<()> {
    let api = start().await?;
    api.create_project("audited").await?;
    api.create_key("audited", "k", "viewer").await?;
    let dup = api
        .post("/v1/projects")
        .json(json!({ "name": "audited" }))
        .send()
        .await?;
    assert_eq!(dup.status, 409);

    let raw = api.audit_all().await?;
    assert!(raw.len() >= 4, "{raw:#?}");
    assert!(raw
        .iter()
        .all(|r| r["hash"].as_str().is_some_and(|h| h.len() == 64)));
    assert!(raw
        .iter()
        .any(|r| r["action"] == "project.create" && r["outcome"] == "refused"));
    let mut records: Vec<coordinator::state::AuditRecord> =
        serde_json::from_value(Value::Array(raw))?;
    coordinator::state::verify_chain(&records)?;

    let server = api.get("/v1/audit/verify").send().await?;
    assert_eq!(server.status, 200);
    assert_eq!(server.body["ok"], json!(true));
    assert_eq!(server.body["records"], json!(records.len()));

    // Altering any field of any record breaks the chain at that record.
    let target = records[2].seq;
    records[2].detail.push('!');
    let err = coordinator::state::verify_chain(&records).expect_err("altered detail");
    assert_eq!(err.seq, target);
    records[2].detail.pop();
    coordinator::state::verify_chain(&records)?;
    let original = records[1].clone();
    records[1].actor.name = "someone-else".into();
    assert!(coordinator::state::verify_chain(&records).is_err());
    records[1] = original;
    coordinator::state::verify_chain(&records)?;
    let removed = records.remove(1);
    assert!(coordinator::state::verify_chain(&records).is_err());
    records.insert(1, removed);
    coordinator::state::verify_chain(&records)?;

    // Paging by sequence number returns consecutive runs.
    let page = api.get("/v1/audit?after_seq=1&page_size=2").send().await?;
    let seqs: Vec<u64> = page.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    assert_eq!(seqs, vec![2, 3]);
    assert_eq!(page.str("/next_page_token"), "3");

    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn secret_values_never_come_back() -> anyhow::Result<()> {
    let api = start().await?;
    let project_id = api.create_project("payments").await?;
    let value = "s3cr3t-Value-that-must-not-leak-7f2c";
    let (_, _, worker) = api.create_key("payments", "worker", "editor").await?;
    let (_, _, outsider) = api.create_key("default", "outsider", "editor").await?;

    let bound = [
        format!("principal:{worker}/job:charge-*"),
        format!("principal:{worker}"),
    ];
    let put = api
        .post("/v1/secrets")
        .project("payments")
        .json(json!({ "name": "stripe-key", "value": value, "bindings": bound }))
        .send()
        .await?;
    assert_eq!(put.status, 201, "{:?}", put.body);
    assert_eq!(put.str("/id"), "stripe-key");
    assert_eq!(put.body["latest_version"], json!(1));
    let second = api
        .post("/v1/secrets")
        .project("payments")
        .json(json!({ "name": "stripe-key", "value": format!("{value}-v2") }))
        .send()
        .await?;
    assert_eq!(second.status, 201, "{:?}", second.body);
    assert_eq!(second.body["latest_version"], json!(2));
    assert_eq!(
        second.body["bindings"],
        json!([
            format!("principal:{worker}"),
            format!("principal:{worker}/job:charge-*")
        ])
    );

    let list = api.get("/v1/secrets").project("payments").send().await?;
    let get = api
        .get("/v1/secrets/stripe-key")
        .project("payments")
        .send()
        .await?;
    assert_eq!(get.status, 200);
    assert_eq!(get.body["versions"].as_array().map(Vec::len), Some(2));
    let audit = api.get("/v1/audit?page_size=1000").send().await?;

    let (cipher1, wrapped) = api.handle.read(|s| {
        let scope = s.project_scope(&project_id);
        let secret = scope
            .secret("stripe-key")
            .map(|x| x.versions[0].sealed.ciphertext_b64.clone());
        (secret, scope.data_key().cloned())
    });
    let cipher1 = cipher1.context("stored secret")?;
    for body in [&put.body, &second.body, &list.body, &get.body, &audit.body] {
        let text = body.to_string();
        assert!(!text.contains(value), "value leaked: {text}");
        assert!(!text.contains(&cipher1), "ciphertext leaked: {text}");
        assert!(
            !text.contains("ciphertext") && !text.contains("sealed"),
            "{text}"
        );
    }

    // What is stored opens with the project's data key, bound to its project, name and version.
    let data_key =
        coordinator::crypto::unwrap_data_key(&api.keyring, &wrapped.context("data key")?)?;
    let stored = api
        .handle
        .read(|s| s.project_scope(&project_id).secret("stripe-key").cloned())
        .context("secret")?;
    let aad = coordinator::crypto::SecretAad {
        project_id: &project_id,
        name: "stripe-key",
        version: 1,
    };
    let plain = coordinator::crypto::decrypt_secret(&data_key, &stored.versions[0].sealed, aad)?;
    assert_eq!(plain.as_slice(), value.as_bytes());

    let rewrap = api.post("/v1/secrets:rewrap").send().await?;
    assert_eq!(rewrap.status, 200, "{:?}", rewrap.body);
    assert_eq!(rewrap.body["projects"], json!(2));
    assert_eq!(rewrap.str("/master_key_id"), "mk1");
    assert_eq!(rewrap.body["new_data_keys"], json!(false));

    // Replacing the data keys re-encrypts every version under a fresh key, in one command.
    let replaced = api
        .post("/v1/secrets:rewrap?new_data_keys=true")
        .send()
        .await?;
    assert_eq!(replaced.status, 200, "{:?}", replaced.body);
    assert_eq!(replaced.body["new_data_keys"], json!(true));
    assert_eq!(replaced.body["secret_versions"], json!(2));
    let (after, new_wrapped) = api.handle.read(|s| {
        let scope = s.project_scope(&project_id);
        (
            scope.secret("stripe-key").cloned(),
            scope.data_key().cloned(),
        )
    });
    let after = after.context("secret")?;
    let new_key =
        coordinator::crypto::unwrap_data_key(&api.keyring, &new_wrapped.context("data key")?)?;
    assert_ne!(after.versions[0].sealed, stored.versions[0].sealed);
    assert_eq!(
        coordinator::crypto::decrypt_secret(&new_key, &after.versions[0].sealed, aad)?.as_slice(),
        value.as_bytes()
    );
    assert!(
        coordinator::crypto::decrypt_secret(&data_key, &after.versions[0].sealed, aad).is_err(),
        "the old data key opens nothing"
    );
    let bad_flag = api
        .post("/v1/secrets:rewrap?new_data_keys=maybe")
        .send()
        .await?;
    assert_eq!(bad_flag.status, 400, "{:?}", bad_flag.body);
    assert!(
        bad_flag.error_message().contains("new_data_keys"),
        "{}",
        bad_flag.error_message()
    );

    // Bindings name who may use the secret: job-name selectors, malformed ones and principals that do not
    // act in the project are refused, naming the field.
    for bad in [
        json!(["not a selector"]),
        json!(["job:*"]),
        json!(["job:charge-prod"]),
        json!([format!("principal:{worker}/job:")]),
        json!(["principal:sa_nobody"]),
        json!([format!("principal:{outsider}")]),
    ] {
        let bad_binding = api
            .post("/v1/secrets")
            .project("payments")
            .json(json!({ "name": "other", "value": "v", "bindings": bad }))
            .send()
            .await?;
        assert_eq!(bad_binding.status, 400, "{bad}: {:?}", bad_binding.body);
        assert!(
            bad_binding.error_message().starts_with("bindings: "),
            "{}",
            bad_binding.error_message()
        );
    }

    assert_eq!(
        api.delete("/v1/secrets/stripe-key")
            .project("payments")
            .send()
            .await?
            .status,
        204
    );
    assert_eq!(
        api.get("/v1/secrets/stripe-key")
            .project("payments")
            .send()
            .await?
            .status,
        404
    );
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn health_readiness_metrics_and_cluster() -> anyhow::Result<()> {
    let api = start().await?;
    let health = api.get("/healthz").no_token().send().await?;
    assert_eq!((health.status, health.str("/status").as_str()), (200, "ok"));
    let ready = api.get("/readyz").no_token().send().await?;
    assert_eq!(ready.status, 200, "{:?}", ready.body);

    let status = api.get("/v1/cluster/status").send().await?;
    assert_eq!(status.status, 200);
    assert_eq!(status.body["node_id"], json!(1));
    assert_eq!(status.body["leader"], json!(1));
    let members = api.get("/v1/cluster/members").send().await?;
    assert_eq!(members.body["items"].as_array().map(Vec::len), Some(1));
    let unknown_member = api.delete("/v1/cluster/members/42").send().await?;
    assert_eq!(unknown_member.status, 404);

    let metrics = api.get("/metrics").send().await?;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .content_type
            .starts_with("application/openmetrics-text; version=1.0.0"),
        "{}",
        metrics.content_type
    );
    let text = metrics.body.as_str().context("metrics text")?;
    assert!(
        text.contains(
            "meridian_api_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("meridian_api_requests_total{route=\"/v1/cluster/members/{id}\",method=\"DELETE\",status=\"404\"} 1"));
    assert!(text.contains(
        "meridian_api_request_duration_seconds_bucket{le=\"+Inf\",route=\"/v1/cluster/status\"} 1"
    ));
    assert!(text.contains("meridian_raft_is_leader{node_id=\"1\"} 1"));
    assert!(text.contains("meridian_raft_term{node_id=\"1\"}"));
    assert!(text.contains("meridian_raft_applied_index{node_id=\"1\"}"));

    let doc = api.get("/v1/openapi.json").no_token().send().await?;
    assert_eq!(doc.body["openapi"], json!("3.1.0"));
    assert!(doc.body["paths"]["/v1/keys/{id}:revoke"]["post"].is_object());
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn nodes_are_listed_for_platform_admins_only() -> anyhow::Result<()> {
    let api = start().await?;
    let empty = api.get("/v1/nodes").send().await?;
    assert_eq!(empty.status, 200, "{:?}", empty.body);
    assert_eq!(empty.body["items"], json!([]));
    for node in ["eu-a2", "eu-a1"] {
        api.register_node(node, 8, &[], None).await?;
    }
    let page = api.get("/v1/nodes?page_size=1").send().await?;
    assert_eq!(page.status, 200, "{:?}", page.body);
    assert_eq!(page.str("/items/0/key"), "eu/eu1/eu-a1");
    assert_eq!(page.str("/items/0/health"), "ready");
    assert_eq!(page.body["items"][0]["lease_epoch"], json!(1));
    let token = page.str("/next_page_token");
    let rest = api
        .get(&format!("/v1/nodes?page_size=1&page_token={token}"))
        .send()
        .await?;
    assert_eq!(rest.str("/items/0/key"), "eu/eu1/eu-a2");

    let (padmin, _, _) = api.create_key("default", "lead", "project-admin").await?;
    let refused = api.get("/v1/nodes").token(&padmin).send().await?;
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn platform_admins_drain_and_undrain_nodes() -> anyhow::Result<()> {
    let api = start().await?;
    api.register_node("eu-a1", 0, &[], None).await?;
    let listed = api.get("/v1/nodes").send().await?;
    assert_eq!(listed.body["items"][0]["draining"], json!(false));

    // Project roles cannot drain, not even a project admin.
    for role in ["viewer", "editor", "project-admin"] {
        let (token, _, _) = api.create_key("default", role, role).await?;
        let refused = api
            .post("/v1/nodes/eu/eu1/eu-a1:drain")
            .token(&token)
            .send()
            .await?;
        assert_eq!(refused.status, 403, "{role}: {:?}", refused.body);
    }

    let drained = api.post("/v1/nodes/eu/eu1/eu-a1:drain").send().await?;
    assert_eq!(drained.status, 200, "{:?}", drained.body);
    assert_eq!(drained.str("/key"), "eu/eu1/eu-a1");
    assert_eq!(drained.body["draining"], json!(true));
    assert_eq!(drained.str("/health"), "ready");
    let listed = api.get("/v1/nodes").send().await?;
    assert_eq!(listed.body["items"][0]["draining"], json!(true));
    let status = api.get("/v1/cluster/status").send().await?;
    assert_eq!(
        status.body["sites"][0]["draining"],
        json!(1),
        "{:?}",
        status.body
    );
    // Draining twice changes nothing and is still fine.
    let again = api.post("/v1/nodes/eu/eu1/eu-a1:drain").send().await?;
    assert_eq!(again.status, 200, "{:?}", again.body);

    let unknown = api.post("/v1/nodes/eu/eu1/nope:drain").send().await?;
    assert_eq!(unknown.status, 404, "{:?}", unknown.body);
    assert_eq!(unknown.error_code(), "not_found");
    let malformed = api.post("/v1/nodes/eu/eu.1/eu-a1:drain").send().await?;
    assert_eq!(malformed.status, 400, "{:?}", malformed.body);
    assert!(
        malformed.error_message().contains("cluster"),
        "{:?}",
        malformed.body
    );

    let undrained = api.post("/v1/nodes/eu/eu1/eu-a1:undrain").send().await?;
    assert_eq!(undrained.status, 200, "{:?}", undrained.body);
    assert_eq!(undrained.body["draining"], json!(false));
    let listed = api.get("/v1/nodes").send().await?;
    assert_eq!(listed.body["items"][0]["draining"], json!(false));

    let audit = api.audit_all().await?;
    let actions: Vec<&str> = audit
        .iter()
        .filter(|r| r["target"] == json!("eu/eu1/eu-a1"))
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"node.drain") && actions.contains(&"node.undrain"),
        "{actions:?}"
    );
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn platform_admins_deny_identities_and_admit_nodes() -> anyhow::Result<()> {
    let api = start().await?;
    api.register_node("eu-a1", 0, &[], Some(false)).await?;
    let agent_uri = format!(
        "spiffe://{}/region/eu/cluster/eu1/agent/eu-a1",
        api_common::TRUST_DOMAIN
    );

    // Project roles may neither read nor change the deny-list, admissions or policies.
    let (padmin, _, _) = api.create_key("default", "lead", "project-admin").await?;
    for (method, path, body) in [
        ("GET", "/v1/denied-identities", None),
        (
            "POST",
            "/v1/denied-identities",
            Some(json!({ "node": "eu/eu1/eu-a1" })),
        ),
        (
            "POST",
            "/v1/denied-identities:remove",
            Some(json!({ "node": "eu/eu1/eu-a1" })),
        ),
        ("POST", "/v1/nodes/eu/eu1/eu-a1:approve", None),
        (
            "POST",
            "/v1/clusters/eu/eu1/policy",
            Some(json!({ "auto_approve": true })),
        ),
    ] {
        let call = api.request(method.parse()?, path).token(&padmin);
        let call = match body {
            Some(b) => call.json(b),
            None => call,
        };
        let refused = call.send().await?;
        assert_eq!(refused.status, 403, "{method} {path}: {:?}", refused.body);
    }

    let denied = api
        .post("/v1/denied-identities")
        .json(json!({ "node": "eu/eu1/eu-a1", "reason": "disk stolen" }))
        .send()
        .await?;
    assert_eq!(denied.status, 201, "{:?}", denied.body);
    assert_eq!(denied.str("/id"), format!("identity:{agent_uri}"));
    assert_eq!(denied.str("/kind"), "identity");
    assert_eq!(denied.str("/reason"), "disk stolen");
    let again = api
        .post("/v1/denied-identities")
        .json(json!({ "identity": agent_uri }))
        .send()
        .await?;
    assert_eq!(again.status, 409, "{:?}", again.body);
    let serial = api
        .post("/v1/denied-identities")
        .json(json!({ "serial": "4A:0B:FF" }))
        .send()
        .await?;
    assert_eq!(serial.status, 201, "{:?}", serial.body);
    assert_eq!(serial.str("/value"), "4a0bff");

    for (body, field) in [
        (json!({}), "identity"),
        (
            json!({ "serial": "01", "node": "eu/eu1/eu-a1" }),
            "identity",
        ),
        (
            json!({ "identity": "spiffe://elsewhere.example/coordinator/c1" }),
            "identity",
        ),
        (json!({ "identity": "not a uri" }), "identity"),
        (json!({ "serial": "xyz" }), "serial"),
        (json!({ "node": "eu/eu1" }), "node"),
        (json!({ "node": "eu/eu1/eu-a1", "role": "x" }), "role"),
    ] {
        let bad = api
            .post("/v1/denied-identities")
            .json(body.clone())
            .send()
            .await?;
        assert_eq!(bad.status, 400, "{body}: {:?}", bad.body);
        assert!(
            bad.error_message().contains(field),
            "{body}: {:?}",
            bad.body
        );
    }

    let listed = api.get("/v1/denied-identities").send().await?;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(2));
    let nodes = api.get("/v1/nodes").send().await?;
    assert_eq!(nodes.body["items"][0]["denied"], json!(true));
    assert_eq!(nodes.str("/items/0/admission"), "pending_approval");
    assert!(nodes
        .str("/items/0/admission_reason")
        .contains("waiting for an operator"));

    let allowed = api
        .post("/v1/denied-identities:remove")
        .json(json!({ "node": "eu/eu1/eu-a1" }))
        .send()
        .await?;
    assert_eq!(allowed.status, 200, "{:?}", allowed.body);
    let gone = api
        .post("/v1/denied-identities:remove")
        .json(json!({ "node": "eu/eu1/eu-a1" }))
        .send()
        .await?;
    assert_eq!(gone.status, 404, "{:?}", gone.body);

    let approved = api.post("/v1/nodes/eu/eu1/eu-a1:approve").send().await?;
    assert_eq!(approved.status, 200, "{:?}", approved.body);
    assert_eq!(approved.str("/admission"), "approved");
    assert_eq!(approved.body["approved"]["cpu_cores"], json!(16));
    assert_eq!(approved.body["denied"], json!(false));
    let unknown = api.post("/v1/nodes/eu/eu1/nope:approve").send().await?;
    assert_eq!(unknown.status, 404, "{:?}", unknown.body);

    let policy = api
        .post("/v1/clusters/eu/eu1/policy")
        .json(json!({ "auto_approve": true }))
        .send()
        .await?;
    assert_eq!(policy.status, 200, "{:?}", policy.body);
    assert_eq!(policy.body["auto_approve"], json!(true));
    let bad = api
        .post("/v1/clusters/eu/eu1/policy")
        .json(json!({ "auto_approve": "yes" }))
        .send()
        .await?;
    assert_eq!(bad.status, 400, "{:?}", bad.body);
    assert!(
        bad.error_message().contains("auto_approve"),
        "{:?}",
        bad.body
    );

    // Removing the only voter is refused by Raft; the attempt is audited all the same.
    let last = api.delete("/v1/cluster/members/1").send().await?;
    assert!(last.status >= 400, "{:?}", last.body);

    let audit = api.audit_all().await?;
    let actions: Vec<(String, String)> = audit
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or_default().to_owned(),
                r["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for (action, outcome) in [
        ("identity.deny", "success"),
        ("identity.allow", "success"),
        ("node.approve", "success"),
        ("cluster.policy", "success"),
        ("cluster.member.remove", "refused"),
    ] {
        assert!(
            actions.iter().any(|(a, o)| a == action && o == outcome),
            "no {outcome} {action} in {actions:?}"
        );
    }
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn refusals_still_buffered_at_shutdown_reach_the_audit_log() -> anyhow::Result<()> {
    let mut limits = api_common::test_limits();
    limits.denials.window = std::time::Duration::from_secs(3_600);
    let mut api = start_with(Setup {
        limits,
        ..Setup::default()
    })
    .await?;
    let stranger = coordinator::crypto::generate_token(&mut rand::rngs::OsRng).token;
    for _ in 0..3 {
        let refused = api.get("/v1/jobs").token(&stranger).send().await?;
        assert_eq!(refused.status, 401);
    }
    let denied = |api: &api_common::TestApi| {
        api.handle.read(|s| {
            s.audit_records()
                .iter()
                .filter(|r| r.outcome == coordinator::state::AuditOutcome::Denied)
                .map(|r| (r.action.clone(), r.detail.clone()))
                .collect::<Vec<_>>()
        })
    };
    assert!(
        denied(&api).is_empty(),
        "nothing is written before the window ends"
    );
    api.stop_api(std::time::Duration::from_secs(30)).await?;
    let written = denied(&api);
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0].0, "job.list");
    assert!(
        written[0]
            .1
            .starts_with("count=3 rate_limited=0 outcome=unauthenticated"),
        "{written:?}"
    );
    api.handle.shutdown().await;
    Ok(())
}

/// The properties and required properties of a schema of the served document, through `$ref` and `allOf`.
fn schema_properties(
    doc: &Value,
    schema: &Value,
    props: &mut BTreeSet<String>,
    required: &mut BTreeSet<String>,
) {
    if let Some(target) = schema["$ref"].as_str() {
        let name = target.trim_start_matches("#/components/schemas/");
        let resolved = &doc["components"]["schemas"][name];
        assert!(resolved.is_object(), "{target} does not resolve");
        return schema_properties(doc, resolved, props, required);
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        schema_properties(doc, part, props, required);
    }
    props.extend(
        schema["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.clone()),
    );
    required.extend(
        schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned),
    );
}

/// `value` has exactly the properties `schema` lists: none it does not know, none it requires missing; a
/// page's first item too.
fn assert_fits(doc: &Value, schema: &Value, value: &Value, what: &str) {
    let (mut props, mut required) = (BTreeSet::new(), BTreeSet::new());
    schema_properties(doc, schema, &mut props, &mut required);
    let keys: BTreeSet<String> = value
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    assert!(
        keys.is_subset(&props),
        "{what}: the schema does not list {:?}",
        keys.difference(&props).collect::<Vec<_>>()
    );
    assert!(
        required.is_subset(&keys),
        "{what}: required {:?} missing",
        required.difference(&keys).collect::<Vec<_>>()
    );
    let mut items = schema.clone();
    while let Some(target) = items["$ref"].as_str() {
        items = doc["components"]["schemas"][target.trim_start_matches("#/components/schemas/")]
            .clone();
    }
    if let (Some(item_schema), Some(first)) = (
        items.pointer("/properties/items/items"),
        value["items"].get(0),
    ) {
        assert_fits(doc, item_schema, first, &format!("{what} items[0]"));
    }
}

/// What each handler really answers has exactly the properties the served document lists for its route:
/// the route table names the type (`schema::<T>`) separately from the handler, and this ties the two.
#[tokio::test]
async fn live_replies_have_the_properties_their_openapi_schema_lists() -> anyhow::Result<()> {
    let api = start().await?;
    let doc = api.get("/v1/openapi.json").no_token().send().await?.body;
    api.create_project("payments").await?;
    api.register_node("eu-a1", 0, &[], None).await?;
    let (_, _, principal) = api.create_key("payments", "worker", "editor").await?;

    let calls: Vec<(&str, String, Option<Value>)> = vec![
        ("get", "/healthz".into(), None),
        ("get", "/v1/whoami".into(), None),
        (
            "post",
            "/v1/projects".into(),
            Some(json!({ "name": "alpha" })),
        ),
        ("get", "/v1/projects".into(), None),
        ("get", "/v1/projects/payments".into(), None),
        (
            "put",
            "/v1/projects/payments/policy".into(),
            Some(json!({ "max_running_gpus": 4 })),
        ),
        (
            "post",
            "/v1/principals".into(),
            Some(json!({ "name": "robot" })),
        ),
        ("get", "/v1/principals".into(), None),
        (
            "post",
            "/v1/keys".into(),
            Some(json!({ "name": "ci", "role": "viewer" })),
        ),
        ("get", "/v1/keys".into(), None),
        (
            "post",
            "/v1/role-bindings".into(),
            Some(json!({ "principal_id": principal, "role": "viewer" })),
        ),
        ("get", "/v1/role-bindings".into(), None),
        ("get", "/v1/audit".into(), None),
        ("get", "/v1/audit/verify".into(), None),
        (
            "post",
            "/v1/secrets".into(),
            Some(
                json!({ "name": "token", "value": "x", "bindings": [format!("principal:{principal}")] }),
            ),
        ),
        ("get", "/v1/secrets".into(), None),
        ("get", "/v1/secrets/token".into(), None),
        ("post", "/v1/secrets:rewrap".into(), None),
        ("get", "/v1/cluster/status".into(), None),
        ("get", "/v1/cluster/members".into(), None),
        ("get", "/v1/nodes".into(), None),
        ("post", "/v1/nodes/eu/eu1/eu-a1:drain".into(), None),
        (
            "post",
            "/v1/clusters/eu/eu1/policy".into(),
            Some(json!({ "auto_approve": true })),
        ),
        (
            "post",
            "/v1/denied-identities".into(),
            Some(json!({ "serial": "0a:1b" })),
        ),
        ("get", "/v1/denied-identities".into(), None),
        (
            "post",
            "/v1/jobs".into(),
            Some(json!({ "command": "true", "resources": { "cpu": "100m" } })),
        ),
        ("get", "/v1/jobs".into(), None),
        ("get", "/v1/usage".into(), None),
    ];
    for (method, url, body) in calls {
        let call = api.request(method.to_uppercase().parse()?, &url);
        let call = match body {
            Some(b) => call.json(b),
            None => call,
        };
        let answer = call.send().await?;
        assert!(
            answer.status < 300,
            "{method} {url}: {} {:?}",
            answer.status,
            answer.body
        );
        let template = url
            .replace("/payments", "/{project}")
            .replace("/token", "/{name}")
            .replace("/eu/eu1/eu-a1:", "/{region}/{cluster}/{node}:")
            .replace("/clusters/eu/eu1/", "/clusters/{region}/{cluster}/");
        let op = &doc["paths"][&template][method];
        assert!(op.is_object(), "{method} {template} is not in the document");
        let schema =
            &op["responses"][answer.status.to_string()]["content"]["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "{method} {template} has no {} body schema",
            answer.status
        );
        assert_fits(&doc, schema, &answer.body, &format!("{method} {url}"));
    }
    api.stop().await;
    Ok(())
}
