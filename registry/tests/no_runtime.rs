//! The registry stays free of runtimes and transports: its dependency tree, as cargo resolves it, holds none
//! of the crates that would let domain code do I/O, spawn tasks or talk to the network.

use std::process::Command;

/// Crates the registry must never reach, directly or through another crate.
const FORBIDDEN: &[&str] = &[
    "tokio", "sled", "axum", "tonic", "quinn", "hyper", "reqwest", "openraft", "mio",
];

#[test]
fn the_registry_depends_on_no_runtime_or_transport() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "meridian-registry",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"meridian-registry") && crates.contains(&"serde"),
        "cargo tree printed something unexpected:\n{tree}"
    );
    let reached: Vec<&&str> = FORBIDDEN
        .iter()
        .filter(|name| crates.contains(name))
        .collect();
    assert!(
        reached.is_empty(),
        "the registry reaches {reached:?}; domain code must stay free of I/O"
    );
}
