#!/usr/bin/env bash
# How fast a replica restarted after kill -9 catches up while the cluster
# takes load (issue 25): a `psmr local` cluster file, its five processes run
# one by one, `psmr client load` for the whole run; replica 101 is killed
# after 4 s, started again DOWN seconds later, and its log says how many
# commands it executed to catch up and how long that took ("caught up").
# Prints the live throughput and the catch-up rate side by side.
# Usage: scripts/catch-up.sh [ENGINE] [DOWN]   e.g. scripts/catch-up.sh psmr 10
# The load is paced (RATE commands/s, default 100,000): on a machine that the
# live load saturates, a restarted replica gets no CPU to catch up with.
# Environment: PRELOAD keys (default 100,000); CHECKPOINT_EVERY (default 60s:
# the restarted replica replays everything since its newest checkpoint);
# PSMR a psmr binary instead of this tree's release build.
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${1:-psmr}; down=${2:-10}
cargo build --release -q -p psmr-experiments --bin psmr
psmr=${PSMR:-$PWD/target/release/psmr}
dir=$(mktemp -d)
pids=()
trap 'kill -9 "${pids[@]}" 2>/dev/null; wait 2>/dev/null; [ -n "${KEEP:-}" ] && echo "kept $dir" || rm -rf "$dir"' EXIT
"$psmr" local --engine "$engine" --preload "${PRELOAD:-100000}" --dir "$dir/c" --port 7750 \
  --stop-after 1s >"$dir/local.out" 2>&1
config=$dir/c/cluster.toml
sed -i "s/^every = .*/every = \"${CHECKPOINT_EVERY:-60s}\"/" "$config"
rm -rf "$dir"/c/data/*
start() { # role id -> starts the node, its log in $dir/ID.log
  local extra=()
  [ "$1" = acceptor ] && extra=(--init)
  RUST_LOG=info "$psmr" "$1" --config "$config" --id "$2" "${extra[@]}" 2>>"$dir/$2.log" >/dev/null &
  pids+=($!)
  eval "pid_$2=$!"
}
for id in 1 2 3; do start acceptor $id; done
for id in 101 102; do start replica $id; done
sleep 2
duration=$((4 + down + 12))
"$psmr" client --config "$config" load --duration "${duration}s" --warmup 1s \
  --clients 2 --in-flight 256 --dependent 0.1 --rate "${RATE:-100000}" >"$dir/load.out" 2>&1 &
load=$!
sleep 4
kill -9 "$pid_101"
wait "$pid_101" 2>/dev/null || true
sleep "$down"
start replica 101
wait $load
live=$(awk '{ for (i = 1; i <= NF; i++) if ($i == "throughput") print $(i + 1) }' "$dir/load.out")
line=$(sed 's/\x1b\[[0-9;]*m//g' "$dir/101.log" | grep 'caught up: answering' | sort -t= -k2 -n | tail -1)
commands=$(grep -o 'commands=[0-9]*' <<<"$line" | cut -d= -f2)
ms=$(grep -o 'ms=[0-9]*' <<<"$line" | cut -d= -f2)
echo "replica 101 after its restart:"
sed 's/\x1b\[[0-9;]*m//g' "$dir/101.log" | grep -E 'resuming|checkpoint received|caught up|behind the rings|trimmed' |
  sed -E 's/^[0-9T:.-]+Z +//; s/^/  /' | cut -c1-160
echo "engine=$engine down=${down}s live throughput (whole run, one replica down part of it): $live cmds/s"
if [ -z "$ms" ]; then
  echo "replica 101 did not catch up within the run"; tail -5 "$dir/101.log"; exit 1
fi
awk -v c="$commands" -v ms="$ms" -v live="$live" 'BEGIN {
  rate = c / (ms > 0 ? ms : 1) * 1000
  printf "catch-up: %d commands in %d ms = %.0f cmds/s (%.1fx the live throughput)\n", c, ms, rate, rate / live }'
