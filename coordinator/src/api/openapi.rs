//! The OpenAPI 3.0 document of the REST API, generated from the route table: paths, methods, operation ids,
//! summaries, parameters, request and response schemas, the bearer security scheme and the error schema.
//!
//! Must describe exactly the routes of `routes::ROUTES` (a test checks both directions) and never list a
//! route the router does not serve.

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use super::auth::{action_name, PROJECT_HEADER};
use super::routes::{Policy, Route, ROUTES};

/// The document, built once.
pub(crate) fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| build(ROUTES))
}

/// The document as JSON text.
pub(crate) fn document_json() -> String {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| document().to_string()).clone()
}

/// The `{name}` parameters of a path template.
fn path_params(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        out.push(&rest[start + 1..start + len]);
        rest = &rest[start + len + 1..];
    }
    out
}

fn tag(path: &str) -> &str {
    let trimmed = path.trim_start_matches("/v1/").trim_start_matches('/');
    let first = trimmed.split(['/', ':', '.']).next().unwrap_or("");
    if first.is_empty() {
        "meta"
    } else {
        first
    }
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn operation(route: &Route) -> Value {
    let mut op = Map::new();
    op.insert("operationId".into(), json!(route.op.name));
    op.insert("summary".into(), json!(route.summary));
    op.insert("tags".into(), json!([tag(route.path)]));

    let mut params: Vec<Value> = path_params(route.path)
        .into_iter()
        .map(|p| json!({ "name": p, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect();
    params.extend(route.query.iter().map(|(name, description)| {
        json!({ "name": name, "in": "query", "required": false, "description": description,
                "schema": { "type": "string" } })
    }));
    if let Policy::Authenticated(action) = route.op.policy {
        if !action.is_platform() {
            params.push(json!({
                "name": PROJECT_HEADER, "in": "header", "required": false,
                "description": "Project (name or id) to act in; defaults to the key's own project.",
                "schema": { "type": "string" }
            }));
        }
    }
    if !params.is_empty() {
        op.insert("parameters".into(), Value::Array(params));
    }
    if let Some(request) = route.request {
        op.insert(
            "requestBody".into(),
            json!({ "required": true, "content": { "application/json": { "schema": schema_ref(request) } } }),
        );
    }

    let mut responses = Map::new();
    let mut success = json!({ "description": "Success" });
    match route.reply.schema {
        Some(schema) => {
            success["content"] = json!({ route.reply.media: { "schema": schema_ref(schema) } });
        }
        None if route.reply.status != 204 => {
            success["content"] = json!({ route.reply.media: { "schema": { "type": "string" } } });
        }
        None => {}
    }
    responses.insert(route.reply.status.to_string(), success);
    let error = json!({ "description": "Error", "content": { "application/json": { "schema": schema_ref("Error") } } });
    responses.insert("default".into(), error);
    op.insert("responses".into(), Value::Object(responses));

    match route.op.policy {
        Policy::Public => {
            op.insert("security".into(), json!([]));
        }
        Policy::Authenticated(action) => {
            op.insert("security".into(), json!([{ "bearer": [] }]));
            op.insert("x-meridian-action".into(), json!(action_name(action)));
        }
    }
    Value::Object(op)
}

fn build(routes: &[Route]) -> Value {
    let mut paths = Map::new();
    for route in routes {
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(methods) = entry {
            methods.insert(route.method.openapi().to_owned(), operation(route));
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Meridian admin API",
            "version": "v1",
            "description": "Projects, API keys, role bindings, the audit log, secrets, the coordinator \
                            cluster, nodes, jobs and usage. Errors are {\"error\": {\"code\", \"message\"}}.",
        },
        "security": [{ "bearer": [] }],
        "paths": Value::Object(paths),
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "An API key, mrd_<id>_<secret>." }
            },
            "schemas": schemas(),
        },
    })
}

fn string() -> Value {
    json!({ "type": "string" })
}

fn integer() -> Value {
    json!({ "type": "integer", "format": "int64", "minimum": 0 })
}

fn boolean() -> Value {
    json!({ "type": "boolean" })
}

fn number() -> Value {
    json!({ "type": "number", "format": "double" })
}

fn signed() -> Value {
    json!({ "type": "integer", "format": "int32" })
}

fn string_map() -> Value {
    json!({ "type": "object", "additionalProperties": { "type": "string" } })
}

fn nullable(mut v: Value) -> Value {
    v["nullable"] = json!(true);
    v
}

fn array(items: Value) -> Value {
    json!({ "type": "array", "items": items })
}

fn object(required: &[&str], props: &[(&str, Value)]) -> Value {
    let properties: Map<String, Value> = props
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    json!({ "type": "object", "required": required, "properties": properties })
}

fn list_of(item: &str) -> Value {
    object(
        &["items", "next_page_token"],
        &[
            ("items", array(schema_ref(item))),
            ("next_page_token", string()),
        ],
    )
}

fn schemas() -> Value {
    let project = object(
        &["id", "name", "description", "created_at", "policy"],
        &[
            ("id", string()),
            ("name", string()),
            ("description", string()),
            ("created_at", integer()),
            ("policy", schema_ref("ProjectPolicy")),
        ],
    );
    let network = json!({ "type": "string", "enum": ["none", "egress"],
        "description": "none: loopback only; egress: outbound connections (never to the coordinators or the cloud metadata address)" });
    let ceiling = json!({ "type": "integer", "minimum": 0, "maximum": 1000,
        "description": "Other projects' preemptible jobs below this priority (and below the preempting job's own) may be evicted for this project's jobs; 0 (default): never" });
    let policy_fields = |nullable_fields: bool| {
        let n = |v: Value| if nullable_fields { nullable(v) } else { v };
        vec![
            (
                "max_pending_jobs",
                n(
                    json!({ "type": "integer", "minimum": 0, "description": "Most jobs pending at once; one more submission is refused (429 quota_exceeded)" }),
                ),
            ),
            (
                "max_running_cpu_millis",
                n(
                    json!({ "type": "integer", "minimum": 0, "description": "Most CPU (thousandths of a core) reserved by scheduled and running jobs together; a job that would exceed it waits" }),
                ),
            ),
            (
                "max_running_memory_bytes",
                n(
                    json!({ "type": "integer", "minimum": 0, "description": "Most memory reserved by scheduled and running jobs together" }),
                ),
            ),
            (
                "max_running_gpus",
                n(
                    json!({ "type": "integer", "minimum": 0, "description": "Most GPUs held by scheduled and running jobs together" }),
                ),
            ),
            (
                "max_spec_bytes",
                n(
                    json!({ "type": "integer", "minimum": 0, "description": "Most bytes of job specs (their text fields plus 256 each) held by unfinished jobs together" }),
                ),
            ),
            ("network", n(network.clone())),
            ("preemption_ceiling", n(ceiling.clone())),
        ]
    };
    let project_policy = object(
        &[
            "max_pending_jobs",
            "max_running_cpu_millis",
            "max_running_memory_bytes",
            "max_running_gpus",
            "max_spec_bytes",
            "network",
            "preemption_ceiling",
        ],
        &policy_fields(false),
    );
    let policy_update = object(&[], &policy_fields(true));
    let principal = object(
        &["id", "kind", "name", "project_id", "created_at", "disabled"],
        &[
            ("id", string()),
            (
                "kind",
                json!({ "type": "string", "enum": ["user", "service_account"] }),
            ),
            ("name", string()),
            (
                "project_id",
                json!({ "type": "string", "nullable": true,
                        "description": "The owning project; null for a platform principal (the bootstrap platform-admin)." }),
            ),
            ("created_at", integer()),
            ("disabled", boolean()),
        ],
    );
    let role = json!({ "type": "string", "enum": ["viewer", "editor", "deployer", "project-admin", "platform-admin", "secret-user"] });
    let key = object(
        &[
            "id",
            "prefix",
            "principal_id",
            "project_id",
            "name",
            "last4",
            "created_at",
        ],
        &[
            ("id", string()),
            ("prefix", string()),
            ("principal_id", string()),
            ("project_id", string()),
            ("name", string()),
            ("last4", string()),
            (
                "roles",
                json!({ "type": "array", "items": role.clone(), "nullable": true,
                        "description": "The roles the key is narrowed to: it grants only what one of them allows (and the principal's bindings grant). Null: all of the principal's roles." }),
            ),
            (
                "project_scoped",
                json!({ "type": "boolean",
                        "description": "The key acts only in project_id: other projects answer 404, platform actions 403." }),
            ),
            ("created_at", integer()),
            ("expires_at", nullable(integer())),
            ("revoked_at", nullable(integer())),
        ],
    );
    let binding = object(
        &["id", "principal_id", "role", "scope", "created_at"],
        &[
            ("id", string()),
            ("principal_id", string()),
            ("role", role.clone()),
            ("scope", string()),
            ("project_id", nullable(string())),
            ("created_at", integer()),
        ],
    );
    let audit = object(
        &[
            "seq",
            "at_ms",
            "actor",
            "action",
            "target",
            "outcome",
            "detail",
            "prev_hash",
            "hash",
        ],
        &[
            ("seq", integer()),
            ("at_ms", integer()),
            (
                "actor",
                object(
                    &["name"],
                    &[("principal_id", nullable(string())), ("name", string())],
                ),
            ),
            ("action", string()),
            ("project", nullable(string())),
            ("target", string()),
            (
                "outcome",
                json!({ "type": "string", "enum": ["success", "refused", "denied"] }),
            ),
            ("detail", string()),
            ("prev_hash", string()),
            ("hash", string()),
        ],
    );
    let secret = object(
        &[
            "id",
            "project_id",
            "name",
            "latest_version",
            "versions",
            "bindings",
            "created_at",
            "updated_at",
        ],
        &[
            ("id", string()),
            ("project_id", string()),
            ("name", string()),
            ("latest_version", integer()),
            ("versions", array(schema_ref("SecretVersion"))),
            ("bindings", array(string())),
            ("created_at", integer()),
            ("updated_at", integer()),
        ],
    );
    let member = object(
        &["id", "name", "raft_addr", "admin_addr", "voter"],
        &[
            ("id", integer()),
            ("name", string()),
            ("raft_addr", string()),
            ("admin_addr", string()),
            ("voter", boolean()),
        ],
    );
    let job_state = json!({ "type": "string",
        "enum": ["pending", "scheduled", "running", "succeeded", "failed", "cancelled", "lost"] });
    let resource_request = object(
        &["cpu_millis", "memory_bytes", "gpus"],
        &[
            ("cpu_millis", integer()),
            ("memory_bytes", integer()),
            ("gpus", integer()),
            ("gpu_model", nullable(string())),
            ("gpu_min_memory_mib", nullable(integer())),
        ],
    );
    let constraints = object(
        &["labels"],
        &[
            ("region", nullable(string())),
            ("cluster", nullable(string())),
            ("labels", string_map()),
        ],
    );
    let locality = object(
        &["region"],
        &[("region", string()), ("cluster", nullable(string()))],
    );
    let retry = object(
        &["max_attempts", "on_failure"],
        &[("max_attempts", integer()), ("on_failure", boolean())],
    );
    let attempt = object(
        &[
            "attempt",
            "replica",
            "node",
            "region",
            "cluster",
            "gpu_uuids",
            "resources",
            "scheduled_at",
            "detail",
        ],
        &[
            ("attempt", integer()),
            (
                "replica",
                json!({ "type": "integer", "minimum": 0,
                        "description": "0-based; a gang job's attempt has one entry per replica." }),
            ),
            ("node", string()),
            ("region", string()),
            ("cluster", string()),
            ("gpu_uuids", array(string())),
            (
                "resources",
                object(
                    &["cpu_millis", "memory_bytes", "gpus"],
                    &[
                        ("cpu_millis", integer()),
                        ("memory_bytes", integer()),
                        ("gpus", integer()),
                    ],
                ),
            ),
            ("scheduled_at", integer()),
            ("started_at", nullable(integer())),
            ("ended_at", nullable(integer())),
            (
                "outcome",
                json!({ "type": "string", "nullable": true,
                        "enum": ["succeeded", "failed", "cancelled", "lost", "preempted", "stopped"] }),
            ),
            ("exit_code", nullable(signed())),
            ("signal", nullable(signed())),
            ("cpu_time_ms", nullable(integer())),
            ("max_rss_bytes", nullable(integer())),
            ("detail", string()),
        ],
    );
    let job = object(
        &[
            "id",
            "project_id",
            "name",
            "state",
            "command",
            "args",
            "env",
            "resources",
            "replicas",
            "constraints",
            "priority",
            "retry",
            "attempt_count",
            "attempts",
            "cancel_requested",
            "created_at",
        ],
        &[
            ("id", string()),
            ("project_id", string()),
            ("name", string()),
            ("state", job_state.clone()),
            ("command", string()),
            ("args", array(string())),
            ("env", string_map()),
            ("working_dir", nullable(string())),
            ("resources", schema_ref("ResourceRequest")),
            ("replicas", integer()),
            ("constraints", schema_ref("JobConstraints")),
            ("data_locality", nullable(schema_ref("DataLocality"))),
            ("priority", signed()),
            ("preemption", boolean()),
            ("preemptible", boolean()),
            (
                "strategy",
                json!({ "type": "string", "enum": ["bin_pack", "spread"] }),
            ),
            ("retry", schema_ref("RetryPolicy")),
            ("timeout_secs", nullable(integer())),
            ("cancel_grace_secs", integer()),
            (
                "secrets",
                json!({ "type": "object", "additionalProperties": { "type": "string" } }),
            ),
            ("node", nullable(string())),
            ("region", nullable(string())),
            ("cluster", nullable(string())),
            ("attempt_count", integer()),
            ("attempts", array(schema_ref("JobAttempt"))),
            ("pending_reason", nullable(string())),
            ("cancel_requested", boolean()),
            ("exit_code", nullable(signed())),
            ("secrets_env", boolean()),
            ("created_by", string()),
            (
                "principal_id",
                json!({ "type": "string", "nullable": true,
                        "description": "The job's workload identity: the principal that submitted it." }),
            ),
            ("created_at", integer()),
            ("updated_at", integer()),
            ("finished_at", nullable(integer())),
        ],
    );
    let cpu = json!({ "description": "CPU cores: a number (0.5) or a string (\"2\", \"500m\").",
                      "oneOf": [{ "type": "number" }, { "type": "string" }] });
    let memory = json!({ "description": "Bytes, or a size such as \"512Mi\", \"2G\" or \"1GiB\".",
                         "oneOf": [{ "type": "integer" }, { "type": "string" }] });
    let submit = object(
        &["command"],
        &[
            ("name", string()),
            ("command", string()),
            ("args", array(string())),
            ("env", string_map()),
            (
                "working_dir",
                json!({ "type": "string", "description": "An absolute path." }),
            ),
            (
                "resources",
                object(
                    &[],
                    &[
                        ("cpu", cpu),
                        ("cpu_millis", integer()),
                        ("memory", memory),
                        ("memory_bytes", integer()),
                        (
                            "gpus",
                            json!({ "type": "integer", "minimum": 0, "maximum": 64 }),
                        ),
                        ("gpu_model", string()),
                        ("gpu_min_memory_mib", integer()),
                    ],
                ),
            ),
            (
                "replicas",
                json!({ "type": "integer", "minimum": 1, "maximum": 64, "default": 1,
                        "description": "Processes per attempt, each with `resources`; more than one is a \
                                        gang: all placed or none, and one that fails or is lost stops the \
                                        others." }),
            ),
            ("constraints", schema_ref("JobConstraints")),
            ("data_locality", schema_ref("DataLocality")),
            (
                "priority",
                json!({ "type": "integer", "minimum": -1000, "maximum": 1000 }),
            ),
            ("preemption", boolean()),
            ("preemptible", boolean()),
            (
                "strategy",
                json!({ "type": "string", "enum": ["bin_pack", "spread"] }),
            ),
            (
                "retry",
                object(
                    &[],
                    &[
                        (
                            "max_attempts",
                            json!({ "type": "integer", "minimum": 1, "maximum": 20 }),
                        ),
                        ("on_failure", boolean()),
                    ],
                ),
            ),
            ("timeout_secs", json!({ "type": "integer", "minimum": 1 })),
            (
                "cancel_grace_secs",
                json!({ "type": "integer", "minimum": 0, "maximum": 3600 }),
            ),
            (
                "secrets",
                json!({ "type": "object", "additionalProperties": { "type": "string" },
                        "description": "Environment variable name → project secret. Needs use-secrets; each secret must be bound to the submitting principal (principal:ID, or principal:ID/job:PATTERN matching the job's name)." }),
            ),
            (
                "secrets_env",
                json!({ "type": "boolean", "default": false,
                        "description": "Also pass the secrets as environment variables; by default they reach the job only as files readable by it." }),
            ),
        ],
    );
    let logs = object(
        &[
            "attempt",
            "replica",
            "node",
            "stream",
            "start_offset",
            "next_offset",
            "data",
            "job_state",
            "done",
        ],
        &[
            ("attempt", integer()),
            ("replica", integer()),
            ("node", string()),
            (
                "stream",
                json!({ "type": "string", "enum": ["stdout", "stderr"] }),
            ),
            ("start_offset", integer()),
            ("next_offset", integer()),
            ("data", string()),
            ("job_state", job_state),
            ("done", boolean()),
        ],
    );
    let usage_figures = [
        ("cpu_core_seconds", number()),
        ("memory_gib_seconds", number()),
        ("gpu_seconds", number()),
        ("cpu_time_seconds", number()),
    ];
    let mut job_usage_props = vec![("job_id", string()), ("name", string())];
    job_usage_props.extend(usage_figures.iter().cloned());
    let archived_figures = json!({
        "allOf": [schema_ref("UsageFigures")],
        "description": "The share of the totals that comes from purged jobs, kept per Unix hour: an hour \
                        entirely inside the range counts fully; one that straddles a bound counts its reserved \
                        resources in proportion to the overlap, and its CPU time when the hour starts inside \
                        the range. Per-job lines list live jobs only."
    });
    let mut usage_props = vec![
        ("project_id", string()),
        ("since", integer()),
        ("until", integer()),
        ("jobs", array(schema_ref("JobUsage"))),
        ("archived", archived_figures),
    ];
    usage_props.extend(usage_figures.iter().cloned());
    let gpu = object(
        &["uuid", "index", "model", "memory_mib", "healthy"],
        &[
            ("uuid", string()),
            ("index", integer()),
            ("model", string()),
            ("memory_mib", integer()),
            ("healthy", boolean()),
        ],
    );
    let idle_gpus = json!({ "type": "array", "items": { "type": "string" },
                            "description": "UUIDs of GPUs allocated to a job but near-idle." });
    let jobs = [
        ("Job", job),
        ("JobList", list_of("Job")),
        ("JobAttempt", attempt),
        ("ResourceRequest", resource_request),
        ("JobConstraints", constraints),
        ("DataLocality", locality),
        ("RetryPolicy", retry),
        ("SubmitJobRequest", submit),
        ("JobLogs", logs),
        ("JobUsage", object(&["job_id", "name"], &job_usage_props)),
        (
            "UsageFigures",
            object(
                &[
                    "cpu_core_seconds",
                    "memory_gib_seconds",
                    "gpu_seconds",
                    "cpu_time_seconds",
                ],
                &usage_figures,
            ),
        ),
        (
            "UsageReport",
            object(
                &["project_id", "since", "until", "jobs", "archived"],
                &usage_props,
            ),
        ),
        ("GpuDevice", gpu),
    ];
    let mut all = json!({
        "Error": object(&["error"], &[("error", object(&["code", "message"], &[
            ("code", json!({ "type": "string", "description": "invalid_argument, malformed_json, unauthenticated, permission_denied, not_found, already_exists, failed_precondition, conflict, method_not_allowed, payload_too_large, unsupported_media_type, unavailable (503, Retry-After; also too many connections), internal, quota_exceeded (429: a project quota), rate_limited (429, Retry-After: too many refused requests from this key or address), request_timeout (408: the body did not arrive in time)" })),
            ("message", string()),
        ]))]),
        "Health": object(&["status"], &[("status", string())]),
        "OpenApiDocument": { "type": "object" },
        "Project": project,
        "ProjectPolicy": project_policy,
        "ProjectPolicyUpdate": policy_update,
        "ProjectList": list_of("Project"),
        "CreateProjectRequest": object(&["name"], &[
            ("name", json!({ "type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$" })),
            ("description", nullable(string())),
        ]),
        "Principal": principal,
        "PrincipalList": list_of("Principal"),
        "CreateServiceAccountRequest": object(&["name"], &[("name", string())]),
        "ApiKey": key,
        "ApiKeyList": list_of("ApiKey"),
        "CreateKeyRequest": object(&["name"], &[
            ("name", string()),
            ("role", role.clone()),
            ("expires_in_seconds", json!({ "type": "integer", "nullable": true,
                "description": "Lifetime in seconds; without it (and without no_expiry) the coordinator's [keys] default_ttl (90 days)." })),
            ("no_expiry", json!({ "type": "boolean",
                "description": "A key that never expires; only platform-admins may ask for one." })),
            ("principal_id", nullable(string())),
            ("roles", json!({ "type": "array", "items": role.clone(), "nullable": true,
                "description": "Narrow the key to these roles (at least one): it grants only what they allow of the principal's rights." })),
            ("project_scoped", json!({ "type": "boolean",
                "description": "The key acts only in the request's project." })),
        ]),
        "CreatedKey": object(&["id", "token", "key", "principal"], &[
            ("id", string()),
            ("token", json!({ "type": "string", "description": "The bearer token; shown only once." })),
            ("key", schema_ref("ApiKey")),
            ("principal", schema_ref("Principal")),
            ("binding", nullable(schema_ref("RoleBinding"))),
        ]),
        "RoleBinding": binding,
        "RoleBindingList": list_of("RoleBinding"),
        "CreateRoleBindingRequest": object(&["principal_id", "role"], &[
            ("principal_id", string()),
            ("role", role),
            ("platform", boolean()),
        ]),
        "WhoAmI": object(&["principal", "key", "project", "bindings"], &[
            ("principal", schema_ref("Principal")),
            ("key", schema_ref("ApiKey")),
            ("project", schema_ref("Project")),
            ("bindings", array(schema_ref("RoleBinding"))),
        ]),
        "AuditRecord": audit,
        "AuditList": object(&["items", "next_page_token"], &[
            ("items", array(schema_ref("AuditRecord"))),
            ("next_page_token", string()),
            ("next_after_seq", nullable(integer())),
            ("archived_through_seq", nullable(integer())),
        ]),
        "AuditVerification": object(&["ok", "records", "archived_records", "live_records", "missing"], &[
            ("ok", boolean()),
            ("records", integer()),
            ("archived_records", integer()),
            ("live_records", integer()),
            ("missing", array(object(&["from_seq", "to_seq"], &[
                ("from_seq", integer()),
                ("to_seq", integer()),
            ]))),
            ("broken_at_seq", nullable(integer())),
            ("broken_segment", nullable(string())),
            ("error", nullable(string())),
        ]),
        "SecretVersion": object(&["version", "created_at"], &[("version", integer()), ("created_at", integer())]),
        "Secret": secret,
        "SecretList": list_of("Secret"),
        "PutSecretRequest": object(&["name", "value"], &[
            ("name", string()),
            ("value", json!({ "type": "string", "writeOnly": true })),
            ("bindings", json!({ "type": "array", "nullable": true, "items": { "type": "string" },
                "description": "Who may use the secret: principal:ID (jobs that principal or service account submits) or principal:ID/job:PATTERN (only those whose name matches; * is any run of characters). Absent: keep the current bindings." })),
        ]),
        "RewrapResult": object(&["projects", "master_key_id", "new_data_keys", "secret_versions"], &[
            ("projects", integer()),
            ("master_key_id", string()),
            ("new_data_keys", boolean()),
            ("secret_versions", integer()),
        ]),
        "ClusterMember": member,
        "ClusterMemberList": list_of("ClusterMember"),
        "AddClusterMemberRequest": object(&["id", "name", "raft_addr", "admin_addr"], &[
            ("id", integer()),
            ("name", string()),
            ("raft_addr", string()),
            ("admin_addr", string()),
            ("voter", boolean()),
        ]),
        "Node": object(&["key", "region", "cluster", "node", "cpu_cores", "memory_bytes", "gpu_count",
                         "agent_version", "lease_epoch", "health", "registered_at", "health_changed_at"], &[
            ("key", string()),
            ("region", string()),
            ("cluster", string()),
            ("node", string()),
            ("cpu_cores", integer()),
            ("memory_bytes", integer()),
            ("gpu_count", integer()),
            ("gpus", array(schema_ref("GpuDevice"))),
            ("labels", string_map()),
            ("idle_gpus", idle_gpus),
            ("os", string()),
            ("limit_mode", string()),
            ("rpc_addr", string()),
            ("agent_version", string()),
            ("lease_epoch", integer()),
            ("health", json!({ "type": "string", "enum": ["ready", "unreachable", "lost"] })),
            ("draining", boolean()),
            ("registered_at", integer()),
            ("health_changed_at", integer()),
            ("admission", json!({ "type": "string", "enum": ["approved", "pending_approval", "quarantined"] })),
            ("admission_reason", string()),
            ("approved", nullable(json!({ "type": "object", "description": "What was approved: cpu_cores, memory_bytes, gpu_count, gpus, labels." }))),
            ("denied", boolean()),
        ]),
        "NodeList": list_of("Node"),
        "ClusterStatus": object(&["node_id", "name", "state", "term", "applied_index", "members"], &[
            ("node_id", integer()),
            ("name", string()),
            ("state", string()),
            ("leader", nullable(integer())),
            ("term", integer()),
            ("applied_index", integer()),
            ("committed_index", nullable(integer())),
            ("members", array(schema_ref("ClusterMember"))),
            ("sites", array(schema_ref("FleetSite"))),
        ]),
        "FleetSite": object(&["region", "cluster", "nodes"], &[
            ("region", string()),
            ("cluster", string()),
            ("nodes", integer()),
            ("ready", integer()),
            ("unreachable", integer()),
            ("lost", integer()),
            ("cpu_cores", integer()),
            ("memory_bytes", integer()),
            ("gpus", integer()),
            ("gpu_models", json!({ "type": "object", "additionalProperties": { "type": "integer" } })),
            ("idle_gpus", integer()),
            ("active_jobs", integer()),
        ]),
    });
    if let Value::Object(map) = &mut all {
        map.extend(jobs.into_iter().map(|(k, v)| (k.to_owned(), v)));
        map.extend(
            super::admission::schemas()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v)),
        );
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k == "$ref" {
                        if let Some(s) = v.as_str() {
                            out.push(s.trim_start_matches("#/components/schemas/").to_owned());
                        }
                    } else {
                        refs(v, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_route_is_in_the_document_and_nothing_else() {
        let doc = document();
        let paths = doc["paths"].as_object().expect("paths is an object");
        let mut count = 0;
        for route in ROUTES {
            let op = &paths[route.path][route.method.openapi()];
            assert_eq!(
                op["operationId"],
                json!(route.op.name),
                "{} {}",
                route.method.openapi(),
                route.path
            );
            assert_eq!(op["summary"], json!(route.summary));
            let public = op["security"].as_array().is_some_and(Vec::is_empty);
            assert_eq!(public, route.op.policy == Policy::Public, "{}", route.path);
            assert!(op["responses"]["default"].is_object());
        }
        for methods in paths.values() {
            count += methods.as_object().map_or(0, Map::len);
        }
        assert_eq!(count, ROUTES.len());
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn every_referenced_schema_exists() {
        let doc = document();
        let mut names = Vec::new();
        refs(doc, &mut names);
        assert!(names.contains(&"Error".to_owned()));
        for name in names {
            assert!(
                doc["components"]["schemas"][&name].is_object(),
                "schema {name} is referenced but missing"
            );
        }
    }

    #[test]
    fn path_parameters_are_declared() {
        assert_eq!(path_params("/v1/keys/{id}:revoke"), vec!["id"]);
        assert_eq!(path_params("/v1/projects"), Vec::<&str>::new());
        let doc = document();
        let params = &doc["paths"]["/v1/keys/{id}:revoke"]["post"]["parameters"];
        assert_eq!(params[0]["name"], "id");
        assert_eq!(params[0]["in"], "path");
    }
}
