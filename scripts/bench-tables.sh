#!/usr/bin/env bash
# The running system's figures side by side, as Markdown for docs/benchmarks.md:
# a fresh `psmr local` (3 acceptors, 2 replicas, opt-psmr K=2, 1,000,000 keys,
# 0 % dependent) per configuration and round, measured by
# scripts/cpu-per-command.sh (throughput, p50, CPU time per command summed over
# every process, the load generator included, and the machine's stolen time):
#   memory  2 clients x 256 in flight     durable 2 x 256      (throughput)
#   memory  1 client  x 1 in flight       durable 1 x 1        (latency)
# Rounds interleave the configurations (A B C D A B C D ...), so that a noisy
# minute touches every configuration alike.
# Usage: scripts/bench-tables.sh [ROUNDS] [OUT]   (default 2 rounds; OUT: also
#   write the tables there)
# Environment: VALUE_SIZE bytes per value (default 8); PSMR a psmr binary to
#   measure instead of this tree's release build.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
out=${2:-}
[ -n "${PSMR:-}" ] || cargo build --release -q -p psmr-experiments --bin psmr
commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- . || commit="$commit + uncommitted changes"

# name storage clients in_flight target_throughput target_p50_ms
configs=(
  "memory_2x256 memory 2 256 600000 -"
  "durable_2x256 durable 2 256 400000 -"
  "memory_1x1 memory 1 1 - 0.12"
  "durable_1x1 durable 1 1 - 0.4"
)
declare -A tput p50 cpu steal
for round in $(seq 1 "$rounds"); do
  for config in "${configs[@]}"; do
    read -r name storage clients in_flight _ <<<"$config"
    echo "round $round: $name" >&2
    report=$(STORAGE=$storage PRELOAD=1000000 scripts/cpu-per-command.sh opt-psmr 0 2 "$clients" "$in_flight")
    key="$name.$round"
    tput[$key]=$(echo "$report" | grep -o 'throughput=[0-9.]*' | cut -d= -f2)
    p50[$key]=$(echo "$report" | grep -o 'p50 [0-9.]*' | cut -d' ' -f2)
    cpu[$key]=$(echo "$report" | awk '/us CPU/ { for (i = 1; i <= NF; i++) if ($i == "us" && $(i + 1) == "CPU") s += $(i - 1) } END { printf "%.2f", s }')
    steal[$key]=$(echo "$report" | grep -o 'stolen [0-9]*' | cut -d' ' -f2)
  done
done

met() { # value target direction(ge|le) -> 1 if the value meets the target
  awk -v v="$1" -v t="$2" -v d="$3" 'BEGIN { print ((d == "ge") ? v >= t : v <= t) ? 1 : 0 }'
}
row() { # label metric-array name target direction format
  local -n values=$2
  local label=$1 name=$3 target=$4 dir=$5 fmt=$6 cells="" all=yes
  for round in $(seq 1 "$rounds"); do
    local v=${values[$name.$round]:-0}
    cells="$cells | $(printf "$fmt" "$v")"
    [ "$target" = "-" ] || [ "$(met "$v" "$target" "$dir")" = 1 ] || all=no
  done
  [ "$target" = "-" ] && all=""
  echo "| $label$cells | $target | $all |"
}
header() {
  local h="| configuration" sep="|---"
  for round in $(seq 1 "$rounds"); do h="$h | round $round"; sep="$sep|---:"; done
  echo "$h | target | every round meets it |"
  echo "$sep|---:|---|"
}
tables() {
  echo "Commit $commit, $(date -u +%Y-%m-%d), $(nproc) cores, value size ${VALUE_SIZE:-8} bytes;"
  echo "\`scripts/bench-tables.sh $rounds\` (each cell one fresh cluster, rounds interleaved)."
  echo
  header
  for config in "${configs[@]}"; do
    read -r name _ clients in_flight target_t target_p <<<"$config"
    if [ "$target_t" != "-" ]; then
      row "$name, commands/s" tput "$name" "$target_t" ge "%.0f"
    else
      row "$name, p50 ms" p50 "$name" "$target_p" le "%.3f"
    fi
  done
  for config in "${configs[@]}"; do
    read -r name _ <<<"$config"
    local target="-"
    case $name in *2x256) target=3 ;; esac
    row "$name, CPU µs per command (all processes)" cpu "$name" "$target" le "%.2f"
  done
  for config in "${configs[@]}"; do
    read -r name _ <<<"$config"
    row "$name, machine time stolen %" steal "$name" "-" le "%.0f"
  done
}
if [ -n "$out" ]; then tables | tee "$out"; else tables; fi
