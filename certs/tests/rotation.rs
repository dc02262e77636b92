//! Certificate rotation on disk: a running `TlsIdentity` picks up rewritten files without a restart.

mod support;

use std::time::{Duration, SystemTime};

use certs::{Identity, TlsIdentity, TlsPaths};
use support::{ca, der_of, handshake, leaf, TD};

const ALPN: &[&[u8]] = &[b"meridian/1"];

/// Waits until `condition` holds, failing the test after `deadline`.
fn wait_for(deadline: Duration, mut condition: impl FnMut() -> bool) {
    if let Err(e) =
        testkit::eventually_blocking("the condition", deadline, || condition().then_some(()))
    {
        panic!("{e}");
    }
}

/// Moves a file's modification time forward, so a change is visible even on coarse-grained clocks.
fn bump_mtime(path: &std::path::Path) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
}

#[test]
fn rewritten_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let (ca_path, _) = ca.write_to(&dir.path().join("ca")).unwrap();
    let paths = TlsPaths {
        ca: ca_path,
        cert: dir.path().join("node.pem"),
        key: dir.path().join("node.key"),
    };
    let server_id = Identity::coordinator(TD, "c1").unwrap();
    let first = leaf(&ca, &server_id);
    first.write(&paths.cert, &paths.key).unwrap();

    let server = TlsIdentity::load(&paths).unwrap();
    assert_eq!(server.identity(), server_id);
    assert_eq!(server.certificate_chain()[0], der_of(&first.cert_pem));
    // Configurations built before the rotation must serve the new certificate too.
    let server_config = server.mtls_server_config(ALPN);
    let client = {
        let pair = leaf(&ca, &Identity::agent(TD, "r", "c", "n").unwrap());
        TlsIdentity::from_pem(ca.cert_pem(), &pair.cert_pem, &pair.key_pem).unwrap()
    };
    let (c, _) = handshake(client.mtls_client_config(ALPN), server_config.clone(), "c1").unwrap();
    assert_eq!(c.peer_certificates().unwrap()[0], der_of(&first.cert_pem));

    let second = leaf(&ca, &server_id);
    second.write(&paths.cert, &paths.key).unwrap();
    bump_mtime(&paths.cert);
    let expected = der_of(&second.cert_pem);
    wait_for(Duration::from_secs(10), || {
        server.certificate_chain()[0] == expected
    });

    let (c, _) = handshake(client.mtls_client_config(ALPN), server_config, "c1").unwrap();
    assert_eq!(c.peer_certificates().unwrap()[0], expected);
}

#[cfg(unix)]
#[test]
fn issued_key_file_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let issued = leaf(&ca, &Identity::operator(TD, "alice").unwrap());
    let cert = dir.path().join("alice.pem");
    let key = dir.path().join("alice.key");
    // A pre-existing, world-readable key file is replaced, not reused with its old mode.
    std::fs::write(&key, "old").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    issued.write(&cert, &key).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&cert), 0o644);
    assert_eq!(std::fs::read_to_string(&key).unwrap(), issued.key_pem);
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), issued.cert_pem);
}

#[test]
fn load_refuses_missing_or_foreign_material() {
    let dir = tempfile::tempdir().unwrap();
    let ours = ca();
    let theirs = ca();
    let (ca_path, _) = ours.write_to(&dir.path().join("ca")).unwrap();
    let paths = TlsPaths {
        ca: ca_path,
        cert: dir.path().join("node.pem"),
        key: dir.path().join("node.key"),
    };
    assert!(matches!(
        TlsIdentity::load(&paths),
        Err(certs::CertError::Io { .. })
    ));
    leaf(&theirs, &Identity::coordinator(TD, "c1").unwrap())
        .write(&paths.cert, &paths.key)
        .unwrap();
    assert!(matches!(
        TlsIdentity::load(&paths),
        Err(certs::CertError::Untrusted { .. })
    ));
}

#[cfg(unix)]
#[test]
fn a_private_key_that_others_may_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let (ca_path, ca_key) = ca.write_to(&dir.path().join("ca")).unwrap();
    let paths = TlsPaths {
        ca: ca_path.clone(),
        cert: dir.path().join("node.pem"),
        key: dir.path().join("node.key"),
    };
    leaf(&ca, &Identity::coordinator(TD, "c1").unwrap())
        .write(&paths.cert, &paths.key)
        .unwrap();
    assert!(TlsIdentity::load(&paths).is_ok(), "0600 loads");
    assert!(certs::CertificateAuthority::load(&ca_path, &ca_key).is_ok());
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&paths.key, std::fs::Permissions::from_mode(mode)).unwrap();
        assert!(
            matches!(
                TlsIdentity::load(&paths),
                Err(certs::CertError::LooseKeyFile { mode: m, .. }) if m == mode
            ),
            "identity key {mode:o}"
        );
        std::fs::set_permissions(&ca_key, std::fs::Permissions::from_mode(mode)).unwrap();
        assert!(
            matches!(
                certs::CertificateAuthority::load(&ca_path, &ca_key),
                Err(certs::CertError::LooseKeyFile { .. })
            ),
            "CA key {mode:o}"
        );
    }
}
