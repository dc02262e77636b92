//! Commands that talk to the admin API: projects, keys, role bindings, secrets, cluster, nodes, whoami.

use std::io::Read;

use serde_json::{json, Value};

use crate::cli::{
    ClientArgs, ClusterCommand, KeyCommand, NodeCommand, OutputFormat, ProjectCommand, RoleCommand,
    SecretCommand,
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
    }
    Ok(())
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
        NodeCommand::Drain { key, client } => set_draining(&key, true, &client).await?,
        NodeCommand::Undrain { key, client } => set_draining(&key, false, &client).await?,
    }
    Ok(())
}

/// The columns of `node list` (and of the node `node drain` prints).
fn node_headers() -> Vec<String> {
    [
        "NODE",
        "HEALTH",
        "CPUS",
        "MEMORY",
        "GPUS",
        "IDLE-GPUS",
        "LABELS",
        "LIMITS",
        "EPOCH",
    ]
    .iter()
    .map(|h| (*h).to_owned())
    .collect()
}

/// `region/cluster/node` → the API path of its `:drain` or `:undrain` method.
fn drain_path(key: &str, draining: bool) -> Result<String, ClientError> {
    let parts: Vec<&str> = key.split('/').collect();
    let [region, cluster, node] = parts.as_slice() else {
        return Err(ClientError::Usage(format!(
            "node key {key:?} must be REGION/CLUSTER/NODE, as `meridian node list` shows it"
        )));
    };
    if [region, cluster, node].iter().any(|p| p.is_empty()) {
        return Err(ClientError::Usage(format!(
            "node key {key:?} must be REGION/CLUSTER/NODE, as `meridian node list` shows it"
        )));
    }
    let verb = if draining { "drain" } else { "undrain" };
    Ok(format!(
        "/v1/nodes/{}/{}/{}:{verb}",
        segment(region),
        segment(cluster),
        segment(node)
    ))
}

async fn set_draining(key: &str, draining: bool, client: &ClientArgs) -> Result<(), ClientError> {
    let path = drain_path(key, draining)?;
    let api = ApiClient::from_args(client)?;
    let n = api.post(&path, json!({})).await?;
    match client.output {
        OutputFormat::Json => output::json(&n),
        OutputFormat::Table => output::table(&node_headers(), &[node_row(&n)]),
    }
    Ok(())
}

/// A node's row in `node list`: GPUs as count and models, idle allocated GPUs flagged by count, a drained
/// node's health as `ready,draining`.
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
    vec![
        text("key"),
        health,
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
    fn drain_paths_take_a_three_part_key() {
        assert_eq!(
            drain_path("eu-west/gpu-a/node-17", true).ok().as_deref(),
            Some("/v1/nodes/eu-west/gpu-a/node-17:drain")
        );
        assert_eq!(
            drain_path("eu/c1/n 1", false).ok().as_deref(),
            Some("/v1/nodes/eu/c1/n%201:undrain")
        );
        for bad in ["eu/c1", "eu/c1/n1/x", "eu//n1", "", "/c1/n1"] {
            assert!(
                matches!(drain_path(bad, true), Err(ClientError::Usage(_))),
                "{bad:?}"
            );
        }
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
}
