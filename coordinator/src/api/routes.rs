//! The route table: every REST route and every gRPC method of the admin API, each with its operation and the
//! operation's policy. The axum router is built from [`rest_routes`] and nothing else, and the gRPC gate admits
//! only methods listed in [`grpc_methods`] (anything else is refused before it reaches a service).
//!
//! Each domain (`tenancy/`, `audit/`, `secrets/`, `cluster/`, `fleet/`, `jobs/`) holds its own rows — REST
//! routes in its `rest.rs` beside their handlers, gRPC methods in its `grpc.rs` beside their adapters — and
//! the tables are the domains' rows concatenated, in the order of [`DOMAINS`]. This module owns the
//! operations and their policies ([`op`]), the row types, the list of domains and the router built from them.
//!
//! Must never gain a route outside these tables: adding an endpoint means adding a row with a policy.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use axum::Router;

use crate::authz::Action;

use super::auth;
use super::grpc::GrpcServices;
use super::openapi::SchemaOf;
use super::rest;
use super::service::AdminService;
use super::{audit, cluster, fleet, jobs, secrets, tenancy};

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Anyone, without a key (health, readiness, the OpenAPI document).
    Public,
    /// A valid key whose principal's roles grant the action (in the request's project, or platform-wide for
    /// platform actions).
    Authenticated(Action),
}

/// One thing the API does, shared by its REST route and its gRPC method so both have the same policy.
#[derive(Debug)]
pub(crate) struct Operation {
    /// Stable name, used as OpenAPI `operationId` and as the audit action of denied attempts.
    pub(crate) name: &'static str,
    pub(crate) policy: Policy,
}

const fn public(name: &'static str) -> Operation {
    Operation {
        name,
        policy: Policy::Public,
    }
}

const fn needs(name: &'static str, action: Action) -> Operation {
    Operation {
        name,
        policy: Policy::Authenticated(action),
    }
}

/// Every operation of the admin API.
pub(crate) mod op {
    use super::{needs, public, Operation};
    use crate::authz::Action::*;

    pub(crate) static HEALTH: Operation = public("health");
    pub(crate) static READY: Operation = public("ready");
    pub(crate) static OPENAPI: Operation = public("openapi");
    pub(crate) static METRICS: Operation = needs("metrics", ClusterRead);
    pub(crate) static WHOAMI: Operation = needs("whoami", ReadProject);

    pub(crate) static PROJECT_CREATE: Operation = needs("project.create", CreateProject);
    pub(crate) static PROJECT_LIST: Operation = needs("project.list", ReadProject);
    pub(crate) static PROJECT_GET: Operation = needs("project.get", ReadProject);
    pub(crate) static PROJECT_DELETE: Operation = needs("project.delete", DeleteProject);
    pub(crate) static PROJECT_POLICY_SET: Operation = needs("project.policy.set", SetProjectPolicy);

    pub(crate) static PRINCIPAL_LIST: Operation = needs("principal.list", ReadProject);
    pub(crate) static PRINCIPAL_CREATE: Operation = needs("principal.create", ManageKeys);

    pub(crate) static KEY_CREATE: Operation = needs("key.create", ManageKeys);
    pub(crate) static KEY_LIST: Operation = needs("key.list", ReadProject);
    pub(crate) static KEY_GET: Operation = needs("key.get", ReadProject);
    pub(crate) static KEY_REVOKE: Operation = needs("key.revoke", ManageKeys);
    pub(crate) static KEY_DELETE: Operation = needs("key.delete", ManageKeys);

    pub(crate) static BINDING_CREATE: Operation = needs("role-binding.create", ManageBindings);
    pub(crate) static BINDING_LIST: Operation = needs("role-binding.list", ReadProject);
    pub(crate) static BINDING_DELETE: Operation = needs("role-binding.delete", ManageBindings);

    pub(crate) static AUDIT_LIST: Operation = needs("audit.list", ReadAudit);
    pub(crate) static AUDIT_VERIFY: Operation = needs("audit.verify", ReadAudit);

    pub(crate) static SECRET_PUT: Operation = needs("secret.put", ManageSecrets);
    pub(crate) static SECRET_LIST: Operation = needs("secret.list", ReadProject);
    pub(crate) static SECRET_GET: Operation = needs("secret.get", ReadProject);
    pub(crate) static SECRET_DELETE: Operation = needs("secret.delete", ManageSecrets);
    pub(crate) static SECRET_REWRAP: Operation = needs("secret.rewrap", RotateMasterKey);

    pub(crate) static CLUSTER_STATUS: Operation = needs("cluster.status", ClusterRead);
    pub(crate) static MEMBER_LIST: Operation = needs("cluster.member.list", ClusterRead);
    pub(crate) static MEMBER_ADD: Operation = needs("cluster.member.add", ClusterMembership);
    pub(crate) static MEMBER_REMOVE: Operation = needs("cluster.member.remove", ClusterMembership);

    pub(crate) static NODE_LIST: Operation = needs("node.list", ClusterRead);
    pub(crate) static NODE_DRAIN: Operation = needs("node.drain", ClusterMembership);
    pub(crate) static NODE_UNDRAIN: Operation = needs("node.undrain", ClusterMembership);
    pub(crate) static NODE_APPROVE: Operation = needs("node.approve", ClusterMembership);
    pub(crate) static CLUSTER_POLICY_SET: Operation =
        needs("cluster.policy.set", ClusterMembership);

    pub(crate) static IDENTITY_DENY: Operation = needs("identity.deny", ClusterMembership);
    pub(crate) static IDENTITY_ALLOW: Operation = needs("identity.allow", ClusterMembership);
    pub(crate) static IDENTITY_DENY_LIST: Operation = needs("identity.deny-list", ClusterRead);

    pub(crate) static JOB_SUBMIT: Operation = needs("job.submit", RunJobs);
    pub(crate) static JOB_LIST: Operation = needs("job.list", ReadProject);
    pub(crate) static JOB_GET: Operation = needs("job.get", ReadProject);
    pub(crate) static JOB_CANCEL: Operation = needs("job.cancel", RunJobs);
    pub(crate) static JOB_LOGS: Operation = needs("job.logs", ReadProject);
    pub(crate) static JOB_PLAN: Operation = needs("job.plan", RunJobs);
    // Entering a running job needs the right to run one (see `jobs/exec`).
    pub(crate) static JOB_EXEC: Operation = needs("job.exec", RunJobs);
    pub(crate) static JOB_COPY: Operation = needs("job.cp", RunJobs);
    pub(crate) static JOB_LIST_DIR: Operation = needs("job.ls", RunJobs);
    pub(crate) static JOB_ATTACH: Operation = needs("job.attach", RunJobs);

    pub(crate) static USAGE_GET: Operation = needs("usage.get", ReadProject);
}

/// HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpMethod {
    Get,
    Post,
    Delete,
    Put,
}

impl HttpMethod {
    pub(crate) fn filter(self) -> MethodFilter {
        match self {
            HttpMethod::Get => MethodFilter::GET,
            HttpMethod::Post => MethodFilter::POST,
            HttpMethod::Delete => MethodFilter::DELETE,
            HttpMethod::Put => MethodFilter::PUT,
        }
    }

    /// Lower-case, as OpenAPI writes it.
    pub(crate) fn openapi(self) -> &'static str {
        match self {
            HttpMethod::Get => "get",
            HttpMethod::Post => "post",
            HttpMethod::Delete => "delete",
            HttpMethod::Put => "put",
        }
    }
}

/// The body a route answers with on success.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    /// The body's type (`schema::<T>`), whose schema the OpenAPI document carries; `None` for an empty or
    /// plain-text body.
    pub(crate) schema: Option<SchemaOf>,
    /// Media type of the body.
    pub(crate) media: &'static str,
}

pub(crate) const fn ok(schema: SchemaOf) -> Reply {
    Reply {
        status: 200,
        schema: Some(schema),
        media: "application/json",
    }
}

pub(crate) const fn created(schema: SchemaOf) -> Reply {
    Reply {
        status: 201,
        schema: Some(schema),
        media: "application/json",
    }
}

pub(crate) const NO_CONTENT: Reply = Reply {
    status: 204,
    schema: None,
    media: "application/json",
};

pub(crate) const TEXT: Reply = Reply {
    status: 200,
    schema: None,
    media: "text/plain; version=0.0.4",
};

/// Builds a route's method router for its method.
type Endpoint = fn(MethodFilter) -> MethodRouter<AdminService>;

/// One REST route.
pub(crate) struct Route {
    pub(crate) method: HttpMethod,
    /// The public path; a trailing `:verb` on the last segment is a custom method (`/v1/keys/{id}:revoke`).
    pub(crate) path: &'static str,
    pub(crate) op: &'static Operation,
    pub(crate) summary: &'static str,
    /// The request body's type (`schema::<T>`, `T` being what the handler's `ApiJson` extracts), for
    /// routes that take a body.
    pub(crate) request: Option<SchemaOf>,
    /// Query parameters the route reads (name, description).
    pub(crate) query: &'static [(&'static str, &'static str)],
    pub(crate) reply: Reply,
    pub(crate) endpoint: Endpoint,
}

/// A route's [`Endpoint`]: `endpoint!(handler)` mounts the handler for the route's method.
macro_rules! endpoint {
    ($handler:path) => {
        |filter| ::axum::routing::on(filter, $handler)
    };
}
pub(crate) use endpoint;

/// The query parameters of a paged listing.
pub(crate) const PAGING: &[(&str, &str)] = &[
    ("page_size", "Items per page (default 100, at most 1000)."),
    ("page_token", "The next_page_token of the previous page."),
];

/// One gRPC method and its operation.
pub(crate) struct GrpcMethod {
    /// `/<package>.<Service>/<Method>`, as it appears in the HTTP/2 path.
    pub(crate) path: &'static str,
    pub(crate) op: &'static Operation,
}

/// A row of a domain's gRPC method table.
pub(crate) const fn grpc(path: &'static str, op: &'static Operation) -> GrpcMethod {
    GrpcMethod { path, op }
}

/// One domain's share of the tables: its REST routes (`<domain>/rest.rs`), its gRPC methods and the tonic
/// services that answer them (`<domain>/grpc.rs`).
pub(crate) struct Domain {
    pub(crate) routes: &'static [Route],
    pub(crate) grpc_methods: &'static [GrpcMethod],
    pub(crate) grpc_services: GrpcServices,
}

/// Every domain of the admin API, in table order: the route table and the gRPC method table are their rows
/// concatenated, and tonic serves their services. Adding a domain is one entry here (its operations go in
/// [`op`]).
static DOMAINS: &[Domain] = &[
    // The process's own routes (probes, the OpenAPI document, metrics): REST only, without a gRPC twin.
    Domain {
        routes: rest::ROUTES,
        grpc_methods: &[],
        grpc_services: |_, _, _| {},
    },
    Domain {
        routes: tenancy::rest::ROUTES,
        grpc_methods: tenancy::grpc::METHODS,
        grpc_services: tenancy::grpc::services,
    },
    Domain {
        routes: audit::rest::ROUTES,
        grpc_methods: audit::grpc::METHODS,
        grpc_services: audit::grpc::services,
    },
    Domain {
        routes: secrets::rest::ROUTES,
        grpc_methods: secrets::grpc::METHODS,
        grpc_services: secrets::grpc::services,
    },
    Domain {
        routes: cluster::rest::ROUTES,
        grpc_methods: cluster::grpc::METHODS,
        grpc_services: cluster::grpc::services,
    },
    Domain {
        routes: fleet::rest::ROUTES,
        grpc_methods: fleet::grpc::METHODS,
        grpc_services: fleet::grpc::services,
    },
    Domain {
        routes: jobs::rest::ROUTES,
        grpc_methods: jobs::grpc::METHODS,
        grpc_services: jobs::grpc::services,
    },
    Domain {
        routes: jobs::exec::rest::ROUTES,
        grpc_methods: jobs::exec::grpc::METHODS,
        grpc_services: jobs::exec::grpc::services,
    },
];

/// Every domain of the admin API (see [`DOMAINS`]).
pub(crate) fn domains() -> impl Iterator<Item = &'static Domain> + Clone {
    DOMAINS.iter()
}

/// Every REST route of the admin API: the domains' routes, concatenated.
pub(crate) fn rest_routes() -> impl Iterator<Item = &'static Route> + Clone {
    domains().flat_map(|d| d.routes)
}

/// Every gRPC method of the admin API: the domains' methods, concatenated.
pub(crate) fn grpc_methods() -> impl Iterator<Item = &'static GrpcMethod> {
    domains().flat_map(|d| d.grpc_methods)
}

/// The gRPC method at `path`, if the table has it.
pub(crate) fn grpc_method(path: &str) -> Option<&'static GrpcMethod> {
    grpc_methods().find(|m| m.path == path)
}

/// Where a public path is mounted in the axum router. A custom method's `:verb` becomes its own segment
/// (`/v1/keys/{id}:revoke` → `/v1/keys/{id}/:revoke`), because the router cannot match a parameter followed
/// by a suffix; [`rewrite_custom_method`] turns request paths into the same form.
pub(crate) fn router_path(path: &str) -> String {
    match split_custom_method(path) {
        Some((base, verb)) => format!("{base}/:{verb}"),
        None => path.to_owned(),
    }
}

/// `(base, verb)` when the last segment of `path` ends in `:verb` after a non-empty name.
fn split_custom_method(path: &str) -> Option<(&str, &str)> {
    let last_slash = path.rfind('/')?;
    let last = &path[last_slash + 1..];
    let colon = last.rfind(':')?;
    if colon == 0 || colon + 1 == last.len() {
        return None;
    }
    let verb = &last[colon + 1..];
    if !verb.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
        return None;
    }
    Some((&path[..last_slash + 1 + colon], verb))
}

/// The router-side form of a request path (see [`router_path`]); `None` when it has no custom method.
pub(crate) fn rewrite_custom_method(path: &str) -> Option<String> {
    if !path.starts_with("/v1/") {
        return None;
    }
    split_custom_method(path).map(|(base, verb)| format!("{base}/:{verb}"))
}

/// Marks a response with the route that produced it (read by the metrics layer).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatchedRoute(pub(crate) &'static str);

/// Admits a request under its route's policy before the handler runs.
async fn gate(
    State((service, route)): State<(AdminService, &'static Route)>,
    mut req: Request,
    next: Next,
) -> Response {
    let source = req.extensions().get::<auth::ClientAddr>().map(|c| c.0);
    if project_in_query(req.uri().query()) {
        // Read as if it chose the project, it would be silently ignored: say where the project goes.
        let mut resp = super::error::ServiceError::invalid(
            "project",
            "the project is chosen with the X-Meridian-Project header (or is the key's own), not a \
             ?project= query parameter",
        )
        .into_response();
        resp.extensions_mut().insert(MatchedRoute(route.path));
        return resp;
    }
    let mut resp = match auth::admit(&service, req.headers(), route.op, source).await {
        Ok(scope) => {
            if let Some(scope) = scope {
                req.extensions_mut().insert(scope);
            }
            next.run(req).await
        }
        Err(e) => e.into_response(),
    };
    resp.extensions_mut().insert(MatchedRoute(route.path));
    resp
}

/// Whether a query string names a `project` parameter (no route reads one).
fn project_in_query(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.split('=').next().is_some_and(|name| name == "project"))
    })
}

/// Builds the REST router from [`rest_routes`]; unknown paths answer 404 and wrong methods 405, as JSON.
pub(crate) fn build_router(service: AdminService) -> Router {
    let mut router: Router<AdminService> = Router::new().without_v07_checks();
    for route in rest_routes() {
        let gated = (route.endpoint)(route.method.filter()).route_layer(
            axum::middleware::from_fn_with_state((service.clone(), route), gate),
        );
        router = router.route(&router_path(route.path), gated);
    }
    router.fallback(rest::not_found).with_state(service)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The only routes anyone may call without a key.
    const PUBLIC: [&str; 3] = ["/healthz", "/readyz", "/v1/openapi.json"];

    #[test]
    fn every_route_declares_a_policy_and_only_the_allowed_ones_are_public() {
        assert!(rest_routes().next().is_some());
        for route in rest_routes() {
            match route.op.policy {
                Policy::Public => assert!(
                    PUBLIC.contains(&route.path) && route.method == HttpMethod::Get,
                    "{} {} is public but not on the public list",
                    route.method.openapi(),
                    route.path
                ),
                Policy::Authenticated(_) => {
                    assert!(
                        !PUBLIC.contains(&route.path),
                        "{} must be public",
                        route.path
                    )
                }
            }
        }
        for path in PUBLIC {
            assert!(rest_routes().any(|r| r.path == path), "{path} is missing");
        }
    }

    #[test]
    fn routes_are_unique_and_well_formed() {
        let mut seen = BTreeSet::new();
        let mut ops = BTreeSet::new();
        for route in rest_routes() {
            assert!(
                seen.insert((route.method.openapi(), route.path)),
                "duplicate route {}",
                route.path
            );
            assert!(
                ops.insert(route.op.name),
                "operation {} is used by two routes",
                route.op.name
            );
            assert!(route.path.starts_with('/'));
            assert!(!route.summary.is_empty());
            let takes_body = route.request.is_some();
            assert!(
                !takes_body || matches!(route.method, HttpMethod::Post | HttpMethod::Put),
                "{} takes a body",
                route.path
            );
            assert!(
                route
                    .op
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || matches!(c, '.' | '-')),
                "operation names are audit actions: {}",
                route.op.name
            );
        }
    }

    #[test]
    fn every_grpc_method_of_the_proto_is_in_the_table_with_a_rest_twin() {
        let proto = include_str!("../../../protocol/proto/meridian/v1/admin.proto");
        let mut declared = BTreeSet::new();
        let mut service = None;
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().map(str::to_owned);
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let method = rest.split('(').next().unwrap_or("").trim();
                let service = service.as_deref().unwrap_or("?");
                declared.insert(format!("/meridian.v1.{service}/{method}"));
            }
        }
        let table: BTreeSet<String> = grpc_methods().map(|m| m.path.to_owned()).collect();
        assert_eq!(
            declared, table,
            "admin.proto and the gRPC method table disagree"
        );
        for m in grpc_methods() {
            assert!(
                rest_routes().any(|r| std::ptr::eq(r.op, m.op)),
                "{} has no REST route with the same operation",
                m.path
            );
            assert_ne!(m.op.policy, Policy::Public, "{} must not be public", m.path);
        }
    }

    /// REST routes without a gRPC twin: the process's own probes and documents, served to tools that speak
    /// HTTP only. Anything else a REST caller can do, a gRPC caller can do too.
    const REST_ONLY: &[&str] = &["/healthz", "/readyz", "/v1/openapi.json", "/metrics"];

    /// REST spellings of an operation that has another route and a gRPC method: (method, path, the
    /// operation they alias). Each must carry its twin's policy.
    const REST_ALIASES: &[(HttpMethod, &str, &Operation)] =
        &[(HttpMethod::Delete, "/v1/keys/{id}", &op::KEY_REVOKE)];

    #[test]
    fn every_rest_operation_has_a_grpc_twin_unless_listed_as_rest_only() {
        let mut missing = Vec::new();
        for route in rest_routes() {
            let alias = REST_ALIASES
                .iter()
                .find(|(method, path, _)| *method == route.method && *path == route.path);
            if let Some((_, path, twin)) = alias {
                assert_eq!(
                    route.op.policy, twin.policy,
                    "{path} and its twin differ in policy"
                );
                assert!(
                    grpc_methods().any(|m| std::ptr::eq(m.op, *twin)),
                    "{path} aliases an operation without a gRPC method"
                );
                continue;
            }
            let twin = grpc_methods().any(|m| std::ptr::eq(m.op, route.op));
            let listed = REST_ONLY.contains(&route.path);
            assert!(
                !(twin && listed),
                "{} has a gRPC twin; take it off REST_ONLY",
                route.path
            );
            if !twin && !listed {
                missing.push(format!("{:?} {}", route.method, route.path));
            }
        }
        assert!(
            missing.is_empty(),
            "REST routes without a gRPC method: {missing:?}"
        );
        for path in REST_ONLY {
            assert!(
                rest_routes().any(|r| r.path == *path),
                "{path} is listed as REST-only but is not a route"
            );
        }
    }

    #[test]
    fn a_domains_grpc_methods_have_their_rest_twins_in_the_same_domain() {
        for domain in domains() {
            for m in domain.grpc_methods {
                assert!(
                    domain.routes.iter().any(|r| std::ptr::eq(r.op, m.op)),
                    "{} is not in the domain of its REST twin",
                    m.path
                );
            }
        }
        assert_eq!(
            domains().map(|d| d.routes.len()).sum::<usize>(),
            rest_routes().count()
        );
    }

    #[test]
    fn job_routes_carry_the_job_policies() {
        use crate::authz::Action;
        let policy = |method: HttpMethod, path: &str| {
            rest_routes()
                .find(|r| r.method == method && r.path == path)
                .map(|r| r.op.policy)
        };
        let run = Some(Policy::Authenticated(Action::RunJobs));
        let read = Some(Policy::Authenticated(Action::ReadProject));
        assert_eq!(policy(HttpMethod::Post, "/v1/jobs"), run);
        assert_eq!(policy(HttpMethod::Post, "/v1/jobs/{id}:cancel"), run);
        assert_eq!(policy(HttpMethod::Get, "/v1/jobs"), read);
        assert_eq!(policy(HttpMethod::Get, "/v1/jobs/{id}"), read);
        assert_eq!(policy(HttpMethod::Get, "/v1/jobs/{id}/logs"), read);
        assert_eq!(policy(HttpMethod::Get, "/v1/usage"), read);
        // Entering a running job runs code as it: never a viewer's right.
        assert_eq!(policy(HttpMethod::Post, "/v1/jobs/{id}:exec"), run);
        assert_eq!(policy(HttpMethod::Get, "/v1/jobs/{id}/files"), run);
        assert!(!crate::authz::Role::Viewer.allows(Action::RunJobs));
        assert_eq!(router_path("/v1/jobs/{id}:cancel"), "/v1/jobs/{id}/:cancel");
    }

    #[test]
    fn only_a_platform_admin_changes_a_project_policy() {
        use crate::authz::{Action, Role};
        let route = rest_routes()
            .find(|r| r.method == HttpMethod::Put && r.path == "/v1/projects/{project}/policy")
            .expect("the policy route");
        assert_eq!(
            route.op.policy,
            Policy::Authenticated(Action::SetProjectPolicy)
        );
        assert!(Action::SetProjectPolicy.is_platform());
        let allowed: Vec<Role> = Role::ALL
            .into_iter()
            .filter(|r| r.allows(Action::SetProjectPolicy))
            .collect();
        assert_eq!(allowed, [Role::PlatformAdmin]);
    }

    #[test]
    fn node_drain_routes_need_cluster_membership() {
        use crate::authz::Action;
        for verb in ["drain", "undrain"] {
            let path = format!("/v1/nodes/{{region}}/{{cluster}}/{{node}}:{verb}");
            let route = rest_routes()
                .find(|r| r.method == HttpMethod::Post && r.path == path)
                .unwrap_or_else(|| panic!("{path} is missing"));
            assert_eq!(
                route.op.policy,
                Policy::Authenticated(Action::ClusterMembership)
            );
            assert_eq!(
                router_path(route.path),
                format!("/v1/nodes/{{region}}/{{cluster}}/{{node}}/:{verb}")
            );
        }
        assert_eq!(
            rewrite_custom_method("/v1/nodes/eu/eu1/a-1:drain").as_deref(),
            Some("/v1/nodes/eu/eu1/a-1/:drain")
        );
    }

    #[test]
    fn a_project_query_parameter_is_noticed_and_no_route_reads_one() {
        assert!(project_in_query(Some("project=vision")));
        assert!(project_in_query(Some("page_size=5&project=")));
        assert!(!project_in_query(Some("projects=1&page_size=5")));
        assert!(!project_in_query(None));
        for route in rest_routes() {
            assert!(
                route.query.iter().all(|(name, _)| *name != "project"),
                "{} reads ?project=, which the gate refuses",
                route.path
            );
        }
    }

    #[test]
    fn custom_methods_get_their_own_segment() {
        assert_eq!(router_path("/v1/keys/{id}:revoke"), "/v1/keys/{id}/:revoke");
        assert_eq!(router_path("/v1/secrets:rewrap"), "/v1/secrets/:rewrap");
        assert_eq!(router_path("/v1/keys/{id}"), "/v1/keys/{id}");
        assert_eq!(
            rewrite_custom_method("/v1/keys/abc:revoke").as_deref(),
            Some("/v1/keys/abc/:revoke")
        );
        assert_eq!(
            rewrite_custom_method("/v1/secrets:rewrap").as_deref(),
            Some("/v1/secrets/:rewrap")
        );
        assert_eq!(rewrite_custom_method("/v1/keys/abc"), None);
        assert_eq!(rewrite_custom_method("/v1/keys/:revoke"), None);
        assert_eq!(rewrite_custom_method("/v1/keys/abc:"), None);
        assert_eq!(rewrite_custom_method("/v1/keys/abc:Re%20voke"), None);
        assert_eq!(rewrite_custom_method("/metrics:x"), None);
    }
}
