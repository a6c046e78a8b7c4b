#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, with gpu-bundle/ (made
# by tools/gpu-bundle.sh from a -DCMAKE_CUDA_ARCHITECTURES=90 build) carried:
#   bench/device_run.sh tests   # every CUDA test + the integration tests on the GPU
#   bench/device_run.sh bench   # kernel benchmarks vs copy, PyTorch eager and compile
#   bench/device_run.sh load    # bench/run_load.sh on the GPU, then a sweep of
#                               # --max_inflight_batches at c=256 unary / c=64 stream
#   bench/device_run.sh sweep   # only that sweep (SWEEP_FLAGS: more flags for its
#                               # servers, INFLIGHT: the values, default 1 2 4 8)
#   bench/device_run.sh channels # stream and unary at c=64 over 4-64 connections
#                               # (CHANNELS: the counts; SWEEP_FLAGS), server and echo
#   bench/device_run.sh linear  # one-row W8A16 Linear, batching on vs off vs echo
#                               # (LINEAR_N: output features, default 11008;
#                               # LINEAR_OP=ffn: the Ffn block, LINEAR_N its I;
#                               # SWEEP_FLAGS: more flags for the batching server)
#   bench/device_run.sh latency # c=1 single rows: where a request's time goes
#                               # (server means per phase), inline on/off, the
#                               # same server on --device=cpu, echo
# Logs and JSON go to $OUT (the device tool's output folder) or ./device_out.
set -uo pipefail
export LD_LIBRARY_PATH="$PWD/gpu-bundle/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell}
. bench/serve_lib.sh
# server_process_test starts the binary itself.
export ACCEL_SERVER_BINARY=${ACCEL_SERVER_BINARY:-$PWD/gpu-bundle/bin/accel-server}
bin=gpu-bundle/bin
out=${OUT:-device_out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv \
  | tee "$out/gpu.txt"

# How many launches of one key in flight pay off (one server per value):
# unary c=256 and stream c=64 one-row RmsNorm against each server.
inflight_sweep() {
  echo "inflight run qps p50_us p99_us rows_per_launch"
  for n in ${INFLIGHT:-1 2 4 8}; do
    serve /tmp/srv "$bin/accel-server" --grpc_address=127.0.0.1:0 \
      --metrics_address=127.0.0.1:0 --max_inflight_batches=$n ${SWEEP_FLAGS:-}
    pid=$served_pid target=$grpc
    for run in "unary 256 4" "stream 64 4"; do
      set -- $run
      flags="--target=$target --metrics=$metrics --op=rms_norm --rows=1 --width=4096 --dtype=bf16"
      flags="$flags --concurrency=$2 --channels=$3 --duration_s=3 --warmup_s=1"
      [ "$1" = stream ] && flags="$flags --stream"
      "$bin/load_gen" $flags --json="/tmp/sweep.json" > /dev/null
      python3 -c "import json;d=json.load(open('/tmp/sweep.json'));print('$n', '$1-c$2', round(d['qps']), round(d['p50_us']), round(d['p99_us']), d.get('rows_per_launch'))"
    done
    kill -TERM $pid; wait $pid
  done | tee "$out/inflight_sweep${SWEEP_FLAGS:+_${SWEEP_FLAGS//[^a-zA-Z0-9]/_}}.txt"
}

# Stream vs unary against the connection count (c=64 one-row RmsNorm; one
# stream per connection): whether each stream's serial read loop, not the
# host, bounds the stream. Echo alongside, same connections.
channel_sweep() {
  serve /tmp/chsrv "$bin/accel-server" --grpc_address=127.0.0.1:0 --metrics_address=127.0.0.1:0 \
    ${SWEEP_FLAGS:-}
  local srv_pid=$served_pid srv="--target=$grpc --metrics=$metrics"
  serve /tmp/checho "$bin/load_gen" --serve_echo
  local echo_pid=$served_pid echo_srv="--echo --echo_target=$grpc"
  echo "channels mode side qps p50_us p99_us rows_per_launch"
  for ch in ${CHANNELS:-4 8 16 64}; do
    for mode in unary stream; do
      for side in srv echo_srv; do
        flags="${!side} --op=rms_norm --rows=1 --width=4096 --dtype=bf16 --concurrency=64"
        flags="$flags --channels=$ch --duration_s=3 --warmup_s=1"
        [ $mode = stream ] && flags="$flags --stream"
        "$bin/load_gen" $flags --json=/tmp/ch.json > /dev/null
        python3 -c "import json;d=json.load(open('/tmp/ch.json'));print('$ch', '$mode', '${side%_srv}', round(d['qps']), round(d['p50_us']), round(d['p99_us']), d.get('rows_per_launch'))"
      done
    done
  done | tee "$out/channel_sweep${SWEEP_FLAGS:+_${SWEEP_FLAGS//[^a-zA-Z0-9]/_}}.txt"
  kill -TERM $srv_pid $echo_pid; wait $srv_pid $echo_pid
}

# Batching where the GPU does real work per row: one-row W8A16 Linear
# (bf16 [1, 4096] x int8 [11008, 4096], 18.5 us of kernel alone) or Ffn
# (LINEAR_OP=ffn: three such projections), batching on against
# --batching=false and the echo of the same payloads.
linear_batching() {
  serve /tmp/lon "$bin/accel-server" --grpc_address=127.0.0.1:0 --metrics_address=127.0.0.1:0 \
    ${SWEEP_FLAGS:-}
  local on_pid=$served_pid on="--target=$grpc --metrics=$metrics"
  serve /tmp/loff "$bin/accel-server" --grpc_address=127.0.0.1:0 --metrics_address=127.0.0.1:0 \
    --batching=false
  local off_pid=$served_pid off="--target=$grpc --metrics=$metrics"
  serve /tmp/lecho "$bin/load_gen" --serve_echo
  local echo_pid=$served_pid echo_srv="--echo --echo_target=$grpc"
  echo "run qps p50_us p99_us rows_per_launch"
  for run in "unary 1 1" "unary 64 4" "unary 256 4" "stream 64 4"; do
    set -- $run
    for side in on off echo_srv; do
      flags="${!side} --op=${LINEAR_OP:-linear} --rows=1 --width=4096"
      flags="$flags --out_features=${LINEAR_N:-11008}"
      flags="$flags --dtype=bf16 --concurrency=$2 --channels=$3 --duration_s=3 --warmup_s=1"
      [ "$1" = stream ] && flags="$flags --stream"
      "$bin/load_gen" $flags --json=/tmp/lin.json > /dev/null
      python3 -c "import json;d=json.load(open('/tmp/lin.json'));print('$1-c$2-${side%_srv}', round(d['qps']), round(d['p50_us']), round(d['p99_us']), d.get('rows_per_launch'))"
    done
  done | tee "$out/${LINEAR_OP:-linear}_batching${SWEEP_FLAGS:+_${SWEEP_FLAGS//[^a-zA-Z0-9]/_}}.txt"
  kill -TERM $on_pid $off_pid $echo_pid; wait $on_pid $off_pid $echo_pid
}

case "${1:-tests}" in
  tests)
    status=0
    for t in cuda_allocator_test cuda_ops_test cuda_linear_test kernels_test \
             ops_integration_test errors_integration_test malformed_requests_test \
             observability_test batching_test server_process_test server_options_test; do
      [ -x "$bin/$t" ] || { echo "missing $bin/$t"; status=1; continue; }
      start=$(date +%s)
      "$bin/$t" --gtest_brief=1 > "$out/$t.log" 2>&1
      rc=$?
      summary=$(grep -E '^\[  (PASSED|FAILED)  \]|tests? ran' "$out/$t.log" | tr '\n' ' ')
      echo "$t rc=$rc $(( $(date +%s) - start ))s $summary"
      [ $rc -eq 0 ] || { status=1; grep -E 'Failure|FAILED|error' "$out/$t.log" | head -30; }
    done
    exit $status
    ;;
  bench)
    mkdir -p /tmp/b/bench
    ln -sf "$PWD/$bin/cuda_ops_bench" /tmp/b/bench/cuda_ops_bench
    bench/run_gpu.sh /tmp/b "$out" ${2:-} > "$out/ops_bench.txt" 2>&1
    tail -60 "$out/ops_bench.txt"
    "$bin/cuda_linear_bench" --json "$out/linear.json" > "$out/linear_bench.txt" 2>&1
    tail -30 "$out/linear_bench.txt"
    ;;
  load)
    mkdir -p /tmp/b/server /tmp/b/bench
    ln -sf "$PWD/$bin/accel-server" /tmp/b/server/accel-server
    ln -sf "$PWD/$bin/load_gen" /tmp/b/bench/load_gen
    ACCEL_DEVICE=auto CONCURRENCY="1 64 256" PLOT="$out/load_latency_gpu.png" PYTHON=python3 \
      bench/run_load.sh /tmp/b "$out/load" 3 "${2:-1}" > "$out/load.txt" 2>&1
    grep -E '^\|' "$out/load.txt" | head -12
    inflight_sweep
    ;;
  sweep)
    inflight_sweep
    ;;
  channels)
    channel_sweep
    ;;
  linear)
    linear_batching
    ;;
  latency)
    # A server per path, and the echo floor; load_gen flags for each.
    lg_flags() { echo "--target=$grpc --metrics=$metrics"; }
    serve /tmp/inline "$bin/accel-server" --grpc_address=127.0.0.1:0 --metrics_address=127.0.0.1:0
    inline=$(lg_flags)
    serve /tmp/hop "$bin/accel-server" --grpc_address=127.0.0.1:0 --metrics_address=127.0.0.1:0 \
      --inline_request_bytes=0
    hop=$(lg_flags)
    serve /tmp/nobatch "$bin/accel-server" --grpc_address=127.0.0.1:0 \
      --metrics_address=127.0.0.1:0 --batching=false
    nobatch=$(lg_flags)
    # The same binary on this host's CPU: what the GPU round trip adds.
    serve /tmp/cpu "$bin/accel-server" --grpc_address=127.0.0.1:0 --metrics_address=127.0.0.1:0 \
      --device=cpu
    cpu=$(lg_flags)
    serve /tmp/echo "$bin/load_gen" --serve_echo
    echo_flags="--echo --echo_target=$grpc"
    row="--op=rms_norm --rows=1 --width=4096 --dtype=bf16 --concurrency=1 --duration_s=3 --warmup_s=1"
    for round in 1 2; do
      for side in inline hop nobatch cpu echo_flags; do
        echo -n "$side: "
        "$bin/load_gen" ${!side} $row
      done
    done | tee "$out/latency.txt"
    kill $(jobs -p) 2>/dev/null
    wait
    ;;
esac
