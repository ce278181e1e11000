#!/usr/bin/env bash
# GPU smoke suite: one command on a host with a CUDA GPU and vLLM 0.30.0 (or inside the image).
#
#   bash scripts/gpu-smoke.sh                 # every step
#   bash scripts/gpu-smoke.sh tests bench-qdq # chosen steps
#
# Steps: tests (pytest -m gpu, one line per test file), bench-qdq (Triton QDQ vs device copy),
# serve (vllm serve, QDQ on/off, OpenAI API round trip: tiny MXFP4 gpt-oss with Marlin MoE and
# a dense FP8-Marlin Llama), bench-sage3 (sage3 vs SDPA), bench-plugin (vLLM throughput, QDQ off vs on).
# Logs go to $SMOKE_OUT (default ./gpu-smoke-out); prints a summary table; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${SMOKE_OUT:-gpu-smoke-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests serve bench-qdq bench-sage3 bench-plugin)
declare -a rows
fail=0

run() {  # run NAME CMD...: time it, log it, record pass/fail
  local name=$1; shift
  local t0=$(date +%s.%N)
  echo "=== $name: $*"
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(printf '%.1f' "$(echo "$(date +%s.%N) - $t0" | bc)")
  tail -n 40 "$OUT/$name.log"
  if [ $rc -eq 0 ]; then rows+=("$name|PASS|$dt"); else rows+=("$name|FAIL (rc=$rc)|$dt"); fail=1; fi
}

"$PY" -c "import torch, vllm; print('torch', torch.__version__, 'vllm', vllm.__version__, 'gpu', torch.cuda.get_device_name())"
for step in "${steps[@]}"; do
  case $step in
    tests)
      for f in tests/gpu/test_*.py; do
        run "pytest-$(basename "$f" .py)" "$PY" -m pytest -m gpu -q -p no:cacheprovider "$f"
      done ;;
    serve) run serve "$PY" scripts/gpu_serve_check.py --out "$OUT/serve" ;;
    bench-qdq) run bench-qdq "$PY" scripts/bench_qdq_triton.py ;;
    bench-sage3) run bench-sage3 "$PY" scripts/bench_sage3.py ;;
    bench-plugin) run bench-plugin "$PY" scripts/bench_plugin_throughput.py ;;
    *) echo "unknown step $step; accepted: tests serve bench-qdq bench-sage3 bench-plugin"; exit 2 ;;
  esac
done
echo
printf '%-40s %-14s %8s\n' check result wall_s
for r in "${rows[@]}"; do IFS='|' read -r a b c <<<"$r"; printf '%-40s %-14s %8s\n' "$a" "$b" "$c"; done
exit $fail
