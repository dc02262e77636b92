//! Commands that talk to the admin API: projects, keys, role bindings, secrets, cluster, nodes, whoami.
//!
//! Requests are built from the API's request types and replies read into its reply types
//! (`coordinator::api::dto`); how each reads for people is `tables`.

use std::io::Read;

use coordinator::api::dto::{
    AddMemberRequest, AllowIdentityRequest, ApiKeyView, ClusterOverview, ClusterPolicyRequest,
    ClusterPolicyView, CreateBindingRequest, CreateKeyRequest, CreateProjectRequest, CreatedKey,
    DeniedIdentity, DenyIdentityRequest, MemberStatus, NodeView, ProjectView, PutSecretRequest,
    RewrapResult, RoleBindingView, SecretResource, SetPolicyRequest, WhoAmI,
};
use serde_json::json;

use super::locate::locate;
use super::{get_as, list_all_as, newest_first, post_as, put_as, watching};
use crate::cli::{
    ClientArgs, ClusterCommand, DenyListCommand, KeyCommand, NodeCommand, OutputFormat,
    PolicyCommand, ProjectCommand, RevokeSelector, RoleCommand, SecretCommand,
};
use crate::client::{segment, ApiClient, ClientError};
use crate::output::{self, Row as _};

pub async fn project(cmd: ProjectCommand) -> Result<(), ClientError> {
    match cmd {
        ProjectCommand::Create {
            name,
            description,
            client,
        } => {
            let api = ApiClient::from_args(&client)?;
            let body = CreateProjectRequest {
                name,
                description: Some(description),
            };
            let p: ProjectView = post_as(&api, "/v1/projects", &body).await?;
            created(&client, &p, &p.id);
        }
        ProjectCommand::List(c) => {
            let api = ApiClient::from_args(&c.client)?;
            let items: Vec<ProjectView> = list_all_as(&api, "/v1/projects").await?;
            let items = newest_first(items, |p| p.created_at, c.list);
            output::rows(c.client.output, &items);
        }
        ProjectCommand::Get { name_or_id, client } => {
            let api = ApiClient::from_args(&client)?;
            let p: ProjectView =
                get_as(&api, &format!("/v1/projects/{}", segment(&name_or_id))).await?;
            output::show(client.output, &p);
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
            let p: ProjectView =
                get_as(&api, &format!("/v1/projects/{}", segment(&name_or_id))).await?;
            output::show(client.output, &p.policy);
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
            let p: ProjectView = put_as(
                &api,
                &format!("/v1/projects/{}/policy", segment(&name_or_id)),
                &body,
            )
            .await?;
            output::show(client.output, &p.policy);
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
fn policy_body(a: PolicyArgs) -> Result<SetPolicyRequest, ClientError> {
    let usage =
        |flag: &str, e: coordinator::api::UnitError| ClientError::Usage(format!("{flag}: {e}"));
    let body = SetPolicyRequest {
        max_pending_jobs: a.max_pending_jobs,
        max_running_cpu_millis: a
            .max_running_cpu
            .map(|cpu| coordinator::api::parse_cpu_millis(&cpu))
            .transpose()
            .map_err(|e| usage("--max-running-cpu", e))?,
        max_running_memory_bytes: a
            .max_running_memory
            .map(|mem| coordinator::api::parse_byte_size(&mem))
            .transpose()
            .map_err(|e| usage("--max-running-memory", e))?,
        max_running_gpus: a.max_running_gpus,
        max_spec_bytes: a
            .max_spec_bytes
            .map(|size| coordinator::api::parse_byte_size(&size))
            .transpose()
            .map_err(|e| usage("--max-spec-bytes", e))?,
        network: a.network,
        preemption_ceiling: a.preemption_ceiling,
    };
    let nothing = matches!(
        body,
        SetPolicyRequest {
            max_pending_jobs: None,
            max_running_cpu_millis: None,
            max_running_memory_bytes: None,
            max_running_gpus: None,
            max_spec_bytes: None,
            network: None,
            preemption_ceiling: None,
        }
    );
    if nothing {
        return Err(ClientError::Usage(
            "name at least one policy option to change (see --help)".into(),
        ));
    }
    Ok(body)
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
            let body = CreateKeyRequest {
                name,
                role,
                expires_in_seconds: expires_in,
                no_expiry,
                principal_id: principal,
                roles: (!roles.is_empty()).then_some(roles),
                project_scoped: project_only,
            };
            let made: CreatedKey = post_as(&api, "/v1/keys", &body).await?;
            match client.output {
                OutputFormat::Json => output::json_of(&made),
                OutputFormat::Table => {
                    output::line(&made.token);
                    output::note(&format!(
                        "key {} created; the token above is shown only once",
                        made.key.id
                    ));
                }
            }
        }
        KeyCommand::List(c) => {
            let api = ApiClient::from_args(&c.client)?;
            let items: Vec<ApiKeyView> = list_all_as(&api, "/v1/keys").await?;
            let items = newest_first(items, |k| k.created_at, c.list);
            output::rows(c.client.output, &items);
        }
        KeyCommand::Revoke { id, client } => {
            let api = ApiClient::from_args(&client)?;
            let api = locate(
                api,
                &format!("key {id}"),
                &format!("/v1/keys/{}", segment(&id)),
            )
            .await?;
            let k: ApiKeyView = post_as(
                &api,
                &format!("/v1/keys/{}:revoke", segment(&id)),
                &json!({}),
            )
            .await?;
            match client.output {
                OutputFormat::Json => output::json_of(&k),
                OutputFormat::Table => output::note(&format!("revoked key {id}")),
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
            let body = CreateBindingRequest {
                principal_id: principal,
                role,
                platform,
            };
            let b: RoleBindingView = post_as(&api, "/v1/role-bindings", &body).await?;
            created(&client, &b, &b.id);
        }
        RoleCommand::List(c) => {
            let api = ApiClient::from_args(&c.client)?;
            let items: Vec<RoleBindingView> = list_all_as(&api, "/v1/role-bindings").await?;
            let items = newest_first(items, |b| b.created_at, c.list);
            output::rows(c.client.output, &items);
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
            let body = PutSecretRequest {
                name,
                value,
                bindings: (!bindings.is_empty()).then_some(bindings),
            };
            let s: SecretResource = post_as(&api, "/v1/secrets", &body).await?;
            created(&client, &s, &s.id);
        }
        SecretCommand::List(c) => {
            let api = ApiClient::from_args(&c.client)?;
            let items: Vec<SecretResource> = list_all_as(&api, "/v1/secrets").await?;
            let items = newest_first(items, |s| s.secret.created_at, c.list);
            output::rows(c.client.output, &items);
        }
        SecretCommand::Delete { name, client } => {
            let api = ApiClient::from_args(&client)?;
            let path = format!("/v1/secrets/{}", segment(&name));
            let api = locate(api, &format!("secret {name}"), &path).await?;
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
            let v: RewrapResult = post_as(&api, path, &json!({})).await?;
            output::show(client.output, &v);
        }
    }
    Ok(())
}

pub async fn cluster(cmd: ClusterCommand) -> Result<(), ClientError> {
    match cmd {
        ClusterCommand::Status(c) => {
            let api = ApiClient::from_args(&c.client)?;
            let format = c.client.output;
            watching(
                c.watch,
                "meridian cluster status",
                || get_as::<ClusterOverview>(&api, "/v1/cluster/status"),
                |s| cluster_status(format, s),
            )
            .await?;
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
            let body = AddMemberRequest {
                id,
                name,
                raft_addr,
                admin_addr,
                voter: !learner,
            };
            let m: MemberStatus = post_as(&api, "/v1/cluster/members", &body).await?;
            created(&client, &m, &m.id.to_string());
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
            let v: ClusterPolicyView =
                post_as(&api, &path, &ClusterPolicyRequest { auto_approve }).await?;
            output::show(client.output, &v);
        }
    }
    Ok(())
}

/// `cluster status`: this coordinator's view of the group, its members, and the fleet per site.
fn cluster_status(format: OutputFormat, s: &ClusterOverview) {
    if format == OutputFormat::Json {
        output::json_of(s);
        return;
    }
    let c = &s.status;
    output::fields(&[
        ("name", c.name.clone()),
        ("node_id", c.node_id.to_string()),
        ("state", c.state.clone()),
        ("leader", output::opt_num(c.leader)),
        ("term", c.term.to_string()),
        ("applied_index", c.applied_index.to_string()),
        (
            "apply_version",
            if c.apply_version == c.apply_version_known {
                c.apply_version.to_string()
            } else {
                format!(
                    "{} (this member's build knows {}; it rises once every member does)",
                    c.apply_version, c.apply_version_known
                )
            },
        ),
    ]);
    output::line("");
    output::rows(OutputFormat::Table, &c.members);
    if !s.sites.is_empty() {
        output::line("");
        output::rows(OutputFormat::Table, &s.sites);
    }
}

pub async fn node(cmd: NodeCommand) -> Result<(), ClientError> {
    match cmd {
        NodeCommand::List(c) => {
            let api = ApiClient::from_args(&c.client)?;
            let format = c.client.output;
            let list = c.list;
            watching(
                c.watch,
                "meridian node list",
                || async {
                    let items: Vec<NodeView> = list_all_as(&api, "/v1/nodes").await?;
                    Ok(newest_first(items, |n| n.registered_at, list))
                },
                |items| output::rows(format, items),
            )
            .await?;
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
            let body = DenyIdentityRequest {
                node: Some(key),
                reason: Some(reason.unwrap_or_default()),
                ..DenyIdentityRequest::default()
            };
            let v: DeniedIdentity = post_as(&api, "/v1/denied-identities", &body).await?;
            denied(&client, &v, "denied");
        }
        NodeCommand::Undeny { key, client } => {
            node_parts(&key)?;
            let api = ApiClient::from_args(&client)?;
            let body = AllowIdentityRequest {
                node: Some(key),
                ..AllowIdentityRequest::default()
            };
            let v: DeniedIdentity = post_as(&api, "/v1/denied-identities:remove", &body).await?;
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
            let (identity, serial) = selector_parts(&selector)?;
            let body = DenyIdentityRequest {
                identity,
                serial,
                node: None,
                reason: Some(reason.unwrap_or_default()),
            };
            let api = ApiClient::from_args(&client)?;
            let v: DeniedIdentity = post_as(&api, "/v1/denied-identities", &body).await?;
            denied(&client, &v, "revoked");
        }
        DenyListCommand::Unrevoke { selector, client } => {
            let (identity, serial) = selector_parts(&selector)?;
            let body = AllowIdentityRequest {
                identity,
                serial,
                node: None,
            };
            let api = ApiClient::from_args(&client)?;
            let v: DeniedIdentity = post_as(&api, "/v1/denied-identities:remove", &body).await?;
            denied(&client, &v, "allowed again");
        }
        DenyListCommand::List(c) => {
            let api = ApiClient::from_args(&c.client)?;
            let items: Vec<DeniedIdentity> = list_all_as(&api, "/v1/denied-identities").await?;
            let items = newest_first(items, |d| d.denied_at, c.list);
            output::rows(c.client.output, &items);
        }
    }
    Ok(())
}

/// What `certs revoke` targets, as (identity, serial): a certificate file (its serial), a serial, or an
/// identity.
fn selector_parts(
    selector: &RevokeSelector,
) -> Result<(Option<String>, Option<String>), ClientError> {
    match (&selector.cert, &selector.serial, &selector.identity) {
        (Some(path), None, None) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))?;
            let info = certs::inspect_pem(&pem)
                .map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))?;
            Ok((None, Some(info.serial)))
        }
        (None, Some(serial), None) => Ok((None, Some(serial.clone()))),
        (None, None, Some(identity)) => Ok((Some(identity.clone()), None)),
        _ => Err(ClientError::Usage(
            "name exactly one of CERT_FILE, --serial or --identity".into(),
        )),
    }
}

/// A deny-list entry: a line for people, the entry for scripts.
fn denied(client: &ClientArgs, v: &DeniedIdentity, what: &str) {
    match client.output {
        OutputFormat::Json => output::json_of(v),
        OutputFormat::Table => output::note(&format!("{what}: {} {}", v.kind.as_str(), v.value)),
    }
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
    let n: NodeView = post_as(&api, &path, &json!({})).await?;
    match client.output {
        OutputFormat::Json => output::json_of(&n),
        OutputFormat::Table => output::table(NodeView::HEADERS, &[n.row(output::now_ms())]),
    }
    Ok(())
}

pub async fn whoami(client: ClientArgs) -> Result<(), ClientError> {
    let api = ApiClient::from_args(&client)?;
    let me: WhoAmI = get_as(&api, "/v1/whoami").await?;
    output::show(client.output, &me);
    Ok(())
}

/// A created object: its id for people, the object for scripts.
fn created<T: serde::Serialize>(client: &ClientArgs, v: &T, id: &str) {
    match client.output {
        OutputFormat::Json => output::json_of(v),
        OutputFormat::Table => output::line(id),
    }
}

fn done(client: &ClientArgs, message: &str) {
    match client.output {
        OutputFormat::Json => output::json(&json!({ "ok": true })),
        OutputFormat::Table => output::note(message),
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
            serde_json::to_value(&body).expect("a request body"),
            json!({
                "max_pending_jobs": 5,
                "max_running_cpu_millis": 2500,
                "max_running_memory_bytes": 1u64 << 30,
                "max_running_gpus": null,
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
