#!/usr/bin/env bash
# Throughput of a local cluster while random UDP datagrams flood an acceptor
# and a replica, against the same flood aimed at closed ports (the flooders
# take the same CPU either way, so the ratio is what the garbage costs the
# cluster). Issue 27 point 6; figures in docs/benchmarks.md.
#
#   scripts/garbage-flood.sh [ROUNDS] [PSMR]
#
# Prints one line per run and the ratio flood/closed per round, then the
# acceptor's and the replica's psmr_bad_datagrams_total (dropped by the process)
# and psmr_udp_kernel_drops_total (dropped by the socket's BPF filter).
set -euo pipefail
rounds=${1:-2}
psmr=${2:-target/release/psmr}
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d)
port=7700
trap 'kill $local 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
"$psmr" local --dir "$dir/cluster" --port $port --preload 100000 --stop-after 600s >"$dir/local.out" 2>/dev/null &
local=$!
until grep -q serving "$dir/local.out" 2>/dev/null; do sleep 0.2; done
run() { # TARGET_OFFSET -> throughput
    python3 "$here/garbage.py" 127.0.0.1 $(($1)) 7 2>/dev/null &
    python3 "$here/garbage.py" 127.0.0.1 $(($1 + 100)) 7 2>/dev/null &
    "$psmr" client --config "$dir/cluster/cluster.toml" load --duration 5s --warmup 1s \
        --clients 2 --in-flight 64 | awk '{print $2}'
    wait %2 %3 2>/dev/null || true
}
for r in $(seq "$rounds"); do
    closed=$(run $((port - 1)))
    flood=$(run $port)
    echo "round $r: closed ports $closed cmds/s, flood $flood cmds/s, ratio $(python3 -c "print(f'{$flood/$closed:.2f}')")"
done
for p in $port $((port + 100)); do
    echo "n at $p: $(curl -s "http://127.0.0.1:$p/metrics" | grep -E '^psmr_(bad_datagrams|udp_kernel_drops)_total' | tr '\n' ' ')"
done
