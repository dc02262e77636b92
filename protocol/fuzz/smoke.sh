#!/usr/bin/env bash
# Builds the protocol fuzz targets and runs each one briefly.
#
# With a nightly toolchain and cargo-fuzz available this is a real coverage-guided run (`cargo fuzz run`).
# Otherwise the targets are built with the stable toolchain (no sanitizer coverage) and libFuzzer feeds them
# random inputs: that still proves they build and that the decoders survive arbitrary bytes.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-20}"
targets=(frame_decoder rpc_request)

if command -v cargo-fuzz >/dev/null 2>&1 && rustup run nightly rustc --version >/dev/null 2>&1; then
  for t in "${targets[@]}"; do
    cargo +nightly fuzz run "$t" -- -max_total_time="$seconds"
  done
  exit 0
fi

echo "cargo-fuzz or nightly missing: building the targets with stable and running them uninstrumented"
cargo build --release --bins
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  "target/release/$t" -max_total_time="$seconds" "corpus/$t"
done
