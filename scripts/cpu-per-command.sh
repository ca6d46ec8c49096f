#!/usr/bin/env bash
# CPU time per command of each process of a `psmr local` cluster under
# `psmr client load`: where an engine spends the cores, not only how fast
# it goes. Samples utime+stime from /proc/<pid>/stat over 5 s of the load.
# Also counts the UDP datagrams sent on the machine (/proc/net/snmp) per
# command: QUIC packets, acknowledgements included; and how the machine's
# cores spent the same 5 s (/proc/stat: user, system, idle, stolen by the
# hypervisor), to tell a quiet run from a noisy one.
# Usage: scripts/cpu-per-command.sh ENGINE DEPENDENT [THREADS] [CLIENTS] [IN_FLIGHT]
#   e.g. scripts/cpu-per-command.sh psmr 0.5; scripts/cpu-per-command.sh smr 0.5
#        scripts/cpu-per-command.sh opt-psmr 0 2 1 1   (one call in flight: latency)
# Environment: PRELOAD keys (default 100,000); STORAGE memory|durable (default
# memory); VALUE_SIZE bytes per value (default: psmr local's, 8); PSMR a psmr binary to measure
# instead of this tree's release build (to compare two builds side by side);
# LOAD_ARGS more arguments for `psmr client load` (e.g. --every-replica-answers).
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${1:?engine}; dependent=${2:?dependent share}; threads=${3:-2}
clients=${4:-4}; in_flight=${5:-256}
[ -n "${PSMR:-}" ] || cargo build --release -q -p psmr-experiments --bin psmr
psmr=${PSMR:-$PWD/target/release/psmr}
dir=$(mktemp -d)
trap 'kill -INT $cluster 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
source scripts/local-cluster.sh
start_cluster "$dir/local.out" --engine "$engine" --threads "$threads" --preload "${PRELOAD:-100000}" \
  --storage "${STORAGE:-memory}" ${VALUE_SIZE:+--value-size "$VALUE_SIZE"} --dir "$dir/cluster" --port 7650 --stop-after 60s
"$psmr" client --config "$dir/cluster/cluster.toml" load --duration 8s --warmup 1s \
  --clients "$clients" --in-flight "$in_flight" --dependent "$dependent" ${LOAD_ARGS:-} >"$dir/load.out" &
load=$!
switches() { # pid -> context switches of all its threads
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { n += $2 } END { print n + 0 }'
}
ticks() { # pid -> utime+stime in clock ticks
  awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
role() { tr '\0' ' ' <"/proc/$1/cmdline" | awk '{ for (i = 1; i <= NF; i++) if ($i == "--id") id = $(i + 1); print ($2 == "client" ? "client (load)" : $2 (id ? " " id : "")) }'; }
sleep 3
pids=$(pgrep -f "$dir/cluster/cluster.toml" || true)
udp_out() { awk '/^Udp:/ { n++ } /^Udp:/ && n == 2 { print $5 }' /proc/net/snmp; }
declare -A before roles wakes
for p in $pids; do before[$p]=$(ticks "$p"); roles[$p]=$(role "$p"); wakes[$p]=$(switches "$p"); done
datagrams=$(udp_out)
cores_before=$(head -1 /proc/stat)
sleep 5
cores_after=$(head -1 /proc/stat)
datagrams=$(( $(udp_out) - datagrams ))
hz=$(getconf CLK_TCK)
declare -A used
for p in $pids; do
  used[$p]=$(( $(ticks "$p") - ${before[$p]} ))
  wakes[$p]=$(( $(switches "$p") - ${wakes[$p]} ))
done
wait $load
throughput=$(awk '{ for (i = 1; i <= NF; i++) if ($i == "throughput") print $(i + 1) }' "$dir/load.out")
latency=$(grep -o 'p50 [0-9.]*' "$dir/load.out")
echo "engine=$engine threads=$threads dependent=$dependent storage=${STORAGE:-memory} load=${clients}x$in_flight throughput=$throughput cmds/s $latency ms"
awk -v d="$datagrams" -v n="$throughput" 'BEGIN { printf "UDP datagrams sent: %.3f per command\n", d / 5 / n }'
printf '%s\n%s\n' "$cores_before" "$cores_after" | awk -v cores="$(nproc)" '
  NR == 1 { for (i = 2; i <= 9; i++) a[i] = $i }
  NR == 2 { for (i = 2; i <= 9; i++) { d[i] = $i - a[i]; t += d[i] }
    s = 100 * cores / t
    printf "machine (%d cores = %d %%): user %.0f %%, system %.0f %%, idle %.0f %%, stolen %.0f %%\n",
      cores, 100 * cores, d[2] * s, (d[4] + d[7] + d[8]) * s, (d[5] + d[6]) * s, d[9] * s }'
for p in $pids; do
  awk -v t="${used[$p]}" -v hz="$hz" -v n="$throughput" -v r="${roles[$p]}" -v w="${wakes[$p]}" \
    'BEGIN { printf "%-14s %5.1f %% of a core  %7.2f us CPU  %6.3f context switches per command\n", r, 100 * t / hz / 5, 1e6 * t / hz / 5 / n, w / 5 / n }'
done
