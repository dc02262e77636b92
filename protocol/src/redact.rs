//! `Debug` for the generated messages that carry secret values or tokens (listed in `build.rs`): every
//! field is printed as usual except those values, which show as `<redacted>` (map keys, which are only
//! environment variable names, stay visible). A log line or a panic message that prints one of these
//! messages therefore never discloses a secret.

use std::collections::BTreeMap;
use std::fmt;

use crate::pb;

/// Shown instead of a secret value.
const REDACTED: &str = "<redacted>";

/// The names of a secret map with their values hidden, in a stable order.
fn names_only<'a>(map: impl Iterator<Item = &'a String>) -> BTreeMap<&'a str, &'static str> {
    map.map(|name| (name.as_str(), REDACTED)).collect()
}

impl fmt::Debug for pb::JobAssignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured without `..`: a field added to the message must be added here too.
        let pb::JobAssignment {
            job_id,
            attempt,
            project_id,
            command,
            args,
            env,
            working_dir,
            cpu_millis,
            memory_bytes,
            gpu_uuids,
            timeout_ms,
            cancel,
            cancel_grace_ms,
            secret_env,
            launch_error,
            replica,
            replicas,
            replica_hosts,
            network,
            secrets_in_env,
        } = self;
        f.debug_struct("JobAssignment")
            .field("job_id", job_id)
            .field("attempt", attempt)
            .field("project_id", project_id)
            .field("command", command)
            .field("args", args)
            .field("env", env)
            .field("working_dir", working_dir)
            .field("cpu_millis", cpu_millis)
            .field("memory_bytes", memory_bytes)
            .field("gpu_uuids", gpu_uuids)
            .field("timeout_ms", timeout_ms)
            .field("cancel", cancel)
            .field("cancel_grace_ms", cancel_grace_ms)
            .field("secret_env", &names_only(secret_env.keys()))
            .field("launch_error", launch_error)
            .field("replica", replica)
            .field("replicas", replicas)
            .field("replica_hosts", replica_hosts)
            .field("network", network)
            .field("secrets_in_env", secrets_in_env)
            .finish()
    }
}

impl fmt::Debug for pb::CreateKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pb::CreateKeyResponse {
            token: _,
            key,
            principal,
        } = self;
        f.debug_struct("CreateKeyResponse")
            .field("token", &REDACTED)
            .field("key", key)
            .field("principal", principal)
            .finish()
    }
}

impl fmt::Debug for pb::PutSecretRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pb::PutSecretRequest {
            name,
            value: _,
            bindings,
        } = self;
        f.debug_struct("PutSecretRequest")
            .field("name", name)
            .field("value", &REDACTED)
            .field("bindings", bindings)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_and_tokens_never_print() {
        let assignment = pb::JobAssignment {
            job_id: "job_1".into(),
            secret_env: [("S3_KEY".to_owned(), "hunter2-value".to_owned())].into(),
            network: "none".into(),
            ..Default::default()
        };
        let text = format!("{assignment:?} {assignment:#?}");
        assert!(!text.contains("hunter2-value"), "{text}");
        assert!(text.contains("S3_KEY") && text.contains("job_1") && text.contains("none"));

        let created = pb::CreateKeyResponse {
            token: "mrd_k1_supersecrettoken".into(),
            ..Default::default()
        };
        let text = format!("{created:?}");
        assert!(!text.contains("supersecrettoken"), "{text}");

        let put = pb::PutSecretRequest {
            name: "db".into(),
            value: "p4ssw0rd-value".into(),
            bindings: None,
        };
        let text = format!("{put:?}");
        assert!(
            !text.contains("p4ssw0rd-value") && text.contains("db"),
            "{text}"
        );
    }
}
