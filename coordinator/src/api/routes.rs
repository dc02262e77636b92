//! The route table: every REST route and every gRPC method of the admin API, each with its operation and the
//! operation's policy. The axum router is built from [`ROUTES`] and nothing else, and the gRPC gate admits
//! only methods listed in [`GRPC_METHODS`] (anything else is refused before it reaches a service).
//!
//! Must never gain a route outside these tables: adding an endpoint means adding a row with a policy.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;

use crate::authz::Action;
use crate::node::MemberStatus;
use crate::state::{ApiKeyView, DeniedIdentity, Principal, ProjectView, UsageReport};

use super::admission::{
    self, AllowIdentityRequest, ClusterPolicyRequest, ClusterPolicyView, DenyIdentityRequest,
};
use super::audit::AuditList;
use super::audit_verify::AuditVerification;
use super::auth;
use super::cluster::{AddMemberRequest, ClusterOverview, Health, NodeView};
use super::jobs::{JobLogsView, JobView, SubmitJobRequest};
use super::openapi::{schema, OpenApiDocument, SchemaOf};
use super::rest;
use super::secrets::{PutSecretRequest, RewrapResult, SecretResource};
use super::service::{AdminService, ListPage};
use super::tenancy::{
    CreateBindingRequest, CreateKeyRequest, CreateProjectRequest, CreateServiceAccountRequest,
    CreatedKey, RoleBindingView, SetPolicyRequest, WhoAmI,
};

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

const fn ok(schema: SchemaOf) -> Reply {
    Reply {
        status: 200,
        schema: Some(schema),
        media: "application/json",
    }
}

const fn created(schema: SchemaOf) -> Reply {
    Reply {
        status: 201,
        schema: Some(schema),
        media: "application/json",
    }
}

const NO_CONTENT: Reply = Reply {
    status: 204,
    schema: None,
    media: "application/json",
};

const TEXT: Reply = Reply {
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

macro_rules! endpoint {
    ($handler:path) => {
        |filter| on(filter, $handler)
    };
}

const PAGING: &[(&str, &str)] = &[
    ("page_size", "Items per page (default 100, at most 1000)."),
    ("page_token", "The next_page_token of the previous page."),
];
const AUDIT_QUERY: &[(&str, &str)] = &[
    ("after_seq", "Return records with a larger sequence number."),
    ("page_size", "Records per page (default 100, at most 1000)."),
    (
        "page_token",
        "The next_page_token of the previous page (same as after_seq).",
    ),
];

const JOB_LIST_QUERY: &[(&str, &str)] = &[
    (
        "state",
        "Only jobs in this state (pending, scheduled, running, succeeded, failed, cancelled, lost).",
    ),
    ("page_size", "Items per page (default 100, at most 1000)."),
    ("page_token", "The next_page_token of the previous page."),
];
const JOB_LOGS_QUERY: &[(&str, &str)] = &[
    ("stream", "stdout (default) or stderr."),
    (
        "offset",
        "Logical offset to read from (the next_offset of the previous read; default 0).",
    ),
    (
        "max_bytes",
        "Most bytes to return (default 65536, at most 1048576).",
    ),
    (
        "attempt",
        "Attempt number (default: the last attempt that was placed on a node).",
    ),
    ("replica", "Replica of a gang job, 0-based (default 0)."),
];
const REWRAP_QUERY: &[(&str, &str)] = &[(
    "new_data_keys",
    "true: also replace every project's data key and re-encrypt every secret version under it, in one \
     command (default false: re-wrap the data keys only).",
)];
const USAGE_QUERY: &[(&str, &str)] = &[
    (
        "since",
        "Start of the range: Unix milliseconds or RFC 3339 (default: 24 hours before until).",
    ),
    (
        "until",
        "End of the range: Unix milliseconds or RFC 3339 (default: now).",
    ),
];

/// Every REST route of the admin API.
pub(crate) static ROUTES: &[Route] = &[
    Route {
        method: HttpMethod::Get,
        path: "/healthz",
        op: &op::HEALTH,
        summary: "Whether the process is alive",
        request: None,
        query: &[],
        reply: ok(schema::<Health>),
        endpoint: endpoint!(rest::healthz),
    },
    Route {
        method: HttpMethod::Get,
        path: "/readyz",
        op: &op::READY,
        summary: "Whether this coordinator knows a leader and has caught up (503 until then)",
        request: None,
        query: &[],
        reply: ok(schema::<Health>),
        endpoint: endpoint!(rest::readyz),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/openapi.json",
        op: &op::OPENAPI,
        summary: "This document",
        request: None,
        query: &[],
        reply: ok(schema::<OpenApiDocument>),
        endpoint: endpoint!(rest::openapi),
    },
    Route {
        method: HttpMethod::Get,
        path: "/metrics",
        op: &op::METRICS,
        summary: "Prometheus metrics: requests, latency, Raft term, applied index and leader",
        request: None,
        query: &[],
        reply: TEXT,
        endpoint: endpoint!(rest::metrics),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/whoami",
        op: &op::WHOAMI,
        summary: "The caller's principal, key, project and role bindings",
        request: None,
        query: &[],
        reply: ok(schema::<WhoAmI>),
        endpoint: endpoint!(rest::whoami),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/projects",
        op: &op::PROJECT_CREATE,
        summary: "Create a project",
        request: Some(schema::<CreateProjectRequest>),
        query: &[],
        reply: created(schema::<ProjectView>),
        endpoint: endpoint!(rest::create_project),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/projects",
        op: &op::PROJECT_LIST,
        summary: "List the projects the caller can see",
        request: None,
        query: PAGING,
        reply: ok(schema::<ListPage<ProjectView>>),
        endpoint: endpoint!(rest::list_projects),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/projects/{project}",
        op: &op::PROJECT_GET,
        summary: "Get a project by id or name",
        request: None,
        query: &[],
        reply: ok(schema::<ProjectView>),
        endpoint: endpoint!(rest::get_project),
    },
    Route {
        method: HttpMethod::Delete,
        path: "/v1/projects/{project}",
        op: &op::PROJECT_DELETE,
        summary: "Delete a project that holds no active keys and no secrets",
        request: None,
        query: &[],
        reply: NO_CONTENT,
        endpoint: endpoint!(rest::delete_project),
    },
    Route {
        method: HttpMethod::Put,
        path: "/v1/projects/{project}/policy",
        op: &op::PROJECT_POLICY_SET,
        summary: "Change a project's policy (quotas, network, preemption ceiling); fields left out keep their value. Platform-admin only",
        request: Some(schema::<SetPolicyRequest>),
        query: &[],
        reply: ok(schema::<ProjectView>),
        endpoint: endpoint!(rest::set_project_policy),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/principals",
        op: &op::PRINCIPAL_LIST,
        summary: "List the project's users and service accounts",
        request: None,
        query: PAGING,
        reply: ok(schema::<ListPage<Principal>>),
        endpoint: endpoint!(rest::list_principals),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/principals",
        op: &op::PRINCIPAL_CREATE,
        summary: "Create a service account in the project",
        request: Some(schema::<CreateServiceAccountRequest>),
        query: &[],
        reply: created(schema::<Principal>),
        endpoint: endpoint!(rest::create_service_account),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/keys",
        op: &op::KEY_CREATE,
        summary: "Create an API key (the token is returned once, here)",
        request: Some(schema::<CreateKeyRequest>),
        query: &[],
        reply: created(schema::<CreatedKey>),
        endpoint: endpoint!(rest::create_key),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/keys",
        op: &op::KEY_LIST,
        summary: "List the project's keys (prefix and last four characters only)",
        request: None,
        query: PAGING,
        reply: ok(schema::<ListPage<ApiKeyView>>),
        endpoint: endpoint!(rest::list_keys),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/keys/{id}",
        op: &op::KEY_GET,
        summary: "Get a key",
        request: None,
        query: &[],
        reply: ok(schema::<ApiKeyView>),
        endpoint: endpoint!(rest::get_key),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/keys/{id}:revoke",
        op: &op::KEY_REVOKE,
        summary: "Revoke a key; it stops working on every coordinator",
        request: None,
        query: &[],
        reply: ok(schema::<ApiKeyView>),
        endpoint: endpoint!(rest::revoke_key),
    },
    Route {
        method: HttpMethod::Delete,
        path: "/v1/keys/{id}",
        op: &op::KEY_DELETE,
        summary: "Revoke a key (same as :revoke)",
        request: None,
        query: &[],
        reply: ok(schema::<ApiKeyView>),
        endpoint: endpoint!(rest::revoke_key),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/role-bindings",
        op: &op::BINDING_CREATE,
        summary: "Bind a role to a principal in the project (or platform-wide)",
        request: Some(schema::<CreateBindingRequest>),
        query: &[],
        reply: created(schema::<RoleBindingView>),
        endpoint: endpoint!(rest::create_binding),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/role-bindings",
        op: &op::BINDING_LIST,
        summary: "List the project's role bindings",
        request: None,
        query: PAGING,
        reply: ok(schema::<ListPage<RoleBindingView>>),
        endpoint: endpoint!(rest::list_bindings),
    },
    Route {
        method: HttpMethod::Delete,
        path: "/v1/role-bindings/{id}",
        op: &op::BINDING_DELETE,
        summary: "Remove a role binding",
        request: None,
        query: &[],
        reply: NO_CONTENT,
        endpoint: endpoint!(rest::delete_binding),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/audit",
        op: &op::AUDIT_LIST,
        summary: "Read the hash-chained audit log by sequence number",
        request: None,
        query: AUDIT_QUERY,
        reply: ok(schema::<AuditList>),
        endpoint: endpoint!(rest::list_audit),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/audit/verify",
        op: &op::AUDIT_VERIFY,
        summary: "Verify the audit log's hash chain on the server",
        request: None,
        query: &[],
        reply: ok(schema::<AuditVerification>),
        endpoint: endpoint!(rest::verify_audit),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/secrets",
        op: &op::SECRET_PUT,
        summary: "Create a secret or add a version (the value is encrypted and never returned)",
        request: Some(schema::<PutSecretRequest>),
        query: &[],
        reply: created(schema::<SecretResource>),
        endpoint: endpoint!(rest::put_secret),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/secrets",
        op: &op::SECRET_LIST,
        summary: "List the project's secrets (names, versions, bindings)",
        request: None,
        query: PAGING,
        reply: ok(schema::<ListPage<SecretResource>>),
        endpoint: endpoint!(rest::list_secrets),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/secrets/{name}",
        op: &op::SECRET_GET,
        summary: "Get a secret's metadata",
        request: None,
        query: &[],
        reply: ok(schema::<SecretResource>),
        endpoint: endpoint!(rest::get_secret),
    },
    Route {
        method: HttpMethod::Delete,
        path: "/v1/secrets/{name}",
        op: &op::SECRET_DELETE,
        summary: "Delete a secret and all its versions",
        request: None,
        query: &[],
        reply: NO_CONTENT,
        endpoint: endpoint!(rest::delete_secret),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/secrets:rewrap",
        op: &op::SECRET_REWRAP,
        summary: "Re-wrap every project's data key with the current master key (or, with new_data_keys, \
                  replace the data keys and re-encrypt every secret version)",
        request: None,
        query: REWRAP_QUERY,
        reply: ok(schema::<RewrapResult>),
        endpoint: endpoint!(rest::rewrap_secrets),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/cluster/status",
        op: &op::CLUSTER_STATUS,
        summary: "The coordinator cluster as this member sees it",
        request: None,
        query: &[],
        reply: ok(schema::<ClusterOverview>),
        endpoint: endpoint!(rest::cluster_status),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/cluster/members",
        op: &op::MEMBER_LIST,
        summary: "List coordinator members",
        request: None,
        query: &[],
        reply: ok(schema::<ListPage<MemberStatus>>),
        endpoint: endpoint!(rest::list_members),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/cluster/members",
        op: &op::MEMBER_ADD,
        summary: "Add a coordinator (as a learner, then a voter unless voter is false)",
        request: Some(schema::<AddMemberRequest>),
        query: &[],
        reply: created(schema::<MemberStatus>),
        endpoint: endpoint!(rest::add_member),
    },
    Route {
        method: HttpMethod::Delete,
        path: "/v1/cluster/members/{id}",
        op: &op::MEMBER_REMOVE,
        summary: "Remove a coordinator",
        request: None,
        query: &[],
        reply: NO_CONTENT,
        endpoint: endpoint!(rest::remove_member),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/nodes",
        op: &op::NODE_LIST,
        summary: "List the nodes agents registered: resources, GPUs, labels, idle GPUs, health and lease epoch",
        request: None,
        query: PAGING,
        reply: ok(schema::<ListPage<NodeView>>),
        endpoint: endpoint!(rest::list_nodes),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/nodes/{region}/{cluster}/{node}:drain",
        op: &op::NODE_DRAIN,
        summary: "Drain a node: the scheduler places no new work on it; jobs already there keep running",
        request: None,
        query: &[],
        reply: ok(schema::<NodeView>),
        endpoint: endpoint!(rest::drain_node),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/nodes/{region}/{cluster}/{node}:undrain",
        op: &op::NODE_UNDRAIN,
        summary: "Undrain a node: it receives new work again",
        request: None,
        query: &[],
        reply: ok(schema::<NodeView>),
        endpoint: endpoint!(rest::undrain_node),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/nodes/{region}/{cluster}/{node}:approve",
        op: &op::NODE_APPROVE,
        summary: "Approve a node (pending, or quarantined for reporting more than was approved) with the resources and labels it reports now",
        request: None,
        query: &[],
        reply: ok(schema::<NodeView>),
        endpoint: endpoint!(admission::approve_node),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/clusters/{region}/{cluster}/policy",
        op: &op::CLUSTER_POLICY_SET,
        summary: "Set whether nodes new to a cluster are approved on arrival (otherwise they wait for approval)",
        request: Some(schema::<ClusterPolicyRequest>),
        query: &[],
        reply: ok(schema::<ClusterPolicyView>),
        endpoint: endpoint!(admission::set_cluster_policy),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/denied-identities",
        op: &op::IDENTITY_DENY_LIST,
        summary: "List the mesh deny-list: identities and certificates every coordinator and agent refuses",
        request: None,
        query: PAGING,
        reply: ok(schema::<ListPage<DeniedIdentity>>),
        endpoint: endpoint!(admission::list_denied),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/denied-identities",
        op: &op::IDENTITY_DENY,
        summary: "Deny an identity, a certificate (by serial) or a node's agent: refused at once, its open connections closed within seconds",
        request: Some(schema::<DenyIdentityRequest>),
        query: &[],
        reply: created(schema::<DeniedIdentity>),
        endpoint: endpoint!(admission::deny_identity),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/denied-identities:remove",
        op: &op::IDENTITY_ALLOW,
        summary: "Remove a deny-list entry",
        request: Some(schema::<AllowIdentityRequest>),
        query: &[],
        reply: ok(schema::<DeniedIdentity>),
        endpoint: endpoint!(admission::allow_identity),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/jobs",
        op: &op::JOB_SUBMIT,
        summary: "Submit a job to the project; it starts pending until the scheduler places it",
        request: Some(schema::<SubmitJobRequest>),
        query: &[],
        reply: created(schema::<JobView>),
        endpoint: endpoint!(rest::submit_job),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/jobs",
        op: &op::JOB_LIST,
        summary: "List the project's jobs in id order, optionally in one state",
        request: None,
        query: JOB_LIST_QUERY,
        reply: ok(schema::<ListPage<JobView>>),
        endpoint: endpoint!(rest::list_jobs),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/jobs/{id}",
        op: &op::JOB_GET,
        summary: "Get a job: state, where it runs, every attempt and why it is still pending",
        request: None,
        query: &[],
        reply: ok(schema::<JobView>),
        endpoint: endpoint!(rest::get_job),
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/jobs/{id}:cancel",
        op: &op::JOB_CANCEL,
        summary: "Cancel a job: a pending one at once, a running one by stopping it on its node",
        request: None,
        query: &[],
        reply: ok(schema::<JobView>),
        endpoint: endpoint!(rest::cancel_job),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/jobs/{id}/logs",
        op: &op::JOB_LOGS,
        summary: "Read a job attempt's stdout or stderr from the agent that ran it, from an offset",
        request: None,
        query: JOB_LOGS_QUERY,
        reply: ok(schema::<JobLogsView>),
        endpoint: endpoint!(rest::job_logs),
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/usage",
        op: &op::USAGE_GET,
        summary: "The project's reserved CPU-, memory- and GPU-seconds per job over a time range",
        request: None,
        query: USAGE_QUERY,
        reply: ok(schema::<UsageReport>),
        endpoint: endpoint!(rest::usage),
    },
];

/// One gRPC method and its operation.
pub(crate) struct GrpcMethod {
    /// `/<package>.<Service>/<Method>`, as it appears in the HTTP/2 path.
    pub(crate) path: &'static str,
    pub(crate) op: &'static Operation,
}

const fn grpc(path: &'static str, op: &'static Operation) -> GrpcMethod {
    GrpcMethod { path, op }
}

/// Every gRPC method of the admin API.
pub(crate) static GRPC_METHODS: &[GrpcMethod] = &[
    grpc(
        "/meridian.v1.ProjectService/CreateProject",
        &op::PROJECT_CREATE,
    ),
    grpc("/meridian.v1.ProjectService/GetProject", &op::PROJECT_GET),
    grpc(
        "/meridian.v1.ProjectService/ListProjects",
        &op::PROJECT_LIST,
    ),
    grpc(
        "/meridian.v1.ProjectService/DeleteProject",
        &op::PROJECT_DELETE,
    ),
    grpc(
        "/meridian.v1.ProjectService/SetProjectPolicy",
        &op::PROJECT_POLICY_SET,
    ),
    grpc(
        "/meridian.v1.PrincipalService/ListPrincipals",
        &op::PRINCIPAL_LIST,
    ),
    grpc(
        "/meridian.v1.PrincipalService/CreateServiceAccount",
        &op::PRINCIPAL_CREATE,
    ),
    grpc("/meridian.v1.PrincipalService/WhoAmI", &op::WHOAMI),
    grpc("/meridian.v1.KeyService/CreateKey", &op::KEY_CREATE),
    grpc("/meridian.v1.KeyService/GetKey", &op::KEY_GET),
    grpc("/meridian.v1.KeyService/ListKeys", &op::KEY_LIST),
    grpc("/meridian.v1.KeyService/RevokeKey", &op::KEY_REVOKE),
    grpc(
        "/meridian.v1.RoleBindingService/CreateRoleBinding",
        &op::BINDING_CREATE,
    ),
    grpc(
        "/meridian.v1.RoleBindingService/ListRoleBindings",
        &op::BINDING_LIST,
    ),
    grpc(
        "/meridian.v1.RoleBindingService/DeleteRoleBinding",
        &op::BINDING_DELETE,
    ),
    grpc("/meridian.v1.AuditService/ListAudit", &op::AUDIT_LIST),
    grpc("/meridian.v1.AuditService/VerifyAudit", &op::AUDIT_VERIFY),
    grpc("/meridian.v1.SecretService/PutSecret", &op::SECRET_PUT),
    grpc("/meridian.v1.SecretService/GetSecret", &op::SECRET_GET),
    grpc("/meridian.v1.SecretService/ListSecrets", &op::SECRET_LIST),
    grpc(
        "/meridian.v1.SecretService/DeleteSecret",
        &op::SECRET_DELETE,
    ),
    grpc(
        "/meridian.v1.SecretService/RewrapSecrets",
        &op::SECRET_REWRAP,
    ),
    grpc(
        "/meridian.v1.ClusterService/GetClusterStatus",
        &op::CLUSTER_STATUS,
    ),
    grpc(
        "/meridian.v1.ClusterService/ListClusterMembers",
        &op::MEMBER_LIST,
    ),
    grpc(
        "/meridian.v1.ClusterService/AddClusterMember",
        &op::MEMBER_ADD,
    ),
    grpc(
        "/meridian.v1.ClusterService/RemoveClusterMember",
        &op::MEMBER_REMOVE,
    ),
    grpc("/meridian.v1.JobService/SubmitJob", &op::JOB_SUBMIT),
    grpc("/meridian.v1.JobService/GetJob", &op::JOB_GET),
    grpc("/meridian.v1.JobService/ListJobs", &op::JOB_LIST),
    grpc("/meridian.v1.JobService/CancelJob", &op::JOB_CANCEL),
    grpc("/meridian.v1.JobService/ReadJobLogs", &op::JOB_LOGS),
    grpc("/meridian.v1.UsageService/GetUsage", &op::USAGE_GET),
    grpc(
        "/meridian.v1.IdentityService/DenyIdentity",
        &op::IDENTITY_DENY,
    ),
    grpc(
        "/meridian.v1.IdentityService/ListDeniedIdentities",
        &op::IDENTITY_DENY_LIST,
    ),
    grpc(
        "/meridian.v1.IdentityService/AllowIdentity",
        &op::IDENTITY_ALLOW,
    ),
    grpc("/meridian.v1.NodeService/ListNodes", &op::NODE_LIST),
    grpc("/meridian.v1.NodeService/DrainNode", &op::NODE_DRAIN),
    grpc("/meridian.v1.NodeService/UndrainNode", &op::NODE_UNDRAIN),
    grpc("/meridian.v1.NodeService/ApproveNode", &op::NODE_APPROVE),
    grpc(
        "/meridian.v1.NodeService/SetClusterPolicy",
        &op::CLUSTER_POLICY_SET,
    ),
];

/// The gRPC method at `path`, if the table has it.
pub(crate) fn grpc_method(path: &str) -> Option<&'static GrpcMethod> {
    GRPC_METHODS.iter().find(|m| m.path == path)
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

/// Builds the REST router from [`ROUTES`]; unknown paths answer 404 and wrong methods 405, as JSON.
pub(crate) fn build_router(service: AdminService) -> Router {
    let mut router: Router<AdminService> = Router::new().without_v07_checks();
    for route in ROUTES {
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
        assert!(!ROUTES.is_empty());
        for route in ROUTES {
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
            assert!(ROUTES.iter().any(|r| r.path == path), "{path} is missing");
        }
    }

    #[test]
    fn routes_are_unique_and_well_formed() {
        let mut seen = BTreeSet::new();
        let mut ops = BTreeSet::new();
        for route in ROUTES {
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
        let table: BTreeSet<String> = GRPC_METHODS.iter().map(|m| m.path.to_owned()).collect();
        assert_eq!(declared, table, "admin.proto and GRPC_METHODS disagree");
        for m in GRPC_METHODS {
            assert!(
                ROUTES.iter().any(|r| std::ptr::eq(r.op, m.op)),
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
        for route in ROUTES {
            let alias = REST_ALIASES
                .iter()
                .find(|(method, path, _)| *method == route.method && *path == route.path);
            if let Some((_, path, twin)) = alias {
                assert_eq!(
                    route.op.policy, twin.policy,
                    "{path} and its twin differ in policy"
                );
                assert!(
                    GRPC_METHODS.iter().any(|m| std::ptr::eq(m.op, *twin)),
                    "{path} aliases an operation without a gRPC method"
                );
                continue;
            }
            let twin = GRPC_METHODS.iter().any(|m| std::ptr::eq(m.op, route.op));
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
                ROUTES.iter().any(|r| r.path == *path),
                "{path} is listed as REST-only but is not a route"
            );
        }
    }

    #[test]
    fn job_routes_carry_the_job_policies() {
        use crate::authz::Action;
        let policy = |method: HttpMethod, path: &str| {
            ROUTES
                .iter()
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
        assert_eq!(router_path("/v1/jobs/{id}:cancel"), "/v1/jobs/{id}/:cancel");
    }

    #[test]
    fn only_a_platform_admin_changes_a_project_policy() {
        use crate::authz::{Action, Role};
        let route = ROUTES
            .iter()
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
            let route = ROUTES
                .iter()
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
