#!/usr/bin/env bash
# The running system's figures (issue 4's targets), everything on this machine:
# a `psmr local` cluster (3 acceptors, 2 replicas, opt-psmr K=2, 1M keys) and
# a `psmr client load` against it, for
#   memory storage,  2 clients x 256 calls in flight   (throughput)
#   memory storage,  2 clients x 1024 calls in flight  (throughput with deeper queues)
#   durable storage, 2 clients x 256 calls in flight   (throughput)
#   durable storage, 2 clients x 1024 calls in flight
#   memory storage,  1 client  x 1 call in flight      (latency)
# Each configuration runs RUNS times (default 3) on a fresh cluster and prints
# one `bench=<name> cmds_per_s=<N> p50_ms=<x>` line per run.
# Usage: scripts/system-bench.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo build --release -q -p psmr-experiments --bin psmr
psmr=target/release/psmr
dir=$(mktemp -d)
trap 'kill -INT $cluster 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT

source scripts/local-cluster.sh

one() { # name storage clients in_flight
  start_cluster "$dir/local.out" --dir "$dir/cluster" --port 7600 --storage "$2" --stop-after 120s
  report=$("$psmr" client --config "$dir/cluster/cluster.toml" load \
    --duration 8s --warmup 2s --clients "$3" --in-flight "$4")
  kill -INT $cluster; wait $cluster || true
  echo "$report" | awk -v name="$1" '{
    for (i = 1; i <= NF; i++) { if ($i == "throughput") t = $(i + 1); if ($i == "p50") p = $(i + 1) }
    printf "bench=%s cmds_per_s=%s p50_ms=%s\n", name, t, p }'
}

for _ in $(seq 1 "$runs"); do
  one memory_2x256 memory 2 256
  one memory_2x1024 memory 2 1024
  one durable_2x256 durable 2 256
  one durable_2x1024 durable 2 1024
  one memory_1x1 memory 1 1
done
