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
            expires_in_days,
            client,
        } => {
            let api = ApiClient::from_args(&client)?;
            let mut body = json!({ "name": name, "role": role });
            if let Some(days) = expires_in_days {
                body["expires_in_seconds"] = json!(days * 86_400);
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
        SecretCommand::Rewrap(c) => {
            let api = ApiClient::from_args(&c.client)?;
            let v = api.post("/v1/secrets:rewrap", json!({})).await?;
            output::object(c.client.output, &v);
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
            output::list(
                c.client.output,
                &items,
                &[
                    "key",
                    "health",
                    "cpu_cores",
                    "memory_bytes",
                    "gpu_count",
                    "lease_epoch",
                ],
            );
        }
    }
    Ok(())
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
