# Sourced by the scripts that measure a `psmr local` cluster.
# start_cluster LOG ARGS...: starts `$psmr local ARGS...` in the background,
# its output in LOG, sets $cluster to its pid, and returns once it serves
# (exits with its output if it dies first).
start_cluster() {
  local log=$1
  shift
  "$psmr" local "$@" >"$log" 2>&1 &
  cluster=$!
  for _ in $(seq 1 240); do
    grep -q '^serving' "$log" && return
    kill -0 "$cluster" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.25
  done
  echo "psmr local did not start serving within 60 s" >&2
  exit 1
}
