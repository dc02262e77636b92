//! How the CLI reaches the admin API, as a process: every way of not reaching it is named for what it is
//! and exits 6; several addresses fail over; errors are JSON under `-o json`; named contexts hold the
//! address, CA, token file and project.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::dev::DevProcess;
use common::{cli, free_tcp_port};
use serde_json::Value;

const UNAVAILABLE: i32 = 6;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `whoami` with `env` and expects exit 6 with `expected` in the message.
fn unreachable_with(env: &[(&str, &str)], expected: &str) {
    let out = cli(&["whoami"], env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(UNAVAILABLE), "{err}");
    assert!(err.contains(expected), "expected {expected:?} in: {err}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {err}");
}

/// A TLS server on loopback whose certificate comes from a CA of its own, answering every request
/// `200 {}`. Returns its address and the CA's PEM.
fn tls_server(dir: &Path) -> (String, String) {
    let ca = certs::CertificateAuthority::generate("tls.test", Duration::from_secs(3600))
        .expect("generate a CA");
    let identity = certs::Identity::coordinator("tls.test", "c1").expect("an identity");
    let leaf = ca
        .issue(
            &certs::LeafRequest::new(identity, Duration::from_secs(3600))
                .with_ip_address("127.0.0.1".parse().expect("an address")),
        )
        .expect("issue a leaf");
    let tls = certs::TlsIdentity::from_pem(ca.cert_pem(), &leaf.cert_pem, &leaf.key_pem)
        .expect("a TLS identity");
    let config: Arc<rustls::ServerConfig> = tls.tls_server_config(&[b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\
                      connection: close\r\n\r\n{}",
                );
                let _ = tls.flush();
            });
        }
    });
    let ca_path = dir.join("tls-ca.pem");
    std::fs::write(&ca_path, ca.cert_pem()).expect("write the CA");
    (addr, ca_path.display().to_string())
}

/// A CA that signed nothing the servers here present.
fn stranger_ca(dir: &Path) -> String {
    let ca = certs::CertificateAuthority::generate("stranger.test", Duration::from_secs(3600))
        .expect("generate a CA");
    let path = dir.join("stranger-ca.pem");
    std::fs::write(&path, ca.cert_pem()).expect("write the CA");
    path.display().to_string()
}

#[test]
fn every_unreachable_admin_api_is_named_and_exits_6() {
    certs::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let (tls_addr, tls_ca) = tls_server(tmp.path());
    let stranger = stranger_ca(tmp.path());
    let token = dev.token.as_str();

    // Nothing listens.
    let refused = format!("http://127.0.0.1:{}", free_tcp_port());
    unreachable_with(
        &[("MERIDIAN_ADDR", &refused), ("MERIDIAN_TOKEN", token)],
        "connection refused",
    );
    // https:// to the plain-HTTP admin API of meridian dev.
    let https_to_plain = format!("https://{}", dev.admin);
    unreachable_with(
        &[
            ("MERIDIAN_ADDR", &https_to_plain),
            ("MERIDIAN_TOKEN", token),
            ("MERIDIAN_CACERT", &tls_ca),
        ],
        "answers in plain HTTP, not TLS: use http://",
    );
    // http:// to a TLS port.
    let http_to_tls = format!("http://{tls_addr}");
    unreachable_with(
        &[("MERIDIAN_ADDR", &http_to_tls), ("MERIDIAN_TOKEN", token)],
        "if it serves TLS, use https://",
    );
    // A certificate from another CA than --cacert's.
    let https = format!("https://{tls_addr}");
    unreachable_with(
        &[
            ("MERIDIAN_ADDR", &https),
            ("MERIDIAN_TOKEN", token),
            ("MERIDIAN_CACERT", &stranger),
        ],
        "the CA in --cacert/MERIDIAN_CACERT did not sign",
    );
    // A name that cannot resolve (`.invalid` never does).
    unreachable_with(
        &[
            ("MERIDIAN_ADDR", "https://no-such-coordinator.invalid:7071"),
            ("MERIDIAN_TOKEN", token),
            ("MERIDIAN_CACERT", &stranger),
        ],
        "cannot resolve the host name",
    );
    // With the right CA the same server is reached and answers (`{}`, which is no whoami: exit 1 for the
    // answer, not 6 for the connection): the failures above were the causes they named.
    let out = cli(
        &["whoami", "-o", "json"],
        &[
            ("MERIDIAN_ADDR", &https),
            ("MERIDIAN_TOKEN", token),
            ("MERIDIAN_CACERT", &tls_ca),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not read as WhoAmI"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn several_addresses_fail_over_and_errors_are_json_under_o_json() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let dead = format!("http://127.0.0.1:{}", free_tcp_port());
    let both = format!("{dead}, {}", dev.addr());
    let env = [
        ("MERIDIAN_ADDR", both.as_str()),
        ("MERIDIAN_TOKEN", &dev.token),
    ];

    // A read and a write both go through the address that answers.
    let out = cli(&["project", "create", "failover", "-o", "json"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&["project", "get", "failover", "-o", "json"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let project: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(project["name"], "failover");

    // The member table names the address the coordinator serves on (it was asked for port 0).
    let status = cli(&["cluster", "status", "-o", "json"], &env);
    let status: Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(
        status["members"][0]["admin_addr"],
        dev.admin.as_str(),
        "{status}"
    );

    // Every address dead: each is named.
    let dead2 = format!("http://127.0.0.1:{}", free_tcp_port());
    let all_dead = format!("{dead},{dead2}");
    let out = cli(
        &["whoami"],
        &[("MERIDIAN_ADDR", &all_dead), ("MERIDIAN_TOKEN", &dev.token)],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(UNAVAILABLE), "{err}");
    assert!(err.contains(&dead) && err.contains(&dead2), "{err}");

    // -o json: the error is one JSON object on stderr, stdout stays empty.
    let out = cli(&["project", "get", "no-such-project", "-o", "json"], &env);
    assert_eq!(out.status.code(), Some(4));
    assert!(out.stdout.is_empty());
    let err: Value = serde_json::from_slice(&out.stderr).expect("the error is JSON");
    assert_eq!(err["error"]["kind"], "not_found");
    assert_eq!(err["error"]["exit_code"], 4);
    assert!(err["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("no-such-project")));
    // Without -o json the same error is text.
    let out = cli(&["project", "get", "no-such-project"], &env);
    assert!(stderr(&out).starts_with("error: "));

    // A list with an empty entry is still one address; a bad scheme is refused with exit 2.
    let out = cli(
        &["whoami"],
        &[("MERIDIAN_ADDR", "ftp://x"), ("MERIDIAN_TOKEN", &dev.token)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn named_contexts_hold_address_token_file_and_project() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let config = tmp.path().join("cfg/config.toml");
    let config_s = config.display().to_string();
    let token_file = dev.dir.join("admin.token").display().to_string();
    let dead = format!("http://127.0.0.1:{}", free_tcp_port());
    let addrs = format!("{dead},{}", dev.addr());
    let with_config = [("MERIDIAN_CONFIG", config_s.as_str())];

    // A command that needs a context before there is one names what to do.
    let out = cli(&["whoami", "--context", "dev"], &with_config);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("meridian context add"),
        "{}",
        stderr(&out)
    );

    let addr = dev.addr();
    let env_create = [
        ("MERIDIAN_ADDR", addr.as_str()),
        ("MERIDIAN_TOKEN", &dev.token),
    ];
    let out = cli(&["project", "create", "ctxproj"], &env_create);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = cli(
        &[
            "context",
            "add",
            "dev",
            "--addr",
            &addrs,
            "--token-file",
            &token_file,
            "--project",
            "ctxproj",
        ],
        &with_config,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&config).expect("the config file");
    assert!(
        !text.contains(&dev.token),
        "the token itself is never copied"
    );

    // No address, token or project in the environment: the context supplies all three.
    let out = cli(&["secret", "put", "k", "--value", "v"], &with_config);
    assert!(out.status.success(), "{}", stderr(&out));
    let env_check = [
        ("MERIDIAN_ADDR", addr.as_str()),
        ("MERIDIAN_TOKEN", dev.token.as_str()),
        ("MERIDIAN_PROJECT", "ctxproj"),
    ];
    let listed = cli(&["secret", "list", "-o", "json"], &env_check);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let secrets: Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert!(
        secrets
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x["name"] == "k")),
        "the secret landed in the context's project: {secrets}"
    );

    // A flag overrides the context: only the dead address.
    let mut env = with_config.to_vec();
    env.push(("MERIDIAN_ADDR", dead.as_str()));
    let out = cli(&["whoami"], &env);
    assert_eq!(out.status.code(), Some(UNAVAILABLE), "{}", stderr(&out));

    // A second context, listed; `use` switches; an unknown name is refused with the known ones.
    let out = cli(
        &[
            "context",
            "add",
            "down",
            "--addr",
            &dead,
            "--token-file",
            &token_file,
        ],
        &with_config,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&["context", "list", "-o", "json"], &with_config);
    let list: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        list["current"], "dev",
        "the first context added stays current"
    );
    assert_eq!(list["contexts"]["down"]["addr"][0], dead.as_str());
    let out = cli(&["context", "use", "down"], &with_config);
    assert!(out.status.success());
    let out = cli(&["whoami"], &with_config);
    assert_eq!(out.status.code(), Some(UNAVAILABLE), "{}", stderr(&out));
    let out = cli(&["whoami", "--context", "dev"], &with_config);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&["context", "use", "nope"], &with_config);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("known: dev, down"),
        "{}",
        stderr(&out)
    );
    let out = cli(&["context", "list"], &with_config);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with('*') && l.contains("down")),
        "{table}"
    );
}
