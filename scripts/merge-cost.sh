#!/usr/bin/env bash
# Instructions executed by the learner and merger for the same commands
# decided in 1 ring and in 9 rings, counted by callgrind: repeatable on a
# shared, noisy machine where wall-clock ratios are not.
# Usage: scripts/merge-cost.sh   (needs valgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "merge-cost: valgrind is required" >&2; exit 2; }
bench=$(cargo bench -p psmr-multicast --no-run --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*core-[^"]*"' | head -1 | cut -d'"' -f4)
[ -x "$bench" ] || { echo "merge-cost: could not build the benchmark" >&2; exit 1; }
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null --toggle-collect='*merge_run*' \
    "$bench" "$1" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
one=$(count learner_merge_1ring)
nine=$(count learner_merge_9rings)
awk -v a="$one" -v b="$nine" 'BEGIN {
  printf "instructions: 1 ring %d, 9 rings %d\n", a, b
  printf "bench=merge_9rings_instruction_cost percent=%.1f\n", (b / a - 1) * 100
}'
