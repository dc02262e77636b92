//! Commands that talk to the admin API: projects, keys, role bindings, secrets, cluster, nodes, whoami.

use std::io::Read;

use serde_json::{json, Value};

use crate::cli::{
    ClientArgs, ClusterCommand, DenyListCommand, KeyCommand, NodeCommand, OutputFormat,
    PolicyCommand, ProjectCommand, RevokeSelector, RoleCommand, SecretCommand,
};
use crate::client::{segment, ApiClient, ClientError};
use crate::output;

pub async fn project(cmd: ProjectCommand) -> Result<(), ClientError> {
    match cmd {
        ProjectCommand::Create {
            name,
            description,
            client,
        } => {
            let api = ApiClient::from_args(&client)?;
            let p = api
                .post(
                    "/v1/projects",
                    json!({ "name": name, "description": description }),
                )
                .await?;
            created(&client, &p);
        }
        ProjectCommand::List(c) => {
            let api = ApiClient::from_args(&c.client)?;
            let items = api.list_all("/v1/projects").await?;
            output::list(
                c.client.output,
                &items,
                &["id", "name", "description", "created_at"],
            );
        }
        ProjectCommand::Get { name_or_id, client } => {
            let api = ApiClient::from_args(&client)?;
            let p = api
                .get(&format!("/v1/projects/{}", segment(&name_or_id)))
                .await?;
            output::object(client.output, &p);
        }
        ProjectCommand::Delete { name_or_id, client } => {
            let api = ApiClient::from_args(&client)?;
            api.delete(&format!("/v1/projects/{}", segment(&name_or_id)))
                .await?;
            done(&client, &format!("deleted project {name_or_id}"));
        }
        ProjectCommand::Policy(cmd) => policy(cmd).await?,
    }
    Ok(())
}

async fn policy(cmd: PolicyCommand) -> Result<(), ClientError> {
    match cmd {
        PolicyCommand::Get { name_or_id, client } => {
            let api = ApiClient::from_args(&client)?;
            let p = api
                .get(&format!("/v1/projects/{}", segment(&name_or_id)))
                .await?;
            output::object(client.output, p.get("policy").unwrap_or(&Value::Null));
        }
        PolicyCommand::Set {
            name_or_id,
            max_pending_jobs,
            max_running_cpu,
            max_running_memory,
            max_running_gpus,
            max_spec_bytes,
            network,
            preemption_ceiling,
            client,
        } => {
            let body = policy_body(PolicyArgs {
                max_pending_jobs,
                max_running_cpu,
                max_running_memory,
                max_running_gpus,
                max_spec_bytes,
                network,
                preemption_ceiling,
            })?;
            let api = ApiClient::from_args(&client)?;
            let p = api
                .put(
                    &format!("/v1/projects/{}/policy", segment(&name_or_id)),
                    body,
                )
                .await?;
            output::object(client.output, p.get("policy").unwrap_or(&Value::Null));
        }
    }
    Ok(())
}

/// The options of `meridian project policy set`, as typed.
struct PolicyArgs {
    max_pending_jobs: Option<u64>,
    max_running_cpu: Option<String>,
    max_running_memory: Option<String>,
    max_running_gpus: Option<u64>,
    max_spec_bytes: Option<String>,
    network: Option<String>,
    preemption_ceiling: Option<i64>,
}

/// The body of `PUT /v1/projects/{project}/policy`: only the fields given, sizes and cores parsed.
fn policy_body(a: PolicyArgs) -> Result<Value, ClientError> {
    let usage =
        |flag: &str, e: coordinator::api::UnitError| ClientError::Usage(format!("{flag}: {e}"));
    let mut body = serde_json::Map::new();
    if let Some(n) = a.max_pending_jobs {
        body.insert("max_pending_jobs".into(), json!(n));
    }
    if let Some(cpu) = a.max_running_cpu {
        let millis =
            coordinator::api::parse_cpu_millis(&cpu).map_err(|e| usage("--max-running-cpu", e))?;
        body.insert("max_running_cpu_millis".into(), json!(millis));
    }
    if let Some(mem) = a.max_running_memory {
        let bytes = coordinator::api::parse_byte_size(&mem)
            .map_err(|e| usage("--max-running-memory", e))?;
        body.insert("max_running_memory_bytes".into(), json!(bytes));
    }
    if let Some(n) = a.max_running_gpus {
        body.insert("max_running_gpus".into(), json!(n));
    }
    if let Some(size) = a.max_spec_bytes {
        let bytes =
            coordinator::api::parse_byte_size(&size).map_err(|e| usage("--max-spec-bytes", e))?;
        body.insert("max_spec_bytes".into(), json!(bytes));
    }
    if let Some(network) = a.network {
        body.insert("network".into(), json!(network));
    }
    if let Some(c) = a.preemption_ceiling {
        body.insert("preemption_ceiling".into(), json!(c));
    }
    if body.is_empty() {
        return Err(ClientError::Usage(
            "name at least one policy option to change (see --help)".into(),
        ));
    }
    Ok(Value::Object(body))
}

pub async fn key(cmd: KeyCommand) -> Result<(), ClientError> {
    match cmd {
        KeyCommand::Create {
            name,
            role,
            principal,
            expires_in,
            no_expiry,
            roles,
            project_only,
            client,
        } => {
            let api = ApiClient::from_args(&client)?;
            let role = match (role, &principal) {
                (Some(role), _) => Some(role),
                (None, None) => Some("viewer".to_owned()),
                (None, Some(_)) => None,
            };
            let mut body = json!({ "name": name, "role": role, "principal_id": principal });
            if let Some(secs) = expires_in {
                body["expires_in_seconds"] = json!(secs);
            }
            if no_expiry {
                body["no_expiry"] = json!(true);
            }
            if !roles.is_empty() {
                body["roles"] = json!(roles);
            }
            if project_only {
                body["project_scoped"] = json!(true);
            }
            let created_key = api.post("/v1/keys", body).await?;
            match client.output {
                OutputFormat::Json => output::json(&created_key),
                OutputFormat::Table => {
                    let token = created_key
                        .get("token")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let id = created_key
                        .pointer("/key/id")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    println!("{token}");
                    eprintln!("key {id} created; the token above is shown only once");
                }
            }
        }
        KeyCommand::List(c) => {
            let api = ApiClient::from_args(&c.client)?;
            let items = api.list_all("/v1/keys").await?;
            output::list(
                c.client.output,
                &items,
                &[
                    "id",
                    "name",
                    "prefix",
                    "last4",
                    "principal_id",
                    "expires_at",
                    "revoked_at",
                ],
            );
        }
        KeyCommand::Revoke { id, client } => {
            let api = ApiClient::from_args(&client)?;
            let v = api
                .post(&format!("/v1/keys/{}:revoke", segment(&id)), json!({}))
                .await?;
            match client.output {
                OutputFormat::Json => output::json(&v),
                OutputFormat::Table => eprintln!("revoked key {id}"),
            }
        }
    }
    Ok(())
}

pub async fn role(cmd: RoleCommand) -> Result<(), ClientError> {
    match cmd {
        RoleCommand::Bind {
            principal,
            role,
            platform,
            client,
        } => {
            let api = ApiClient::from_args(&client)?;
            let body = json!({ "principal_id": principal, "role": role, "platform": platform });
            let b = api.post("/v1/role-bindings", body).await?;
            created(&client, &b);
        }
        RoleCommand::List(c) => {
            let api = ApiClient::from_args(&c.client)?;
            let items = api.list_all("/v1/role-bindings").await?;
            output::list(
                c.client.output,
                &items,
                &["id", "principal_id", "role", "scope"],
            );
        }
        RoleCommand::Unbind { id, client } => {
            let api = ApiClient::from_args(&client)?;
            api.delete(&format!("/v1/role-bindings/{}", segment(&id)))
                .await?;
            done(&client, &format!("removed role binding {id}"));
        }
    }
    Ok(())
}

pub async fn secret(cmd: SecretCommand) -> Result<(), ClientError> {
    match cmd {
        SecretCommand::Put {
            name,
            value,
            bindings,
            client,
        } => {
            let value = match value {
                Some(v) => v,
                None => {
                    let mut buf = String::new();
                    std::io::stdin().read_to_string(&mut buf).map_err(|e| {
                        ClientError::Usage(format!("reading the secret from stdin: {e}"))
                    })?;
                    buf
                }
            };
            let api = ApiClient::from_args(&client)?;
            // No --bind keeps the secret's current bindings.
            let bindings = (!bindings.is_empty()).then_some(bindings);
            let s = api
                .post(
                    "/v1/secrets",
                    json!({ "name": name, "value": value, "bindings": bindings }),
                )
                .await?;
            created(&client, &s);
        }
        SecretCommand::List(c) => {
            let api = ApiClient::from_args(&c.client)?;
            let items = api.list_all("/v1/secrets").await?;
            output::list(
                c.client.output,
                &items,
                &["name", "latest_version", "bindings", "updated_at"],
            );
        }
        SecretCommand::Delete { name, client } => {
            let api = ApiClient::from_args(&client)?;
            api.delete(&format!("/v1/secrets/{}", segment(&name)))
                .await?;
            done(&client, &format!("deleted secret {name}"));
        }
        SecretCommand::Rewrap {
            new_data_keys,
            client,
        } => {
            let api = ApiClient::from_args(&client)?;
            let path = if new_data_keys {
                "/v1/secrets:rewrap?new_data_keys=true"
            } else {
                "/v1/secrets:rewrap"
            };
            let v = api.post(path, json!({})).await?;
            output::object(client.output, &v);
        }
    }
    Ok(())
}

pub async fn cluster(cmd: ClusterCommand) -> Result<(), ClientError> {
    match cmd {
        ClusterCommand::Status(c) => {
            let api = ApiClient::from_args(&c.client)?;
            let s = api.get("/v1/cluster/status").await?;
            match c.client.output {
                OutputFormat::Json => output::json(&s),
                OutputFormat::Table => {
                    for key in [
                        "name",
                        "node_id",
                        "state",
                        "leader",
                        "term",
                        "applied_index",
                    ] {
                        println!(
                            "{key:14} {}",
                            output::cell(s.get(key).unwrap_or(&Value::Null))
                        );
                    }
                    println!();
                    let members = s
                        .get("members")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    output::list(
                        OutputFormat::Table,
                        &members,
                        &["id", "name", "voter", "raft_addr", "admin_addr"],
                    );
                    let sites = s
                        .get("sites")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    if !sites.is_empty() {
                        println!();
                        output::list(
                            OutputFormat::Table,
                            &sites,
                            &[
                                "region",
                                "cluster",
                                "nodes",
                                "ready",
                                "unreachable",
                                "lost",
                                "draining",
                                "gpus",
                                "idle_gpus",
                                "active_jobs",
                            ],
                        );
                    }
                }
            }
        }
        ClusterCommand::Add {
            id,
            name,
            raft_addr,
            admin_addr,
            learner,
            client,
        } => {
            let api = ApiClient::from_args(&client)?;
            let body = json!({ "id": id, "name": name, "raft_addr": raft_addr, "admin_addr": admin_addr,
                               "voter": !learner });
            let v = api.post("/v1/cluster/members", body).await?;
            created(&client, &v);
        }
        ClusterCommand::Remove { id, client } => {
            let api = ApiClient::from_args(&client)?;
            api.delete(&format!("/v1/cluster/members/{id}")).await?;
            done(&client, &format!("removed member {id}"));
        }
        ClusterCommand::Policy {
            cluster,
            auto_approve,
            client,
        } => {
            let parts: Vec<&str> = cluster.split('/').collect();
            let [region, name] = parts.as_slice() else {
                return Err(ClientError::Usage(format!(
                    "cluster {cluster:?} must be REGION/CLUSTER"
                )));
            };
            let api = ApiClient::from_args(&client)?;
            let path = format!("/v1/clusters/{}/{}/policy", segment(region), segment(name));
            let v = api
                .post(&path, json!({ "auto_approve": auto_approve }))
                .await?;
            output::object(client.output, &v);
        }
    }
    Ok(())
}

pub async fn node(cmd: NodeCommand) -> Result<(), ClientError> {
    match cmd {
        NodeCommand::List(c) => {
            let api = ApiClient::from_args(&c.client)?;
            let items = api.list_all("/v1/nodes").await?;
            match c.client.output {
                OutputFormat::Json => output::json(&Value::Array(items)),
                OutputFormat::Table => {
                    let rows: Vec<Vec<String>> = items.iter().map(node_row).collect();
                    output::table(&node_headers(), &rows);
                }
            }
        }
        NodeCommand::Drain { key, client } => node_verb(&key, "drain", &client).await?,
        NodeCommand::Undrain { key, client } => node_verb(&key, "undrain", &client).await?,
        NodeCommand::Approve { key, client } => node_verb(&key, "approve", &client).await?,
        NodeCommand::Deny {
            key,
            reason,
            client,
        } => {
            node_parts(&key)?;
            let api = ApiClient::from_args(&client)?;
            let body = json!({ "node": key, "reason": reason.unwrap_or_default() });
            let v = api.post("/v1/denied-identities", body).await?;
            denied(&client, &v, "denied");
        }
        NodeCommand::Undeny { key, client } => {
            node_parts(&key)?;
            let api = ApiClient::from_args(&client)?;
            let v = api
                .post("/v1/denied-identities:remove", json!({ "node": key }))
                .await?;
            denied(&client, &v, "allowed again");
        }
    }
    Ok(())
}

/// `meridian certs revoke` / `unrevoke` / `deny-list`: the mesh deny-list through the admin API.
pub async fn deny_list(cmd: DenyListCommand) -> Result<(), ClientError> {
    match cmd {
        DenyListCommand::Revoke {
            selector,
            reason,
            client,
        } => {
            let mut body = selector_body(&selector)?;
            body["reason"] = json!(reason.unwrap_or_default());
            let api = ApiClient::from_args(&client)?;
            let v = api.post("/v1/denied-identities", body).await?;
            denied(&client, &v, "revoked");
        }
        DenyListCommand::Unrevoke { selector, client } => {
            let body = selector_body(&selector)?;
            let api = ApiClient::from_args(&client)?;
            let v = api.post("/v1/denied-identities:remove", body).await?;
            denied(&client, &v, "allowed again");
        }
        DenyListCommand::List(c) => {
            let api = ApiClient::from_args(&c.client)?;
            let items = api.list_all("/v1/denied-identities").await?;
            output::list(
                c.client.output,
                &items,
                &["kind", "value", "reason", "denied_by", "denied_at"],
            );
        }
    }
    Ok(())
}

/// The request body naming what `certs revoke` targets: a certificate file (its serial), a serial, or an
/// identity.
fn selector_body(selector: &RevokeSelector) -> Result<Value, ClientError> {
    match (&selector.cert, &selector.serial, &selector.identity) {
        (Some(path), None, None) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))?;
            let info = certs::inspect_pem(&pem)
                .map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))?;
            Ok(json!({ "serial": info.serial }))
        }
        (None, Some(serial), None) => Ok(json!({ "serial": serial })),
        (None, None, Some(identity)) => Ok(json!({ "identity": identity })),
        _ => Err(ClientError::Usage(
            "name exactly one of CERT_FILE, --serial or --identity".into(),
        )),
    }
}

/// A deny-list entry: a line for people, the entry for scripts.
fn denied(client: &ClientArgs, v: &Value, what: &str) {
    match client.output {
        OutputFormat::Json => output::json(v),
        OutputFormat::Table => eprintln!(
            "{what}: {} {}",
            v.get("kind").and_then(Value::as_str).unwrap_or("?"),
            v.get("value").and_then(Value::as_str).unwrap_or("?")
        ),
    }
}

/// The columns of `node list` (and of the node `node drain` prints).
fn node_headers() -> Vec<String> {
    [
        "NODE",
        "HEALTH",
        "ADMISSION",
        "CPUS",
        "MEMORY",
        "GPUS",
        "IDLE-GPUS",
        "LABELS",
        "LIMITS",
        "EPOCH",
        "REASON",
    ]
    .iter()
    .map(|h| (*h).to_owned())
    .collect()
}

/// The three parts of a node key, or a usage error.
fn node_parts(key: &str) -> Result<[&str; 3], ClientError> {
    let parts: Vec<&str> = key.split('/').collect();
    match parts.as_slice() {
        [region, cluster, node] if ![region, cluster, node].iter().any(|p| p.is_empty()) => {
            Ok([region, cluster, node])
        }
        _ => Err(ClientError::Usage(format!(
            "node key {key:?} must be REGION/CLUSTER/NODE, as `meridian node list` shows it"
        ))),
    }
}

/// `region/cluster/node` → the API path of its `:drain`, `:undrain` or `:approve` method.
fn node_path(key: &str, verb: &str) -> Result<String, ClientError> {
    let [region, cluster, node] = node_parts(key)?;
    Ok(format!(
        "/v1/nodes/{}/{}/{}:{verb}",
        segment(region),
        segment(cluster),
        segment(node)
    ))
}

async fn node_verb(key: &str, verb: &str, client: &ClientArgs) -> Result<(), ClientError> {
    let path = node_path(key, verb)?;
    let api = ApiClient::from_args(client)?;
    let n = api.post(&path, json!({})).await?;
    match client.output {
        OutputFormat::Json => output::json(&n),
        OutputFormat::Table => output::table(&node_headers(), &[node_row(&n)]),
    }
    Ok(())
}

/// A node's row in `node list`: GPUs as count and models, idle allocated GPUs flagged by count, a drained
/// node's health as `ready,draining`, its admission (`denied` when its agent identity is), and why it is
/// pending or quarantined.
fn node_row(n: &Value) -> Vec<String> {
    let text = |key: &str| match n.get(key) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(v @ Value::Number(_)) => v.to_string(),
        _ => "-".to_owned(),
    };
    let gpus = n
        .get("gpus")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut models: Vec<String> = Vec::new();
    for g in &gpus {
        let model = g.get("model").and_then(Value::as_str).unwrap_or("?");
        if !models.iter().any(|m| m == model) {
            models.push(model.to_owned());
        }
    }
    let count = n.get("gpu_count").and_then(Value::as_u64).unwrap_or(0);
    let gpu_text = match (count, models.is_empty()) {
        (0, _) => "-".to_owned(),
        (c, true) => c.to_string(),
        (c, false) => format!("{c} × {}", models.join("/")),
    };
    let idle = n
        .get("idle_gpus")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let labels = n
        .get("labels")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
        .map_or_else(
            || "-".to_owned(),
            |m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            },
        );
    let mut health = text("health");
    if n.get("draining").and_then(Value::as_bool) == Some(true) {
        health.push_str(",draining");
    }
    let admission = if n.get("denied").and_then(Value::as_bool) == Some(true) {
        "denied".to_owned()
    } else {
        text("admission")
    };
    vec![
        text("key"),
        health,
        admission,
        text("cpu_cores"),
        output::bytes(n.get("memory_bytes").unwrap_or(&Value::Null)),
        gpu_text,
        if idle == 0 {
            "-".to_owned()
        } else {
            format!("{idle} idle")
        },
        labels,
        text("limit_mode"),
        text("lease_epoch"),
        text("admission_reason"),
    ]
}

pub async fn whoami(client: ClientArgs) -> Result<(), ClientError> {
    let api = ApiClient::from_args(&client)?;
    let v = api.get("/v1/whoami").await?;
    output::object(client.output, &v);
    Ok(())
}

/// A created object: its id for people, the object for scripts.
fn created(client: &ClientArgs, v: &Value) {
    match client.output {
        OutputFormat::Json => output::json(v),
        OutputFormat::Table => println!(
            "{}",
            v.get("id")
                .map(output::cell)
                .unwrap_or_else(|| output::cell(v))
        ),
    }
}

fn done(client: &ClientArgs, message: &str) {
    match client.output {
        OutputFormat::Json => output::json(&json!({ "ok": true })),
        OutputFormat::Table => eprintln!("{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_paths_take_a_three_part_key() {
        assert_eq!(
            node_path("eu-west/gpu-a/node-17", "drain").ok().as_deref(),
            Some("/v1/nodes/eu-west/gpu-a/node-17:drain")
        );
        assert_eq!(
            node_path("eu/c1/n 1", "undrain").ok().as_deref(),
            Some("/v1/nodes/eu/c1/n%201:undrain")
        );
        assert_eq!(
            node_path("eu/c1/n1", "approve").ok().as_deref(),
            Some("/v1/nodes/eu/c1/n1:approve")
        );
        for bad in ["eu/c1", "eu/c1/n1/x", "eu//n1", "", "/c1/n1"] {
            assert!(
                matches!(node_path(bad, "drain"), Err(ClientError::Usage(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_quarantined_or_denied_node_shows_why() {
        let node = json!({ "key": "eu/c1/n1", "health": "ready", "admission": "quarantined",
                           "admission_reason": "64 CPU cores reported, 8 approved", "denied": false });
        let row = node_row(&node);
        assert_eq!(row[2], "quarantined");
        assert_eq!(
            row.last().map(String::as_str),
            Some("64 CPU cores reported, 8 approved")
        );
        let node = json!({ "key": "eu/c1/n1", "health": "ready", "admission": "approved", "denied": true });
        assert_eq!(node_row(&node)[2], "denied");
        assert_eq!(node_row(&node).last().map(String::as_str), Some("-"));
    }

    #[test]
    fn a_draining_node_reads_ready_draining() {
        let node =
            json!({ "key": "eu/c1/n1", "health": "ready", "draining": true, "gpu_count": 0 });
        let row = node_row(&node);
        assert_eq!(row[0], "eu/c1/n1");
        assert_eq!(row[1], "ready,draining");
        let node = json!({ "key": "eu/c1/n1", "health": "lost", "draining": false });
        assert_eq!(node_row(&node)[1], "lost");
        assert_eq!(node_row(&node).len(), node_headers().len());
    }

    fn no_policy_options() -> PolicyArgs {
        PolicyArgs {
            max_pending_jobs: None,
            max_running_cpu: None,
            max_running_memory: None,
            max_running_gpus: None,
            max_spec_bytes: None,
            network: None,
            preemption_ceiling: None,
        }
    }

    #[test]
    fn policy_options_become_a_body_with_units_parsed() {
        let body = policy_body(PolicyArgs {
            max_pending_jobs: Some(5),
            max_running_cpu: Some("2.5".into()),
            max_running_memory: Some("1Gi".into()),
            max_spec_bytes: Some("4Ki".into()),
            network: Some("none".into()),
            preemption_ceiling: Some(10),
            ..no_policy_options()
        })
        .expect("valid options");
        assert_eq!(
            body,
            json!({
                "max_pending_jobs": 5,
                "max_running_cpu_millis": 2500,
                "max_running_memory_bytes": 1u64 << 30,
                "max_spec_bytes": 4096,
                "network": "none",
                "preemption_ceiling": 10,
            })
        );
        assert!(matches!(
            policy_body(no_policy_options()),
            Err(ClientError::Usage(_))
        ));
        let bad = policy_body(PolicyArgs {
            max_running_memory: Some("lots".into()),
            ..no_policy_options()
        });
        assert!(
            matches!(&bad, Err(ClientError::Usage(m)) if m.starts_with("--max-running-memory")),
            "{bad:?}"
        );
    }
}
