//! Shared helpers of the `jobs_*` tests: certificates for the mesh and attempts as a coordinator
//! assigns them.
#![allow(dead_code)]

use std::time::Duration;

use agent::jobs::Assignment;

pub const TRUST_DOMAIN: &str = "logs-test.meridian.local";
pub const CALL: Duration = Duration::from_secs(5);

pub fn tls_for(ca: &certs::CertificateAuthority, identity: certs::Identity) -> certs::TlsIdentity {
    // Only coordinators and gateways may carry host names; the mesh identifies peers by URI SAN.
    let leaf = ca
        .issue(&certs::LeafRequest::new(
            identity,
            Duration::from_secs(3_600),
        ))
        .expect("issue leaf");
    certs::TlsIdentity::from_pem(ca.cert_pem(), &leaf.cert_pem, &leaf.key_pem).expect("tls")
}

pub fn agent_identity(node: &str) -> certs::Identity {
    certs::Identity::agent(TRUST_DOMAIN, "eu", "eu1", node).expect("agent identity")
}

pub fn assignment_for(job_id: &str) -> Assignment {
    Assignment {
        job_id: job_id.into(),
        attempt: 1,
        replica: 0,
        replicas: 0,
        replica_hosts: vec![],
        project_id: "p".into(),
        command: "sh".into(),
        args: vec![],
        env: Default::default(),
        working_dir: String::new(),
        cpu_millis: 0,
        memory_bytes: 0,
        gpu_uuids: vec![],
        timeout_ms: 0,
        cancel: false,
        cancel_grace_ms: 0,
        secret_env: Default::default(),
        launch_error: String::new(),
        network: String::new(),
        secrets_in_env: true,
    }
}
