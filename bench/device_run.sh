#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, with gpu-bundle/ (made
# by tools/gpu-bundle.sh from a -DCMAKE_CUDA_ARCHITECTURES=90 build) carried:
#   bench/device_run.sh tests   # every CUDA test + the integration tests on the GPU
#   bench/device_run.sh bench   # kernel benchmarks vs copy, PyTorch eager and compile
# Logs and JSON go to $OUT (the device tool's output folder) or ./device_out.
set -uo pipefail
export LD_LIBRARY_PATH="$PWD/gpu-bundle/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell}
bin=gpu-bundle/bin
out=${OUT:-device_out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv \
  | tee "$out/gpu.txt"

case "${1:-tests}" in
  tests)
    status=0
    for t in cuda_allocator_test cuda_ops_test cuda_linear_test kernels_test \
             ops_integration_test errors_integration_test malformed_requests_test \
             observability_test; do
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
esac
