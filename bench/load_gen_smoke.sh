#!/usr/bin/env bash
# ctest load_gen_smoke: load_gen drives every op it knows (unary and
# stream) against a real accel-server on the CPU, and its own echo, for a
# fraction of a second each; every call must succeed (no error codes, ok >
# 0 in its JSON). Guards the benchmark tool itself, not a speed.
# Usage: bench/load_gen_smoke.sh BUILD_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/serve_lib.sh
build=$1
work=$(mktemp -d)
serve "$work/server" "$build/server/accel-server" --grpc_address=127.0.0.1:0 \
  --metrics_address=127.0.0.1:0 --device=cpu
trap 'kill -TERM $served_pid 2>/dev/null; wait $served_pid 2>/dev/null; rm -rf "$work"' EXIT
check() {  # check LABEL LOAD_GEN_FLAGS...: one short run, then its JSON
  local label=$1
  shift
  "$build/bench/load_gen" "$@" --concurrency=4 --channels=2 --duration_s=0.3 --warmup_s=0.1 \
    --json="$work/run.json" > "$work/run.out"
  /usr/bin/python3 - "$label" "$work/run.json" <<'PY'
import json, sys
label, path = sys.argv[1], sys.argv[2]
d = json.load(open(path))
assert d["ok"] > 0 and not d["errors"], f"{label}: ok={d['ok']} errors={d['errors']}"
print(f"{label}: ok {d['ok']}, rows/launch {d.get('rows_per_launch')}")
PY
}
target="--target=$grpc --metrics=$metrics"
for op in rms_norm swiglu linear ffn; do
  for mode in "" --stream; do
    check "$op${mode:+ stream}" $target --op=$op --rows=2 --width=256 --out_features=384 $mode
  done
done
check "echo" --echo --op=rms_norm --rows=2 --width=256
check "echo stream" --echo --op=rms_norm --rows=2 --width=256 --stream
