//! `meridian job exec` and `meridian job cp` as a user runs them, against a real `meridian dev`: a running
//! job's file read through a command in the job, the command's exit code and input carried, and the file
//! copied out byte for byte.

mod common;

use std::process::{Command, Stdio};

use common::dev::DevProcess;
use common::{cli, meridian_bin, ready_job};

/// What the job writes to its working directory: text, a NUL and bytes that are not UTF-8.
const CONTENT: &[u8] = b"line one\nbinary\x00\x01\xfe\xffend";

fn started_job(env: &[(&str, &str)]) -> String {
    ready_job(
        env,
        &[],
        "printf 'line one\\nbinary\\000\\001\\376\\377end' > data.bin; echo ready; sleep 60",
    )
}

#[test]
fn exec_reads_the_jobs_file_and_returns_its_exit_code_and_cp_copies_it_byte_for_byte() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);
    let id = started_job(&env);

    let out = cli(&["job", "exec", &id, "--", "cat", "data.bin"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, CONTENT);

    let out = cli(
        &[
            "job",
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "echo to-stderr >&2; exit 3",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");

    // Input travels with --stdin; the command can write into the working directory.
    let mut child = Command::new(meridian_bin())
        .args([
            "job",
            "exec",
            "-i",
            &id,
            "--",
            "sh",
            "-c",
            "cat > from-cli.txt; wc -c < from-cli.txt",
        ])
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"twelve bytes").expect("write");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "12");

    // A program that does not exist: the shell's 127.
    let out = cli(&["job", "exec", &id, "--", "no-such-program"], &env);
    assert_eq!(out.status.code(), Some(127));

    let dest = tmp.path().join("copy.bin");
    let out = cli(
        &[
            "job",
            "cp",
            &format!("{id}:data.bin"),
            dest.to_str().expect("utf-8"),
        ],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&dest).expect("copied"), CONTENT);

    let into_dir = tmp.path().join("dir");
    std::fs::create_dir(&into_dir).expect("mkdir");
    let out = cli(
        &[
            "job",
            "cp",
            &format!("{id}:from-cli.txt"),
            into_dir.to_str().expect("utf-8"),
        ],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(into_dir.join("from-cli.txt")).expect("copied"),
        b"twelve bytes"
    );

    let out = cli(&["job", "cp", &format!("{id}:data.bin"), "-"], &env);
    assert!(out.status.success());
    assert_eq!(out.stdout, CONTENT);

    // A file that is not there: not found, and nothing written.
    let missing = tmp.path().join("missing.bin");
    let out = cli(
        &[
            "job",
            "cp",
            &format!("{id}:nope.bin"),
            missing.to_str().expect("utf-8"),
        ],
        &env,
    );
    assert!(!out.status.success());
    assert!(!missing.exists());

    // A directory, with -r: its files byte for byte, its subdirectories, into an existing directory under
    // the directory's own name; without -r a directory is not a file.
    let out = cli(
        &[
            "job",
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "mkdir -p out/sub && cp data.bin out/a.bin && printf deep > out/sub/b.txt",
        ],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trees = tmp.path().join("trees");
    std::fs::create_dir(&trees).expect("mkdir");
    let trees_s = trees.to_str().expect("utf-8");
    let out = cli(&["job", "cp", &format!("{id}:out"), trees_s], &env);
    assert!(!out.status.success(), "a directory without -r");
    let out = cli(&["job", "cp", "-r", &format!("{id}:out"), trees_s], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(trees.join("out/a.bin")).expect("copied"),
        CONTENT
    );
    assert_eq!(
        std::fs::read(trees.join("out/sub/b.txt")).expect("copied"),
        b"deep"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("copied 2 files"));
    let _ = cli(&["job", "cancel", &id], &env);
}
