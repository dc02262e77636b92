//! Job specs as files and dry runs, as a process against a real `meridian dev`: `job run -f` in TOML, YAML and
//! JSON with flags over the file, `job plan` saying where a job would land, and a job no node of the fleet
//! could ever run told apart at submission (exit 8 from `--wait` and `plan`, never a silent wait).

mod common;

use common::dev::DevProcess;
use common::{cli, cli_json};
use serde_json::Value;

const CANNOT_RUN: i32 = 8;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn spec_files_plans_and_jobs_no_node_could_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let addr = dev.addr();
    let env = [
        ("MERIDIAN_ADDR", addr.as_str()),
        ("MERIDIAN_TOKEN", &dev.token),
    ];
    let nodes = cli_json(&["node", "list", "-o", "json"], &env);
    let node = nodes[0]["key"].as_str().expect("the dev node").to_owned();
    let has_gpus = nodes[0]["gpu_count"].as_u64().unwrap_or(0) > 0;

    // TOML, with a flag over the file's name.
    let toml = tmp.path().join("job.toml");
    std::fs::write(
        &toml,
        "name = \"from-file\"\ncommand = \"sh\"\nargs = [\"-c\", \"echo from toml\"]\n\
         resources = { memory = \"64Mi\" }\n",
    )
    .expect("write");
    let toml_s = toml.display().to_string();
    let out = cli(
        &[
            "job", "run", "-f", &toml_s, "--name", "flagged", "--wait", "-o", "json",
        ],
        &env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let job: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(job["name"], "flagged");
    assert_eq!(job["command"], "sh");
    assert_eq!(job["resources"]["memory_bytes"], 64 << 20);
    assert_eq!(job["state"], "succeeded");

    // YAML and JSON; a command after -- replaces the file's.
    let yaml = tmp.path().join("job.yaml");
    std::fs::write(&yaml, "command: 'false'\nresources: {cpu: 0.5}\n").expect("write");
    let yaml_s = yaml.display().to_string();
    let out = cli(&["job", "run", "-f", &yaml_s, "--wait", "--", "true"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let json = tmp.path().join("job.json");
    std::fs::write(&json, r#"{"command": "true", "priority": 5}"#).expect("write");
    let json_s = json.display().to_string();
    let job = cli_json(&["job", "run", "-f", &json_s, "-o", "json"], &env);
    assert_eq!(job["priority"], 5);

    // A typo in a file is refused with the field's path, exit 2.
    let typo = tmp.path().join("typo.toml");
    std::fs::write(&typo, "command = \"true\"\n[resources]\ngpu = 1\n").expect("write");
    let out = cli(&["job", "run", "-f", &typo.display().to_string()], &env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("resources"), "{}", stderr(&out));

    // A plan: where it would land, nothing submitted.
    let before = cli_json(&["job", "list", "-o", "json"], &env);
    let out = cli(&["job", "plan", "-f", &yaml_s], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("would run on {node}")), "{text}");
    let plan = cli_json(&["job", "plan", "-f", &yaml_s, "-o", "json"], &env);
    assert_eq!(plan["placeable"], true);
    assert_eq!(plan["replicas"][0]["node"], node.as_str());
    let after = cli_json(&["job", "list", "-o", "json"], &env);
    assert_eq!(
        before.as_array().map(Vec::len),
        after.as_array().map(Vec::len)
    );

    if has_gpus {
        eprintln!("SKIPPED the no-GPU part: this machine's dev node has GPUs");
        return;
    }
    // GPUs on a fleet without any: the plan, the submission and --wait all say so, with exit 8.
    let out = cli(&["job", "plan", "--gpus", "1", "--", "true"], &env);
    assert_eq!(out.status.code(), Some(CANNOT_RUN), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 node has no GPUs"),
        "{}",
        stderr(&out)
    );
    let out = cli(&["job", "run", "--gpus", "1", "--", "true"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no node of the fleet could ever run"),
        "{}",
        stderr(&out)
    );
    let out = cli(
        &[
            "job", "run", "--gpus", "1", "--wait", "-o", "json", "--", "true",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(CANNOT_RUN), "{}", stderr(&out));
    let err: Value = serde_json::from_slice(&out.stderr).expect("a JSON error under -o json");
    assert_eq!(err["error"]["kind"], "job_cannot_run");
    assert!(err["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("still pending") && m.contains("has no GPUs")));
}
