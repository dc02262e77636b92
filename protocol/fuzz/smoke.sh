#!/usr/bin/env bash
# Builds the fuzz targets with coverage instrumentation on the stable toolchain and runs each one briefly.
#
# The sanitizer-coverage codegen flags cargo-fuzz uses are stable rustc flags; only the sanitizers
# themselves (`-Zsanitizer=address`) need nightly, so a stable build gets a real coverage-guided libFuzzer
# run without them. Building for an explicit `--target` keeps the flags off build scripts and proc macros.
# Each target starts from its seed corpus in `seeds/` (kept in the repository) and writes what it learns to
# `corpus/` (not kept). The run fails if libFuzzer reports no coverage counters: an uninstrumented run learns
# nothing, and must not pass for one.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-20}"
targets=(frame_decoder rpc_request agent_report units page_token job_spec)
host="$(rustc -vV | sed -n 's/^host: //p')"

export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
cargo build --release --target "$host" --bins

for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="$(mktemp)"
  if ! "target/$host/release/$t" -max_total_time="$seconds" -print_final_stats=1 \
      "corpus/$t" "seeds/$t" 2>"$log"; then
    cat "$log"
    echo "fuzz target $t failed" >&2
    exit 1
  fi
  if ! grep -q "inline 8-bit counters" "$log"; then
    cat "$log"
    echo "fuzz target $t ran without coverage instrumentation" >&2
    exit 1
  fi
  # The last status line, e.g. "#12345 DONE cov: 812 ft: 2301 corp: 150/4Kb ...".
  echo "$t: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)"
  rm -f "$log"
done
