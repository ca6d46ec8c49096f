#!/usr/bin/env bash
# Real packet-level partitions against a real `psmr local` cluster, and how
# long the cluster takes to serve again after each heals.
#
#   sudo scripts/partition-heal.sh [ENGINE] [STORAGE] [CUT_SECONDS] [ROUNDS]
#   (defaults: psmr memory 5 3; needs root for a network namespace)
#
# Everything runs in a network namespace of its own, on loopback; nothing
# outside it is touched. Every node of `psmr local` has its own UDP port
# (acceptors PORT..PORT+2, replicas PORT+100..), so `ip rule ... blackhole`
# on ports cuts single directions. Each round, under a steady closed-loop
# load, the script cuts acceptor 1 (the first coordinator of every ring) in
# one way — both ways, inbound only, outbound only — for CUT_SECONDS, heals,
# and with KINDS=lossy makes its inbound direction lossy instead (a link
# shaped to LOSSY_RATE, default 200kbit, with a 10-packet queue: most
# packets to acceptor 1 are dropped, the rest delayed; this kernel has no
# netem, so loss comes from the shaper),
# and reads the client's timeline (answered calls per 100 ms) to print:
#   served during the cut, as a share of the rate before it;
#   time from the heal to the first 100 ms at half the rate before the cut;
#   time spent below half that rate in the 5 s after the heal.
# Also the acceptors' elections counters from their logs.
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${1:-psmr}
storage=${2:-memory}
cut=${3:-5}
rounds=${4:-3}
psmr=${PSMR:-target/release/psmr}
port=7300
ns=psmr-partition-$$

if [[ $(id -u) != 0 ]]; then
  echo "partition-heal.sh needs root (it creates a network namespace)" >&2
  exit 2
fi
[[ -x $psmr ]] || cargo build --release -q -p psmr-experiments
work=$(mktemp -d)
cleanup() {
  ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
  sleep 0.5
  ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  [[ -n ${KEEP:-} ]] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns"
inns() { ip netns exec "$ns" "$@"; }
inns ip link set lo up
# Loopback is routed by the `local` table, looked up first: move it behind
# the rules this script adds, so that they can drop loopback packets.
inns ip rule add pref 200 lookup local
inns ip rule del pref 0
# For KINDS=lossy: every packet on loopback passes an HTB shaper whose
# default class is unlimited; a cut moves acceptor 1's inbound packets to a
# slow class with a short queue.
if [[ " ${KINDS:-} " == *" lossy "* ]]; then
  inns tc qdisc add dev lo root handle 1: htb default 10 r2q 100000
  inns tc class add dev lo parent 1: classid 1:10 htb rate 100gbit
  inns tc class add dev lo parent 1: classid 1:20 htb rate "${LOSSY_RATE:-200kbit}"
  inns tc qdisc add dev lo parent 1:20 handle 20: pfifo limit 10
fi

a1=$port
cut_rules() { # KIND add|del
  case $1 in
    both) inns ip rule "$2" pref 100 ipproto udp dport "$a1" blackhole
          inns ip rule "$2" pref 101 ipproto udp sport "$a1" blackhole ;;
    inbound) inns ip rule "$2" pref 100 ipproto udp dport "$a1" blackhole ;;
    outbound) inns ip rule "$2" pref 101 ipproto udp sport "$a1" blackhole ;;
    lossy) if [[ $2 == add ]]; then
             inns tc filter add dev lo parent 1: protocol ip prio 1 u32 \
               match ip protocol 17 0xff match ip dport "$a1" 0xffff flowid 1:20
           else
             inns tc filter del dev lo parent 1: protocol ip prio 1
           fi ;;
    *) echo "unknown kind $1 (both, inbound, outbound, lossy)" >&2; exit 2 ;;
  esac
}

kinds=(${KINDS:-both inbound outbound})
total=$((10 + rounds * ${#kinds[@]} * (cut + 10)))
RUST_LOG=${RUST_LOG:-warn,psmr_replica::runtime=info,psmr_multicast::process=info,psmr_core::proto=info} inns "$psmr" local --engine "$engine" --storage "$storage" --port "$port" \
  --dir "$work/cluster" --preload 100000 --stop-after "$((total + 30))s" \
  >"$work/cluster.log" 2>&1 &
for _ in $(seq 1 240); do
  grep -q '^serving' "$work/cluster.log" && break
  sleep 0.25
done
grep -q '^serving' "$work/cluster.log" || { cat "$work/cluster.log" >&2; exit 1; }

inns "$psmr" client --config "$work/cluster/cluster.toml" load --warmup 0s \
  --duration "${total}s" --clients 4 --in-flight 16 --timeline 100ms \
  >"$work/timeline.txt" 2>&1 &
load=$!
start=$(date +%s.%N)
sleep 10
events=()
for round in $(seq 1 "$rounds"); do
  for kind in ${KINDS:-both inbound outbound}; do
    t0=$(echo "$(date +%s.%N) - $start" | bc)
    cut_rules "$kind" add
    echo "$(date -u +%H:%M:%S.%N) cut $kind" >>"$work/events.txt"
    sleep "$cut"
    cut_rules "$kind" del
    echo "$(date -u +%H:%M:%S.%N) heal $kind" >>"$work/events.txt"
    t1=$(echo "$(date +%s.%N) - $start" | bc)
    events+=("$round $kind $t0 $t1")
    sleep 10
  done
done
wait "$load" || true

python3 - "$work/timeline.txt" "${events[@]}" <<'EOF'
import sys
lines = [l.split() for l in open(sys.argv[1]) if l.startswith("timeline")]
series = [(float(l[1][2:]), int(l[2].split("=")[1])) for l in lines]
def rate(a, b):
    xs = [n for t, n in series if a <= t < b]
    return sum(xs) / max(len(xs), 1)
print(f"{'round':>5} {'cut':>9} {'before':>9} {'during':>7} {'first back':>10} {'below half, 5 s after':>22}")
for event in sys.argv[2:]:
    r, kind, t0, t1 = event.split()
    t0, t1 = float(t0), float(t1)
    before = rate(t0 - 4, t0)
    during = rate(t0, t1) / max(before, 1)
    back = next((t - t1 for t, n in series if t >= t1 and n >= before / 2), float("inf"))
    low = sum(0.1 for t, n in series if t1 <= t < t1 + 5 and n < before / 2)
    print(f"{r:>5} {kind:>9} {before * 10:>7.0f}/s {during:>6.0%} {back:>9.1f}s {low:>21.1f}s")
    if "-v" in sys.argv[0:1] or __import__("os").environ.get("VERBOSE"):
        print("   ", [n for t, n in series if t0 - 0.5 <= t < t1 + 3])
EOF
[[ " ${KINDS:-} " == *" lossy "* ]] && inns tc -s class show dev lo classid 1:20 | sed 's/^/  shaper: /'
echo "terms started and ended, per acceptor (its last counters logged):"
grep "acceptor counters" "$work/cluster.log" | sed 's/\x1b\[[0-9;]*m//g' \
  | sed -E 's/.*node=(n[0-9]+).* (elections=[0-9]+ step_downs=[0-9]+ prepares_refused=[0-9]+).*/  \1 \2/' \
  | tac | sort -s -u -k1,1 || true
