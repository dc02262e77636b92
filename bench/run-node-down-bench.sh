#!/usr/bin/env bash
# Node-down detection benchmark: how long the coordinators take to notice that an agent died.
#
#   bash bench/run-node-down-bench.sh [--runs N] [-o table|json] [--port-offset N] [--keep-dir]
#
# Starts a local cluster (three coordinators, agents eu-a1 and eu-a2; deploy/local-cluster.sh up --regions 1) in
# a temporary directory, waits until both agents are ready, then N times (default 5): SIGKILLs eu-a1, measures
# the wall time from the kill until `meridian node list` shows it `unreachable` and until it shows it `lost`
# (polling every 50 ms), restarts it and waits until it is ready again. Prints every run and min/median/max.
#
# Builds nothing: the binary is $MERIDIAN_BIN, else target/release/meridian. The coordinators' fleet timings
# come from MERIDIAN_FLEET_HEARTBEAT_MS, MERIDIAN_FLEET_TTL_MS and MERIDIAN_FLEET_LOST_AFTER_MS when set (passed
# through to the coordinators; defaults 1000 / 5000 / 30000). --port-offset (default 700) shifts every port of
# the cluster. The cluster is always stopped on exit; its directory is removed unless --keep-dir is given or a
# run failed. The report goes to stdout, progress to stderr.
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$PWD"
cluster_sh="$repo/deploy/local-cluster.sh"

runs=5
output="table"
offset=700
keep_dir=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="${2:-}"; shift 2 ;;
    --runs=*) runs="${1#--runs=}"; shift ;;
    -o|--output) output="${2:-}"; shift 2 ;;
    --port-offset) offset="${2:-}"; shift 2 ;;
    --keep-dir) keep_dir=1; shift ;;
    -h|--help) usage ;;
    *) echo "unknown option $1" >&2; usage ;;
  esac
done
case "$runs" in ''|*[!0-9]*|0) echo "--runs: a positive number" >&2; exit 2 ;; esac
case "$offset" in ''|*[!0-9]*) echo "--port-offset: a number" >&2; exit 2 ;; esac
case "$output" in table|json) ;; *) echo "-o: table or json" >&2; exit 2 ;; esac

bin="${MERIDIAN_BIN:-$repo/target/release/meridian}"
[ -x "$bin" ] || { echo "meridian binary not found at $bin: build it (cargo build --release -p meridian) or set MERIDIAN_BIN" >&2; exit 1; }
if ! "$bin" node list --help >/dev/null 2>&1; then
  echo "$bin has no 'node list' command: it predates agents; rebuild it" >&2
  exit 1
fi
export MERIDIAN_BIN="$bin"
export MERIDIAN_LOCAL_PORT_OFFSET="$offset"

# The timings in force. A binary without the [fleet] settings ignores the variables and runs on the defaults.
heartbeat_ms="${MERIDIAN_FLEET_HEARTBEAT_MS:-1000}"
ttl_ms="${MERIDIAN_FLEET_TTL_MS:-5000}"
lost_after_ms="${MERIDIAN_FLEET_LOST_AFTER_MS:-30000}"
for v in "$heartbeat_ms" "$ttl_ms" "$lost_after_ms"; do
  case "$v" in ''|*[!0-9]*) echo "MERIDIAN_FLEET_*: milliseconds as a number, got '$v'" >&2; exit 2 ;; esac
done
timings_source="defaults"
if [ -n "${MERIDIAN_FLEET_HEARTBEAT_MS:-}${MERIDIAN_FLEET_TTL_MS:-}${MERIDIAN_FLEET_LOST_AFTER_MS:-}" ]; then
  if grep -aq 'fleet.ttl_ms' "$bin"; then
    timings_source="environment"
    if [ "$ttl_ms" -lt $((2 * heartbeat_ms)) ]; then
      echo "MERIDIAN_FLEET_TTL_MS must be at least 2 x MERIDIAN_FLEET_HEARTBEAT_MS" >&2; exit 2
    fi
  else
    echo "warning: $bin does not know MERIDIAN_FLEET_*; it runs on the defaults 1000 / 5000 / 30000 ms" >&2
    heartbeat_ms=1000; ttl_ms=5000; lost_after_ms=30000
    timings_source="defaults (binary ignores MERIDIAN_FLEET_*)"
  fi
fi
# The monitor ticks every heartbeat/4, between 10 and 250 ms.
tick_ms=$((heartbeat_ms / 4))
[ "$tick_ms" -lt 10 ] && tick_ms=10
[ "$tick_ms" -gt 250 ] && tick_ms=250

node_name="eu-a1"
node_key="eu/eu1/eu-a1"
other_key="eu/eu1/eu-a2"
poll_s="0.05"
admin_port=$((7071 + offset))

if (exec 3<>"/dev/tcp/127.0.0.1/$admin_port") 2>/dev/null; then
  echo "port $admin_port is in use: another cluster runs there; choose another --port-offset" >&2
  exit 1
fi

dir="$(mktemp -d "${TMPDIR:-/tmp}/meridian-node-down.XXXXXX")"
failed=1
cleanup() {
  bash "$cluster_sh" down --dir "$dir" >/dev/null 2>&1 || true
  if [ "$keep_dir" = 1 ] || [ "$failed" = 1 ]; then
    echo "cluster directory kept: $dir (logs in $dir/logs)" >&2
  else
    rm -rf "$dir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { echo "[node-down] $*" >&2; }
now_ms() { local t="${EPOCHREALTIME/./}"; echo $((t / 1000)); }

# The health of one node as the coordinators report it ("" when it is not listed or the call failed). Asks c1,
# then c2 and c3, so a coordinator that is busy or restarting does not stall the poll.
health_of() {
  local key="$1" i out
  for i in 1 2 3; do
    if out="$(MERIDIAN_ADDR="https://127.0.0.1:$((7070 + i + offset))" MERIDIAN_TOKEN="$(cat "$dir/admin.token")" \
      MERIDIAN_CACERT="$dir/certs/ca.pem" "$bin" node list -o json 2>/dev/null)"; then
      if command -v jq >/dev/null 2>&1; then
        echo "$out" | jq -r --arg k "$key" '.[] | select(.key == $k) | .health'
      else
        # Without jq: the pretty-printed objects, one field a line; the health field of the object whose key
        # matches, in whatever order the fields come.
        echo "$out" | awk -v k="\"$key\"" '
          /^  \{/ { key = ""; health = "" }
          /^    "key": / { key = $2; sub(/,$/, "", key) }
          /^    "health": / { health = $2; sub(/,$/, "", health); gsub(/"/, "", health) }
          /^  \}/ { if (key == k) print health }'
      fi
      return 0
    fi
  done
  echo ""
}

# Polls until KEY has health WANT; prints the milliseconds from START_MS to the first poll that saw it. Fails
# after DEADLINE_MS.
wait_health() {
  local key="$1" want="$2" start_ms="$3" deadline_ms="$4" h t
  while :; do
    h="$(health_of "$key")"
    t="$(now_ms)"
    if [ "$h" = "$want" ]; then echo $((t - start_ms)); return 0; fi
    if [ $((t - start_ms)) -gt "$deadline_ms" ]; then
      echo "$key did not become $want within $((deadline_ms / 1000)) s (last seen: ${h:-nothing})" >&2
      return 1
    fi
    sleep "$poll_s"
  done
}

# Polls until KEY is unreachable and then lost; prints "UNREACHABLE_MS LOST_MS" since START_MS.
wait_down() {
  local key="$1" start_ms="$2" deadline_ms="$3" h t unreachable=""
  while :; do
    h="$(health_of "$key")"
    t="$(now_ms)"
    if [ -z "$unreachable" ] && { [ "$h" = unreachable ] || [ "$h" = lost ]; }; then
      unreachable=$((t - start_ms))
      log "  unreachable after $unreachable ms"
    fi
    if [ "$h" = lost ]; then echo "$unreachable $((t - start_ms))"; return 0; fi
    if [ $((t - start_ms)) -gt "$deadline_ms" ]; then
      echo "$key did not become lost within $((deadline_ms / 1000)) s (last seen: ${h:-nothing})" >&2
      return 1
    fi
    sleep "$poll_s"
  done
}

# min median max of integers, one a line on stdin.
stats() {
  sort -n | awk '{ v[NR] = $1 } END {
    if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2;
    printf "%d %d %d\n", v[1], m, v[NR] }'
}

log "binary: $bin"
log "timings: heartbeat $heartbeat_ms ms, ttl $ttl_ms ms, lost_after $lost_after_ms ms ($timings_source)"
log "starting the cluster in $dir (port offset $offset)"
bash "$cluster_sh" up --regions 1 --dir "$dir" >&2
up_ms="$(now_ms)"
wait_health "$node_key" ready "$up_ms" 60000 >/dev/null
wait_health "$other_key" ready "$up_ms" 60000 >/dev/null
log "both agents ready"

down_deadline_ms=$((ttl_ms + lost_after_ms + 60000))
unreachable_all=""; lost_all=""; ready_all=""; rows=""
for run in $(seq 1 "$runs"); do
  # Kill at a random point of the heartbeat cycle, not in step with the previous restart.
  sleep "0.$(printf '%03d' $((RANDOM % 1000)))"
  log "run $run/$runs: SIGKILL $node_name"
  bash "$cluster_sh" kill --dir "$dir" "$node_name"
  kill_ms="$(now_ms)"
  down="$(wait_down "$node_key" "$kill_ms" "$down_deadline_ms")"
  unreachable="${down% *}"; lost="${down#* }"
  log "  lost after $lost ms; restarting $node_name"
  bash "$cluster_sh" start --dir "$dir" "$node_name"
  start_ms="$(now_ms)"
  ready="$(wait_health "$node_key" ready "$start_ms" 60000)"
  log "  ready again after $ready ms"
  unreachable_all+="$unreachable"$'\n'; lost_all+="$lost"$'\n'; ready_all+="$ready"$'\n'
  rows+="$run $unreachable $lost $ready"$'\n'
done

read -r u_min u_med u_max < <(printf '%s' "$unreachable_all" | stats)
read -r l_min l_med l_max < <(printf '%s' "$lost_all" | stats)
read -r r_min r_med r_max < <(printf '%s' "$ready_all" | stats)
expected_u="$((ttl_ms - heartbeat_ms))–$((ttl_ms + tick_ms))"
expected_l="$((ttl_ms + lost_after_ms - heartbeat_ms))–$((ttl_ms + lost_after_ms + tick_ms))"

if [ "$output" = json ]; then
  printf '{\n  "binary": "%s",\n  "node": "%s",\n  "runs": %d,\n  "poll_ms": 50,\n' "$bin" "$node_key" "$runs"
  printf '  "timings": {"heartbeat_ms": %d, "ttl_ms": %d, "lost_after_ms": %d, "tick_ms": %d, "source": "%s"},\n' \
    "$heartbeat_ms" "$ttl_ms" "$lost_after_ms" "$tick_ms" "$timings_source"
  printf '  "samples": ['
  sep=""
  while read -r n u l r; do
    [ -n "$n" ] || continue
    printf '%s\n    {"run": %d, "unreachable_ms": %d, "lost_ms": %d, "ready_again_ms": %d}' "$sep" "$n" "$u" "$l" "$r"
    sep=","
  done <<< "$rows"
  printf '\n  ],\n'
  printf '  "unreachable_ms": {"min": %d, "median": %d, "max": %d},\n' "$u_min" "$u_med" "$u_max"
  printf '  "lost_ms": {"min": %d, "median": %d, "max": %d},\n' "$l_min" "$l_med" "$l_max"
  printf '  "ready_again_ms": {"min": %d, "median": %d, "max": %d}\n}\n' "$r_min" "$r_med" "$r_max"
else
  sec() { awk -v ms="$1" 'BEGIN { printf "%.2f", ms / 1000 }'; }
  echo "Node-down detection: agent $node_name ($node_key) SIGKILLed $runs times, node list polled every 50 ms"
  echo "timings: heartbeat $heartbeat_ms ms, ttl $ttl_ms ms, lost_after $lost_after_ms ms, monitor tick $tick_ms ms ($timings_source)"
  echo "expected: unreachable $expected_u ms after the kill, lost $expected_l ms (plus one Raft commit and the poll)"
  echo
  printf '%-8s %16s %10s %16s\n' run "unreachable s" "lost s" "ready again s"
  while read -r n u l r; do
    [ -n "$n" ] || continue
    printf '%-8s %16s %10s %16s\n' "$n" "$(sec "$u")" "$(sec "$l")" "$(sec "$r")"
  done <<< "$rows"
  printf '%-8s %16s %10s %16s\n' min "$(sec "$u_min")" "$(sec "$l_min")" "$(sec "$r_min")"
  printf '%-8s %16s %10s %16s\n' median "$(sec "$u_med")" "$(sec "$l_med")" "$(sec "$r_med")"
  printf '%-8s %16s %10s %16s\n' max "$(sec "$u_max")" "$(sec "$l_max")" "$(sec "$r_max")"
fi
failed=0
