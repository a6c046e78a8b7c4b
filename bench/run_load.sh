#!/usr/bin/env bash
# The load comparisons of issue 4 on this machine, over loopback: accel-server
# (CPU backend, started here on port 0, batching on and off) against the echo
# floor built into load_gen (load_gen --serve_echo: a process of its own, like
# the server), each pair measured back to back in the same run.
#
#   1. RmsNorm of one 4096-wide bf16 row at concurrency 1: p50 vs echo p50.
#   2. The same at concurrency 64: QPS vs echo QPS.
#   3. One 64 MiB request ([8192, 4096] bf16) at a time: MB/s vs echo MB/s.
#   4. Stream vs unary QPS at concurrency 64 (single rows), echo stream too.
#   Plus a latency-vs-concurrency sweep (1, 4, 16, 64; unary and stream;
#   batching on and off) plotted by bench/plot_latency.py.
#
# Environment: ACCEL_DEVICE (default cpu; the GPU machine uses auto),
# CONCURRENCY (default "1 4 16 64"), PLOT (default bench/load_latency.png),
# SERVER_FLAGS (more accel-server flags for both servers, e.g.
# --max_inflight_batches=8).
# Usage: bench/run_load.sh [BUILD_DIR (default build)] [OUT_DIR (default bench_out/load)]
#        [DURATION_S per run (default 3)] [ROUNDS (default 2)]
# Needs BUILD_DIR/server/accel-server and BUILD_DIR/bench/load_gen. Writes one
# JSON per run, OUT_DIR/summary.txt (load_gen's lines), OUT_DIR/table.md (the
# comparisons) and bench/load_latency.png.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/serve_lib.sh
build=${1:-build}
out=${2:-bench_out/load}
duration=${3:-3}
rounds=${4:-2}
mkdir -p "$out"
rm -f "$out"/*.json "$out/summary.txt"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT

# start NAME COMMAND...: starts a server (bench/serve_lib.sh) and sets
# $grpc and $metrics from its listening line.
start() {
  local name=$1
  shift
  serve "$out/server.$name" "$@"
  pids+=("$served_pid")
  echo "# $name: $line" | tee -a "$out/summary.txt"
}

# lg FILE LABEL [FLAGS...]: one load_gen run.
lg() {
  local file=$1 label=$2
  shift 2
  "$build/bench/load_gen" --duration_s="$duration" --warmup_s=1 --json="$out/$file.json" \
    --label="$label" "$@" | tee -a "$out/summary.txt"
}

# Callers spread over up to 4 connections.
channels() { if [ "$1" -ge 16 ]; then echo 4; else echo 1; fi; }

# Three servers, all separate processes on loopback, idle when not measured.
server="$build/server/accel-server --grpc_address=127.0.0.1:0 --metrics_address=127.0.0.1:0 ${SERVER_FLAGS:-}"
start batching $server --device="${ACCEL_DEVICE:-cpu}"
on="--target=$grpc --metrics=$metrics"
start nobatch $server --device="${ACCEL_DEVICE:-cpu}" --batching=false
off="--target=$grpc --metrics=$metrics"
start echo "$build/bench/load_gen" --serve_echo
echo_srv="--echo --echo_target=$grpc"

# This VM is shared and its load drifts: every comparison alternates its
# sides, `rounds` times; table.md and the plot take the median per point.
row="--op=rms_norm --rows=1 --width=4096 --dtype=bf16"
for c in ${CONCURRENCY:-1 4 16 64}; do
  ch=$(channels "$c")
  for r in $(seq "$rounds"); do
    base="$row --concurrency=$c --channels=$ch"
    lg "unary_c${c}_server_r$r" "accel-server unary" $on $base
    lg "unary_c${c}_echo_r$r" "echo unary" $echo_srv $base
    lg "stream_c${c}_server_r$r" "accel-server stream" $on $base --stream
    lg "stream_c${c}_echo_r$r" "echo stream" $echo_srv $base --stream
    lg "unary_c${c}_nobatch_r$r" "accel-server unary, --batching=false" $off $base
    lg "stream_c${c}_nobatch_r$r" "accel-server stream, --batching=false" $off $base --stream
  done
done
big="--op=rms_norm --rows=8192 --width=4096 --dtype=bf16 --concurrency=1"
for r in $(seq "$rounds"); do
  lg "big_server_r$r" "accel-server 64 MiB" $on $big --duration_s=$((duration * 3))
  lg "big_echo_r$r" "echo 64 MiB" $echo_srv $big --duration_s=$((duration * 3))
done

# Debian's python3-matplotlib (deploy/install-deps.sh) lives under /usr/bin/python3,
# which a pyenv or venv python3 on PATH would not see.
python=${PYTHON:-python3}
[ -x /usr/bin/python3 ] && [ -z "${PYTHON:-}" ] && python=/usr/bin/python3
"$python" bench/plot_latency.py --out "${PLOT:-bench/load_latency.png}" "$out"/*_c*_r*.json

"$python" - "$out" <<'PY' | tee "$out/table.md"
import json, sys, os
d = sys.argv[1]
import re, statistics
runs = {}
for f in os.listdir(d):
    if f.endswith(".json"):
        runs.setdefault(re.sub(r"_r\d+$", "", f[:-5]), []).append(json.load(open(os.path.join(d, f))))
def med(name, key):
    return statistics.median(v[key] for v in runs[name])
r = {}
for name, vs in runs.items():
    m = dict(vs[0])
    for key in ("qps", "mb_per_s", "p50_us", "p90_us", "p99_us", "max_us"):
        m[key] = statistics.median(v[key] for v in vs)
    rpl = [v["rows_per_launch"] for v in vs if v.get("rows_per_launch") is not None]
    m["rows_per_launch"] = statistics.median(rpl) if rpl else None
    errors = {}
    for v in vs:
        for code, n in v["errors"].items():
            errors[code] = errors.get(code, 0) + n
    m["errors"] = errors
    m["rounds"] = len(vs)
    r[name] = m
def row(goal, what, ours, echo, ratio, target, ok):
    print(f"| {goal} | {what} | {ours} | {echo} | {ratio:.2f} | {target} | {'yes' if ok else 'no'} |")
print("| goal | measure | accel-server | echo floor | ratio | target | met |")
print("|---|---|---:|---:|---:|---:|---|")
s, e = r["unary_c1_server"], r["unary_c1_echo"]
x = s["p50_us"] / e["p50_us"]
row("1 row, c=1", "p50 latency (us)", f"{s['p50_us']:.0f}", f"{e['p50_us']:.0f}", x, "<= 1.3", x <= 1.3)
s, e = r["unary_c64_server"], r["unary_c64_echo"]
x = s["qps"] / e["qps"]
row("1 row, c=64", "QPS", f"{s['qps']:.0f}", f"{e['qps']:.0f}", x, ">= 0.8", x >= 0.8)
s, e = r["big_server"], r["big_echo"]
x = s["mb_per_s"] / e["mb_per_s"]
row("64 MiB, c=1", "MB/s (request bytes)", f"{s['mb_per_s']:.0f}", f"{e['mb_per_s']:.0f}", x, ">= 0.7", x >= 0.7)
s, u = r["stream_c64_server"], r["unary_c64_server"]
x = s["qps"] / u["qps"]
row("stream vs unary, c=64", "QPS (stream / unary, ours)", f"{s['qps']:.0f}", f"{u['qps']:.0f} (unary)", x, ">= 2", x >= 2)
se = r["stream_c64_echo"]
x = s["qps"] / se["qps"]
row("stream, c=64", "QPS vs echo stream", f"{s['qps']:.0f}", f"{se['qps']:.0f}", x, "-", True)
s = r["unary_c64_server"]
x = s["p99_us"] / s["p50_us"]
row("unary tail, c=64", "p99 / p50 (ours)", f"{s['p99_us']:.0f} p99", f"{s['p50_us']:.0f} p50", x, "< 2", x < 2)
if "unary_c256_server" in r:  # the GPU machine's goals
    on, off = r["unary_c256_server"], r["unary_c256_nobatch"]
    x = on["qps"] / off["qps"]
    row("batching, c=256", "QPS on / --batching=false", f"{on['qps']:.0f}", f"{off['qps']:.0f} (off)", x, ">= 3", x >= 3)
    rpl = on.get("rows_per_launch") or 0
    row("batching, c=256", "mean rows per launch", f"{rpl:.1f}", "-", rpl, ">= 32", rpl >= 32)
    # The ceiling of the first ratio: no server outruns the echo floor, so
    # on / off can reach at most echo / off.
    e = r["unary_c256_echo"]
    row("batching, c=256", "QPS on vs echo (ceiling)", f"{on['qps']:.0f}", f"{e['qps']:.0f}",
        on["qps"] / e["qps"], "-", True)
    row("batching, c=256", "QPS off vs echo", f"{off['qps']:.0f}", f"{e['qps']:.0f}",
        off["qps"] / e["qps"], "-", True)
print()
print("Medians over rounds (each run alternated with its pair).")
print()
print("| run | QPS | p50 us | p90 us | p99 us | max us | rows/launch | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for k in sorted(r):
    v = r[k]
    rpl = "" if v.get("rows_per_launch") is None else f"{v['rows_per_launch']:.2f}"
    print(f"| {k} | {v['qps']:.0f} | {v['p50_us']:.0f} | {v['p90_us']:.0f} | {v['p99_us']:.0f} "
          f"| {v['max_us']:.0f} | {rpl} | {v['errors'] or ''} |")
PY
