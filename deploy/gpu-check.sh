#!/usr/bin/env bash
# End-to-end check of a GPU node: the agent's GPU discovery (NVML, else nvidia-smi), then one job asking for
# GPUs, placed by the scheduler of a throw-away `meridian dev` and run by its agent, printing what the job saw
# (its CUDA_VISIBLE_DEVICES and, when PyTorch is installed, torch.cuda.get_device_name(0)).
#
#   deploy/gpu-check.sh                        # uses `meridian` from PATH, or $MERIDIAN_BIN
#   MERIDIAN_BIN=./meridian deploy/gpu-check.sh
#   GPU_CHECK_GPUS=0 deploy/gpu-check.sh       # the same path without a GPU (a CPU job), e.g. to try the script
#
# Needs only the meridian binary (built elsewhere if the node has no Rust toolchain). It listens on 127.0.0.1
# on ports the system picks, read back from the dev directory's endpoints.json; GPU_CHECK_ADMIN_PORT,
# GPU_CHECK_RAFT_PORT (UDP) and GPU_CHECK_GATEWAY_PORT fix them instead. Exit status: 0 when the job
# succeeded, 3 when the node has no GPU to check, 1 otherwise. Everything it wrote is left in the printed
# directory.
set -euo pipefail

bin="${MERIDIAN_BIN:-meridian}"
command -v "$bin" >/dev/null 2>&1 || { echo "gpu-check: $bin not found (set MERIDIAN_BIN)" >&2; exit 1; }
gpus="${GPU_CHECK_GPUS:-1}"
admin_port="${GPU_CHECK_ADMIN_PORT:-0}"
raft_port="${GPU_CHECK_RAFT_PORT:-0}"
gateway_port="${GPU_CHECK_GATEWAY_PORT:-0}"
dir="$(mktemp -d "${TMPDIR:-/tmp}/meridian-gpu-check.XXXXXX")"
echo "gpu-check: working in $dir"

echo "== GPU discovery (meridian agent inventory)"
"$bin" agent inventory -o json | tee "$dir/inventory.json"
found="$(grep -c '"uuid"' "$dir/inventory.json" || true)"
if [ "$gpus" -gt 0 ] && [ "$found" -lt "$gpus" ]; then
  echo "gpu-check: this node shows $found GPU(s), the check needs $gpus: nothing to run" >&2
  exit 3
fi

echo "== meridian dev"
"$bin" dev --data-dir "$dir/dev" \
  --admin-listen "127.0.0.1:$admin_port" \
  --raft-listen "127.0.0.1:$raft_port" \
  --gateway-listen "127.0.0.1:$gateway_port" >"$dir/dev.log" 2>&1 &
dev_pid=$!
stop_dev() {
  kill -INT "$dev_pid" 2>/dev/null || true
  wait "$dev_pid" 2>/dev/null || true
}
trap stop_dev EXIT

# The addresses dev mode bound, from the file it writes once it listens: {"admin":"http://…",…}.
endpoints="$dir/dev/endpoints.json"
unset MERIDIAN_ADDR MERIDIAN_TOKEN
ready=""
for _ in $(seq 1 300); do
  if ! kill -0 "$dev_pid" 2>/dev/null; then break; fi
  if [ -z "${MERIDIAN_ADDR:-}" ] && [ -s "$endpoints" ]; then
    admin="$(sed -n 's/.*"admin": *"\([^"]*\)".*/\1/p' "$endpoints")"
    if [ -n "$admin" ]; then
      export MERIDIAN_ADDR="$admin"
      echo "meridian dev: admin API at $MERIDIAN_ADDR"
    fi
  fi
  if [ -n "${MERIDIAN_ADDR:-}" ] && [ -s "$dir/dev/admin.token" ]; then
    export MERIDIAN_TOKEN="$(cat "$dir/dev/admin.token")"
    # Ready once the embedded agent's node is registered and ready.
    if "$bin" node list -o json 2>/dev/null | grep -q '"health": *"ready"'; then ready=1; break; fi
  fi
  sleep 0.2
done
if [ -z "$ready" ]; then
  echo "gpu-check: meridian dev did not become ready; its log:" >&2
  tail -n 50 "$dir/dev.log" >&2
  exit 1
fi
"$bin" node list

probe='echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L; fi
if python3 -c "import torch" 2>/dev/null; then
  python3 -c "import torch; print(\"torch:\", torch.__version__, \"cuda available:\", torch.cuda.is_available()); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"no CUDA device visible to torch\")"
else
  echo "torch: not installed on this node"
fi'

echo "== job run --gpus $gpus --wait"
status=0
"$bin" job run --gpus "$gpus" --wait -o json -- sh -c "$probe" >"$dir/job.json" || status=$?
id="$(grep -o '"id": *"job_[^"]*"' "$dir/job.json" | head -n1 | sed 's/.*"\(job_[^"]*\)"/\1/')"
if [ -z "$id" ]; then
  echo "gpu-check: no job was created; see $dir/job.json" >&2
  exit 1
fi
"$bin" job status "$id"
echo "== the job's output"
"$bin" job logs "$id"
if [ "$status" -ne 0 ]; then
  echo "gpu-check: job $id did not succeed (stderr below)" >&2
  "$bin" job logs --stderr "$id" >&2 || true
  exit 1
fi
echo "gpu-check: job $id succeeded"
