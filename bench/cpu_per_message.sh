#!/usr/bin/env bash
# CPU time per message of accel-server and of the echo floor, and of the
# load generator driving each (from /proc/PID/stat and /usr/bin/time), for
# one-row RmsNorm at concurrency 64 over 4 connections, stream and unary.
# On a machine where client and servers share the cores these costs, not
# latencies, decide the stream/unary QPS ratio: QPS ~ cores / (server +
# client us per message).
#
# Usage: bench/cpu_per_message.sh [BUILD_DIR (default build)] [DURATION_S (default 3)]
# Extra accel-server flags: SERVER_FLAGS (e.g. --max_inflight_batches=8).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/serve_lib.sh
build=${1:-build}
duration=${2:-3}
serve /tmp/cpm_server "$build/server/accel-server" --grpc_address=127.0.0.1:0 \
  --metrics_address=127.0.0.1:0 --device=cpu ${SERVER_FLAGS:-}
server_pid=$served_pid
server_flags="--target=$grpc --metrics=$metrics"
serve /tmp/cpm_echo "$build/bench/load_gen" --serve_echo
echo_pid=$served_pid
echo_flags="--echo --echo_target=$grpc"
trap 'kill -TERM $server_pid $echo_pid 2>/dev/null; wait $server_pid $echo_pid 2>/dev/null' EXIT
row="--op=rms_norm --rows=1 --width=4096 --dtype=bf16 --concurrency=64 --channels=4"
row="$row --duration_s=$duration --warmup_s=0"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # utime + stime of the process
hz=$(getconf CLK_TCK)
printf "%-14s %9s %16s %16s\n" "run" "QPS" "server us/msg" "client us/msg"
for mode in stream unary; do
  for side in server echo; do
    if [ $side = server ]; then pid=$server_pid flags=$server_flags; else pid=$echo_pid flags=$echo_flags; fi
    extra=""
    [ $mode = stream ] && extra="--stream"
    before=$(ticks "$pid")
    /usr/bin/time -f "%U %S" -o /tmp/cpm_client_time "$build/bench/load_gen" $flags $row $extra \
      --json=/tmp/cpm.json > /dev/null
    after=$(ticks "$pid")
    /usr/bin/python3 - "$side $mode" "$before" "$after" "$hz" "$duration" <<'PY'
import json, sys
label, before, after, hz, duration = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
qps = json.load(open("/tmp/cpm.json"))["qps"]
user, system = map(float, open("/tmp/cpm_client_time").read().split())
messages = qps * duration
print(f"{label:14s} {qps:9.0f} {(after - before) / hz / messages * 1e6:16.1f} {(user + system) / messages * 1e6:16.1f}")
PY
  done
done
