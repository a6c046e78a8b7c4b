# Sourced by the bench scripts (run_load.sh, device_run.sh).
#
# serve LOG_PREFIX COMMAND...: starts COMMAND (accel-server, or load_gen
# --serve_echo) in the background with stdout in LOG_PREFIX.out and stderr
# in LOG_PREFIX.err, waits up to 10 s for its "listening grpc=H:P
# metrics=H:P" line and sets $grpc, $metrics (empty for the echo), $line
# and $served_pid. A server that dies first has its stderr printed and the
# script exits 1.
serve() {
  local log=$1
  shift
  "$@" >"$log.out" 2>"$log.err" &
  served_pid=$!
  for _ in $(seq 200); do
    grep -q '^listening ' "$log.out" 2>/dev/null && break
    kill -0 "$served_pid" 2>/dev/null || { cat "$log.err"; exit 1; }
    sleep 0.05
  done
  line=$(grep '^listening ' "$log.out")
  grpc=$(sed 's/.*grpc=\([^ ]*\).*/\1/' <<<"$line")
  metrics=$(sed -n 's/.*metrics=\([^ ]*\).*/\1/p' <<<"$line")
}
