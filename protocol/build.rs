//! Compiles every `.proto` file of package `meridian.v1` into Rust (messages plus gRPC client and server
//! stubs) without a `protoc` binary: `protox` parses the files into a descriptor set that
//! `tonic-prost-build` turns into code. The encoded descriptor set is written beside the code for gRPC
//! reflection.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

const PROTO_ROOT: &str = "proto";
const PACKAGE_DIR: &str = "proto/meridian/v1";
/// Messages that carry secret values or tokens: their `Debug` is written by hand in `redact.rs`, printing
/// every field but those values.
const REDACTED_MESSAGES: [&str; 3] = [
    ".meridian.v1.JobAssignment",
    ".meridian.v1.CreateKeyResponse",
    ".meridian.v1.PutSecretRequest",
];
/// Messages whose `bytes` fields become `bytes::Bytes` instead of `Vec<u8>`.
const ZERO_COPY_MESSAGES: [&str; 5] = [
    ".meridian.v1.RpcRequest",
    ".meridian.v1.RpcResponse",
    ".meridian.v1.RaftPayload",
    ".meridian.v1.ForwardWriteRequest",
    ".meridian.v1.ForwardWriteResponse",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    // A directory's modification time changes when a file is added or removed inside it.
    println!("cargo:rerun-if-changed={PACKAGE_DIR}");

    let files = proto_files(Path::new(PACKAGE_DIR))?;
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let relative: Vec<PathBuf> = files
        .iter()
        .map(|f| f.strip_prefix(PROTO_ROOT).map(Path::to_path_buf))
        .collect::<Result<_, _>>()?;

    let fds = protox::compile(&relative, [PROTO_ROOT])?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("meridian_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true);
    // Payloads that are only passed along decode as `Bytes`: slices of the received frame, never copies.
    for message in ZERO_COPY_MESSAGES {
        builder = builder.bytes(message);
    }
    builder = builder.skip_debug(REDACTED_MESSAGES);
    builder.compile_fds(fds)?;
    Ok(())
}

/// Every `.proto` file directly in `dir`, sorted so the generated code does not depend on directory order.
fn proto_files(dir: &Path) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() && path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
