#!/usr/bin/env bash
# Coordinator benchmark: Meridian's three-coordinator group against a three-member etcd 3.4 group on this
# machine (write throughput/latency at 1, 16 and 64 clients, leader failover, acknowledged-write loss check).
#
#   bash bench/run-coordinator-bench.sh [meridian-bench coordinator options…]
#   bash bench/run-coordinator-bench.sh --seconds 2 --failover-rounds 2      # a quick smoke run
#   bash bench/run-coordinator-bench.sh --json > coordinator.json
#
# Installs etcd (Debian packages etcd-server and etcd-client) when it is missing, idempotently, and only when
# run as root on a system with apt-get; otherwise the etcd side is skipped and the report says why. Builds
# `meridian` and `meridian-bench` in release mode ($MERIDIAN_BIN, when set, replaces the `meridian` build).
# The Markdown report goes to stdout, progress to stderr.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if command -v etcd >/dev/null 2>&1; then
  echo "etcd: $(etcd --version 2>/dev/null | head -n1)" >&2
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "etcd: not installed; installing etcd-server and etcd-client with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y etcd-server etcd-client >&2; then
    apt-get update >&2
    apt-get install -y etcd-server etcd-client >&2
  fi
  # The package enables a system etcd on 2379/2380. The benchmark runs its own members on other ports; a
  # system member we just installed would only compete for CPU, so stop it again.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
    systemctl stop etcd >&2 || true
    systemctl disable etcd >&2 2>/dev/null || true
  fi
  echo "etcd: $(etcd --version 2>/dev/null | head -n1)" >&2
elif [ "$(id -u)" != 0 ]; then
  echo "etcd: not installed and not running as root, so it cannot be installed: the etcd side is skipped" >&2
  echo "      (install it with: sudo apt-get install -y etcd-server etcd-client)" >&2
else
  echo "etcd: not installed and apt-get is not available: the etcd side is skipped" >&2
fi

if [ -n "${MERIDIAN_BIN:-}" ]; then
  cargo build --release -p meridian-bench >&2
else
  cargo build --release -p meridian -p meridian-bench >&2
  export MERIDIAN_BIN="$PWD/target/release/meridian"
fi
echo "meridian: $MERIDIAN_BIN" >&2

exec target/release/meridian-bench coordinator "$@"
