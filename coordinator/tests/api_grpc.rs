//! The admin API's gRPC face against a real single-node coordinator: the same authentication, project
//! selection, policies and errors as REST, on the same listener (plain HTTP/2 on loopback, and TLS).

mod api_common;

use std::sync::Arc;

use anyhow::Context;
use protocol::pb;
use serde_json::json;
use tonic::{Code, Request};

use api_common::{start, start_with, Setup};

fn authed<T>(message: T, token: &str, project: Option<&str>) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    if let Some(p) = project {
        req.metadata_mut().insert("x-meridian-project", p.parse()?);
    }
    Ok(req)
}

async fn channel(addr: std::net::SocketAddr) -> anyhow::Result<tonic::transport::Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?,
    )
}

#[tokio::test]
async fn grpc_calls_are_authenticated_and_authorized_like_rest() -> anyhow::Result<()> {
    let api = start().await?;
    let ch = channel(api.addr).await?;
    let mut projects = pb::project_service_client::ProjectServiceClient::new(ch.clone());
    let mut keys = pb::key_service_client::KeyServiceClient::new(ch.clone());
    let mut principals = pb::principal_service_client::PrincipalServiceClient::new(ch.clone());
    let admin = api.admin_token.clone();

    // Without a token, or with a bad one: unauthenticated.
    let err = projects
        .list_projects(pb::ListProjectsRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = projects
        .list_projects(authed(pb::ListProjectsRequest::default(), "mrd_x_y", None)?)
        .await
        .expect_err("bad");
    assert_eq!(err.code(), Code::Unauthenticated);

    // With the admin token.
    let listed = projects
        .list_projects(authed(pb::ListProjectsRequest::default(), &admin, None)?)
        .await?
        .into_inner();
    assert!(listed.items.iter().any(|p| p.name == "default"));
    let one = projects
        .create_project(authed(
            pb::CreateProjectRequest {
                name: "grpc-one".into(),
                description: "g".into(),
            },
            &admin,
            None,
        )?)
        .await?
        .into_inner();
    assert!(one.id.starts_with("prj_"));
    let dup = projects
        .create_project(authed(
            pb::CreateProjectRequest {
                name: "grpc-one".into(),
                description: String::new(),
            },
            &admin,
            None,
        )?)
        .await
        .expect_err("duplicate");
    assert_eq!(dup.code(), Code::AlreadyExists);
    let bad = projects
        .create_project(authed(
            pb::CreateProjectRequest {
                name: "No".into(),
                description: String::new(),
            },
            &admin,
            None,
        )?)
        .await
        .expect_err("invalid name");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(bad.message(), "name: must match [a-z0-9][a-z0-9-]{0,62}");

    // The project is the same object REST sees.
    let rest = api.get("/v1/projects/grpc-one").send().await?;
    assert_eq!(rest.str("/id"), one.id);

    // Keys: created over gRPC, usable over both.
    let created = keys
        .create_key(authed(
            pb::CreateKeyRequest {
                name: "viewer".into(),
                role: "viewer".into(),
                ..Default::default()
            },
            &admin,
            Some("grpc-one"),
        )?)
        .await?
        .into_inner();
    let viewer = created.token.clone();
    let key = created.key.context("key")?;
    assert_eq!(key.project_id, one.id);
    let me = principals
        .who_am_i(authed(pb::WhoAmIRequest {}, &viewer, None)?)
        .await?
        .into_inner();
    assert_eq!(me.project.context("project")?.name, "grpc-one");
    assert_eq!(
        api.get("/v1/whoami").token(&viewer).send().await?.status,
        200
    );
    let listed = keys
        .list_keys(authed(pb::ListKeysRequest::default(), &viewer, None)?)
        .await?
        .into_inner();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].last4, viewer[viewer.len() - 4..]);

    // Policies: a viewer cannot create keys.
    let denied = keys
        .create_key(authed(
            pb::CreateKeyRequest {
                name: "more".into(),
                role: "viewer".into(),
                ..Default::default()
            },
            &viewer,
            None,
        )?)
        .await
        .expect_err("viewer");
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Tenancy: another project's objects answer like missing ones.
    api.create_project("grpc-two").await?;
    let (_, other_key, _) = api.create_key("grpc-two", "worker", "editor").await?;
    let hidden = keys
        .get_key(authed(
            pb::GetKeyRequest {
                id: other_key.clone(),
            },
            &viewer,
            None,
        )?)
        .await
        .expect_err("hidden");
    assert_eq!(hidden.code(), Code::NotFound);
    let missing = keys
        .get_key(authed(
            pb::GetKeyRequest { id: "nokey".into() },
            &viewer,
            None,
        )?)
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(
        hidden.message().replace(&other_key, "<id>"),
        missing.message().replace("nokey", "<id>")
    );
    let other = keys
        .list_keys(authed(
            pb::ListKeysRequest::default(),
            &viewer,
            Some("grpc-two"),
        )?)
        .await
        .expect_err("other");
    assert_eq!(other.code(), Code::NotFound);
    api.audit_until("the denied key.get", |records| {
        records.iter().any(|r| {
            r["outcome"] == "denied" && r["action"] == "key.get" && r["target"] == json!(other_key)
        })
    })
    .await?;

    // Revocation over gRPC stops the key over both faces.
    let revoked = keys
        .revoke_key(authed(
            pb::RevokeKeyRequest { id: key.id.clone() },
            &admin,
            Some("grpc-one"),
        )?)
        .await?;
    assert!(revoked.into_inner().revoked_at.is_some());
    let after = principals
        .who_am_i(authed(pb::WhoAmIRequest {}, &viewer, None)?)
        .await
        .expect_err("revoked");
    assert_eq!(after.code(), Code::Unauthenticated);

    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn grpc_secrets_audit_cluster_and_unknown_methods() -> anyhow::Result<()> {
    let api = start().await?;
    let ch = channel(api.addr).await?;
    let admin = api.admin_token.clone();
    let mut secrets = pb::secret_service_client::SecretServiceClient::new(ch.clone());
    let mut audit = pb::audit_service_client::AuditServiceClient::new(ch.clone());
    let mut cluster = pb::cluster_service_client::ClusterServiceClient::new(ch.clone());

    let (_, _, worker) = api.create_key("default", "worker", "editor").await?;
    let binding = format!("principal:{worker}/job:migrate-*");
    let put = pb::PutSecretRequest {
        name: "db-password".into(),
        value: "hunter2-but-longer".into(),
        bindings: Some(pb::SecretBindings {
            items: vec![binding.clone()],
        }),
    };
    let secret = secrets
        .put_secret(authed(put, &admin, None)?)
        .await?
        .into_inner();
    assert_eq!(secret.latest_version, 1);
    assert_eq!(secret.bindings, vec![binding]);
    let rest = api.get("/v1/secrets/db-password").send().await?;
    assert_eq!(rest.body["latest_version"], json!(1));
    assert!(!rest.body.to_string().contains("hunter2"));
    let listed = secrets
        .list_secrets(authed(pb::ListSecretsRequest::default(), &admin, None)?)
        .await?
        .into_inner();
    assert_eq!(listed.items.len(), 1);

    let page = audit
        .list_audit(authed(
            pb::ListAuditRequest {
                after_seq: 0,
                page_size: 1000,
            },
            &admin,
            None,
        )?)
        .await?;
    let records: Vec<coordinator::state::AuditRecord> = page
        .into_inner()
        .items
        .iter()
        .map(|r| serde_json::from_str(&r.json))
        .collect::<Result<_, _>>()?;
    assert!(records.iter().any(|r| r.action == "secret.put"));
    coordinator::state::verify_chain(&records)?;
    let verified = audit
        .verify_audit(authed(pb::VerifyAuditRequest {}, &admin, None)?)
        .await?
        .into_inner();
    assert!(verified.ok);
    assert_eq!(verified.records, records.len() as u64);

    let status = cluster
        .get_cluster_status(authed(pb::GetClusterStatusRequest {}, &admin, None)?)
        .await?
        .into_inner();
    assert_eq!(status.leader, Some(1));
    assert_eq!(status.members.len(), 1);
    let no_token = cluster
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .expect_err("no token");
    assert_eq!(no_token.code(), Code::Unauthenticated);

    // A method outside the table is refused before any service sees it.
    let mut raw = tonic::client::Grpc::new(ch.clone());
    raw.ready().await?;
    let codec =
        tonic_prost::ProstCodec::<pb::GetClusterStatusRequest, pb::ClusterStatusResponse>::default(
        );
    let path = http::uri::PathAndQuery::from_static("/meridian.v1.ClusterService/Shutdown");
    let unknown = raw
        .unary(
            authed(pb::GetClusterStatusRequest {}, &admin, None)?,
            path,
            codec,
        )
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::Unimplemented);

    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn grpc_and_rest_share_one_tls_listener() -> anyhow::Result<()> {
    let api = start_with(Setup {
        tls: true,
        ..Setup::default()
    })
    .await?;

    // REST over HTTPS, HTTP/2 by ALPN.
    let resp = api
        .http
        .get(format!("{}/v1/whoami", api.base))
        .bearer_auth(&api.admin_token)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    // And HTTP/1.1 for clients that only speak that.
    let mut config = certs::https_client_config(&api.ca_pem)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let h1 = reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .http1_only()
        .build()?;
    let resp = h1.get(format!("{}/healthz", api.base)).send().await?;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);

    // gRPC over the same TLS port.
    let mut config = certs::https_client_config(&api.ca_pem)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = api.addr;
    let ch = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_uri: http::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await?;
    let mut projects = pb::project_service_client::ProjectServiceClient::new(ch);
    let listed = projects
        .list_projects(authed(
            pb::ListProjectsRequest::default(),
            &api.admin_token,
            None,
        )?)
        .await?;
    assert!(listed
        .into_inner()
        .items
        .iter()
        .any(|p| p.name == "default"));
    let err = projects
        .list_projects(pb::ListProjectsRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);

    // Plain HTTP is refused off loopback.
    let refused = coordinator::api::AdminApi::bind(coordinator::api::AdminApiOptions {
        listen: "0.0.0.0:0".parse()?,
        listener: None,
        tls: None,
        handle: api.handle.clone(),
        keyring: api.keyring.clone(),
        max_body_bytes: 1024,
        limits: Default::default(),
        project_defaults: Default::default(),
        default_key_ttl: coordinator::api::DEFAULT_KEY_TTL,
    })
    .await;
    assert!(
        matches!(
            refused,
            Err(coordinator::api::ApiError::PlainHttpOffLoopback(_))
        ),
        "{refused:?}"
    );

    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_open_connections_and_stops_accepting() -> anyhow::Result<()> {
    let mut api = start().await?;
    // An HTTP/2 connection (gRPC) and a kept-alive HTTP/1.1 connection are open when shutdown starts.
    let ch = channel(api.addr).await?;
    let mut projects = pb::project_service_client::ProjectServiceClient::new(ch);
    projects
        .list_projects(authed(
            pb::ListProjectsRequest::default(),
            &api.admin_token,
            None,
        )?)
        .await?;
    assert_eq!(api.get("/healthz").send().await?.status, 200);

    api.stop_api(std::time::Duration::from_secs(15)).await?;

    let after = api.http.get(format!("{}/healthz", api.base)).send().await;
    assert!(after.is_err(), "the listener still answers: {after:?}");
    let grpc_after = projects
        .list_projects(authed(
            pb::ListProjectsRequest::default(),
            &api.admin_token,
            None,
        )?)
        .await;
    assert!(grpc_after.is_err());
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn grpc_identity_service_matches_rest() -> anyhow::Result<()> {
    let api = start().await?;
    let ch = channel(api.addr).await?;
    let admin = api.admin_token.clone();
    let mut identities = pb::identity_service_client::IdentityServiceClient::new(ch.clone());
    let selector = |serial: &str| pb::IdentitySelector {
        serial: serial.into(),
        ..Default::default()
    };

    let entry = identities
        .deny_identity(authed(
            pb::DenyIdentityRequest {
                selector: Some(selector("0A:bc")),
                reason: "lost".into(),
            },
            &admin,
            None,
        )?)
        .await?
        .into_inner();
    assert_eq!(entry.id, "serial:0abc");
    assert_eq!(entry.kind, "serial");
    let rest = api.get("/v1/denied-identities").send().await?;
    assert_eq!(rest.body["items"][0]["id"], json!("serial:0abc"));

    let duplicate = identities
        .deny_identity(authed(
            pb::DenyIdentityRequest {
                selector: Some(selector("0abc")),
                reason: String::new(),
            },
            &admin,
            None,
        )?)
        .await
        .expect_err("duplicate");
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    let empty = identities
        .deny_identity(authed(pb::DenyIdentityRequest::default(), &admin, None)?)
        .await
        .expect_err("no selector");
    assert_eq!(empty.code(), Code::InvalidArgument);

    let (padmin, _, _) = api.create_key("default", "lead", "project-admin").await?;
    let forbidden = identities
        .list_denied_identities(authed(
            pb::ListDeniedIdentitiesRequest::default(),
            &padmin,
            None,
        )?)
        .await
        .expect_err("project admin");
    assert_eq!(forbidden.code(), Code::PermissionDenied);

    let listed = identities
        .list_denied_identities(authed(
            pb::ListDeniedIdentitiesRequest::default(),
            &admin,
            None,
        )?)
        .await?
        .into_inner();
    assert_eq!(listed.items.len(), 1);
    let removed = identities
        .allow_identity(authed(
            pb::AllowIdentityRequest {
                selector: Some(selector("0abc")),
            },
            &admin,
            None,
        )?)
        .await?
        .into_inner();
    assert_eq!(removed.id, "serial:0abc");
    let rest = api.get("/v1/denied-identities").send().await?;
    assert_eq!(rest.body["items"], json!([]));
    api.stop().await;
    Ok(())
}

#[tokio::test]
async fn only_a_platform_admin_sets_a_project_policy_over_grpc() -> anyhow::Result<()> {
    let api = start().await?;
    let ch = channel(api.addr).await?;
    let mut projects = pb::project_service_client::ProjectServiceClient::new(ch);
    api.create_project("governed").await?;
    let (lead, _, _) = api.create_key("governed", "lead", "project-admin").await?;

    // New projects carry the coordinator's defaults, visible to their members.
    let fresh = projects
        .get_project(authed(
            pb::GetProjectRequest {
                project: "governed".into(),
            },
            &lead,
            None,
        )?)
        .await?
        .into_inner();
    let policy = fresh.policy.clone().context("a policy")?;
    assert_eq!(policy.network, "egress");
    assert_eq!(policy.preemption_ceiling, 0);
    assert!(policy.max_pending_jobs > 0);

    let change = || pb::SetProjectPolicyRequest {
        project: "governed".into(),
        max_pending_jobs: Some(7),
        network: Some("none".into()),
        ..Default::default()
    };
    let refused = projects
        .set_project_policy(authed(change(), &lead, None)?)
        .await
        .expect_err("a project-admin may not");
    assert_eq!(refused.code(), Code::PermissionDenied);

    let set = projects
        .set_project_policy(authed(change(), &api.admin_token, None)?)
        .await?
        .into_inner();
    let policy = set.policy.context("a policy")?;
    assert_eq!(policy.max_pending_jobs, 7);
    assert_eq!(policy.network, "none");
    assert_eq!(
        policy.max_running_gpus,
        fresh_gpus(&fresh),
        "unnamed fields stay"
    );

    let bad = projects
        .set_project_policy(authed(
            pb::SetProjectPolicyRequest {
                project: "governed".into(),
                network: Some("host".into()),
                ..Default::default()
            },
            &api.admin_token,
            None,
        )?)
        .await
        .expect_err("not a network policy");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("network: "), "{}", bad.message());
    let missing = projects
        .set_project_policy(authed(
            pb::SetProjectPolicyRequest {
                project: "nosuch".into(),
                max_pending_jobs: Some(1),
                ..Default::default()
            },
            &api.admin_token,
            None,
        )?)
        .await
        .expect_err("no such project");
    assert_eq!(missing.code(), Code::NotFound);
    api.stop().await;
    Ok(())
}

/// The GPU quota a project was created with (unchanged by a policy update that does not name it).
fn fresh_gpus(project: &pb::Project) -> u64 {
    project.policy.as_ref().map_or(0, |p| p.max_running_gpus)
}

#[tokio::test]
async fn grpc_node_service_matches_rest() -> anyhow::Result<()> {
    let api = start().await?;
    let ch = channel(api.addr).await?;
    let admin = api.admin_token.clone();
    let mut nodes = pb::node_service_client::NodeServiceClient::new(ch.clone());
    api.register_node("eu-a1", 0, &[("zone", "a")], Some(false))
        .await?;
    let node_ref = || pb::NodeRef {
        region: "eu".into(),
        cluster: "eu1".into(),
        node: "eu-a1".into(),
    };

    // The list answers what REST answers, field for field where both carry it.
    let listed = nodes
        .list_nodes(authed(pb::ListNodesRequest::default(), &admin, None)?)
        .await?
        .into_inner();
    let rest = api.get("/v1/nodes").send().await?;
    let (grpc, json) = (&listed.items[0], &rest.body["items"][0]);
    assert_eq!(grpc.key, json["key"].as_str().context("key")?);
    assert_eq!(
        grpc.admission,
        json["admission"].as_str().context("admission")?
    );
    assert_eq!(grpc.admission, "pending_approval");
    assert_eq!(grpc.health, "ready");
    assert_eq!(grpc.labels.get("zone").map(String::as_str), Some("a"));
    assert_eq!(grpc.cpu_cores, 16);
    assert!(grpc.approved.is_none());

    let approved = nodes
        .approve_node(authed(node_ref(), &admin, None)?)
        .await?
        .into_inner();
    assert_eq!(approved.admission, "approved");
    assert_eq!(approved.approved.map(|a| a.cpu_cores), Some(16));
    let drained = nodes
        .drain_node(authed(node_ref(), &admin, None)?)
        .await?
        .into_inner();
    assert!(drained.draining);
    let rest = api.get("/v1/nodes").send().await?;
    assert_eq!(rest.body["items"][0]["draining"], json!(true));
    // The cluster status counts the drained node per site on both faces.
    let mut cluster = pb::cluster_service_client::ClusterServiceClient::new(ch.clone());
    let status = cluster
        .get_cluster_status(authed(pb::GetClusterStatusRequest {}, &admin, None)?)
        .await?
        .into_inner();
    let rest_status = api.get("/v1/cluster/status").send().await?;
    assert_eq!(status.sites[0].draining, 1);
    assert_eq!(
        rest_status.body["sites"][0]["draining"],
        json!(status.sites[0].draining)
    );
    let undrained = nodes
        .undrain_node(authed(node_ref(), &admin, None)?)
        .await?
        .into_inner();
    assert!(!undrained.draining);

    let policy = nodes
        .set_cluster_policy(authed(
            pb::NodeSetClusterPolicyRequest {
                region: "eu".into(),
                cluster: "eu1".into(),
                auto_approve: true,
            },
            &admin,
            None,
        )?)
        .await?
        .into_inner();
    assert!(policy.auto_approve);

    // The same refusals as REST: unknown node, malformed name, a caller without the right.
    let unknown = nodes
        .drain_node(authed(
            pb::NodeRef {
                node: "nope".into(),
                ..node_ref()
            },
            &admin,
            None,
        )?)
        .await
        .expect_err("unknown node");
    assert_eq!(unknown.code(), Code::NotFound);
    let malformed = nodes
        .drain_node(authed(
            pb::NodeRef {
                region: "../eu".into(),
                ..node_ref()
            },
            &admin,
            None,
        )?)
        .await
        .expect_err("malformed region");
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(
        malformed.message().contains("region"),
        "{}",
        malformed.message()
    );
    let (padmin, _, _) = api.create_key("default", "lead", "project-admin").await?;
    let forbidden = nodes
        .drain_node(authed(node_ref(), &padmin, None)?)
        .await
        .expect_err("a project-admin drains no node");
    assert_eq!(forbidden.code(), Code::PermissionDenied);
    let listing = nodes
        .list_nodes(authed(pb::ListNodesRequest::default(), &padmin, None)?)
        .await
        .expect_err("a project-admin lists no node");
    assert_eq!(listing.code(), Code::PermissionDenied);
    api.stop().await;
    Ok(())
}
