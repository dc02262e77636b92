//! Errors that say what to do, as a process against a real `meridian dev`: ids found across the caller's
//! projects without `--project` (or the projects named when a name is in several), refusals that name the
//! roles that would grant the action, and messages without doubled or internal wording.

mod common;

use common::dev::DevProcess;
use common::{cli, cli_json};

/// `args` acting in project vision.
fn in_vision<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend(["--project", "vision"]);
    all
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn ids_resolve_across_projects_and_refusals_name_roles() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let addr = dev.addr();
    let env = [
        ("MERIDIAN_ADDR", addr.as_str()),
        ("MERIDIAN_TOKEN", &dev.token),
    ];

    cli_json(&["project", "create", "vision", "-o", "json"], &env);
    let key = cli_json(
        &in_vision(&["key", "create", "ci", "--role", "viewer", "-o", "json"]),
        &env,
    );
    let key_id = key["key"]["id"]
        .as_str()
        .or_else(|| key["id"].as_str())
        .expect("the key's id")
        .to_owned();

    // `key revoke ID` without --project: the key is in vision, found there, revoked, and the CLI says where.
    let out = cli(&["key", "revoke", &key_id], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is in project vision"),
        "{}",
        stderr(&out)
    );
    let keys = cli_json(&in_vision(&["key", "list", "-o", "json"]), &env);
    let revoked = keys
        .as_array()
        .and_then(|k| k.iter().find(|k| k["id"] == key_id.as_str()))
        .expect("the key is listed");
    assert!(!revoked["revoked_at"].is_null(), "{revoked}");

    // A job in vision, read without --project.
    let job = cli_json(
        &in_vision(&["job", "run", "-o", "json", "--", "true"]),
        &env,
    );
    let job_id = job["id"].as_str().expect("job id");
    let status = cli_json(&["job", "status", job_id, "-o", "json"], &env);
    assert_eq!(status["id"], job_id);

    // A secret only another project holds is deleted there; a name two other projects hold is refused,
    // naming both, and nothing is deleted.
    cli_json(
        &in_vision(&["secret", "put", "only-here", "--value", "v", "-o", "json"]),
        &env,
    );
    let out = cli(&["secret", "delete", "only-here"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    cli_json(&["project", "create", "audio", "-o", "json"], &env);
    for project in ["vision", "audio"] {
        let out = cli(
            &[
                "secret",
                "put",
                "twin",
                "--value",
                "v",
                "--project",
                project,
            ],
            &env,
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = cli(&["secret", "delete", "twin"], &env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("secret twin exists in projects audio, vision: pass --project"),
        "{}",
        stderr(&out)
    );
    let listed = cli_json(&in_vision(&["secret", "list", "-o", "json"]), &env);
    assert!(listed
        .as_array()
        .is_some_and(|s| s.iter().any(|x| x["name"] == "twin")));
    // Still missing everywhere: the plain not-found, exit 4, without a doubled "not found".
    let out = cli(&["job", "status", "job_nosuchjob"], &env);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(stderr(&out).trim(), "error: job job_nosuchjob not found");

    // A mistyped project name or flag suggests the nearest one the caller can see.
    let out = cli(&["project", "get", "visoin"], &env);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("project visoin not found; did you mean vision?"),
        "{}",
        stderr(&out)
    );
    let out = cli(&["job", "list", "--project", "visoin"], &env);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("did you mean vision?"),
        "{}",
        stderr(&out)
    );
    let out = cli(&["job", "run", "--gpu", "1", "--", "true"], &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--gpus"), "{}", stderr(&out));

    // A viewer's refusal names the roles that would grant the action.
    let viewer = cli_json(
        &["key", "create", "looker", "--role", "viewer", "-o", "json"],
        &env,
    );
    let token = viewer["token"].as_str().expect("token").to_owned();
    let out = cli(
        &["job", "run", "--", "true"],
        &[("MERIDIAN_ADDR", addr.as_str()), ("MERIDIAN_TOKEN", &token)],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("needs run-jobs, which the editor or project-admin role"),
        "{}",
        stderr(&out)
    );

    // Cancelling a finished job says so plainly.
    let done = cli_json(&["job", "run", "--wait", "-o", "json", "--", "true"], &env);
    let done_id = done["id"].as_str().expect("job id");
    let out = cli(&["job", "cancel", done_id], &env);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already ended (succeeded); there is nothing to cancel"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_command_line_that_does_not_parse_is_a_json_error_under_o_json() {
    let out = cli(
        &["job", "run", "--gpu", "1", "-o", "json", "--", "true"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).expect("one JSON object");
    assert_eq!(err["error"]["kind"], "usage");
    assert_eq!(err["error"]["exit_code"], 2);
    let message = err["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("'--gpu'") && message.contains("'--gpus'"),
        "the refusal and its suggestion: {message}"
    );
    // Without -o json clap's own text; help is help either way.
    let out = cli(&["job", "run", "--gpu", "1", "--", "true"], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
    let out = cli(&["job", "--help", "-o", "json"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"));
}
