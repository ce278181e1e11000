#!/bin/bash
# One GPU lease, 2026-12-04 (sixteenth session): the whole smoke suite for issue 14 again.
#   bash results/h200-2026-12-04d/calls.sh prep        # extras, overlay, FlashInfer build beside bench-qdq, bench-sage3
#   bash results/h200-2026-12-04d/calls.sh checks      # the ten check steps at once
#   bash results/h200-2026-12-04d/calls.sh bench MODEL BUDGET_S [summary]
# Each call runs after `bash .gpu-stage/pN/receive.sh` (vLLM staged into /opt/gpu-site) on the same
# machine; the suite's logs live in /root/smoke between calls and are copied to $OUT after each.
set -u
cd "$(dirname "$0")/../.."
. /opt/gpu-site/env.sh
export SMOKE_OUT=/root/smoke
mkdir -p "$SMOKE_OUT"
T0=$SECONDS
el() { echo "[+$((SECONDS - T0)) s] $*"; }
copy_logs() {  # the logs, results, JSON and study report; not the models or the compile caches
  tar -C "$SMOKE_OUT" -czf "$OUT/smoke-$1.tgz" --exclude=./models --exclude=./vllm-cache .  # one file: a call brings back a limited count
  el "logs copied"
}
case ${1:?prep|checks|bench} in
  prep)
    nvidia-smi -L; git log -1 --format='commit %H' 2>/dev/null || true
    for p in .gpu-stage-extras/p*/; do bash "$p/install.sh" /opt/gpu-site/deps; done > "$OUT/extras.log" 2>&1
    echo "extras rc=$?"; tail -n 3 "$OUT/extras.log"
    python3 -m pip install -q --no-deps --no-build-isolation --upgrade --target /opt/gpu-site/deps ./overlay \
      > "$OUT/pip.log" 2>&1; echo "overlay rc=$?"
    el "FlashInfer build (niced) beside bench-qdq, bench-sage3"
    nice -n 10 python3 scripts/gpu_jit_warm.py > "$SMOKE_OUT/jit-warm-prep.log" 2>&1 & jw=$!
    timeout 330 bash scripts/gpu-smoke.sh bench-qdq bench-sage3
    wait $jw; echo "jit-warm rc=$?"; tail -n 2 "$SMOKE_OUT/jit-warm-prep.log"
    copy_logs "${1}${2:+-$2}" ;;
  checks)
    SMOKE_JOBS=10 timeout "${CHECKS_TIMEOUT:-575}" bash scripts/gpu-smoke.sh kv-cache study plugin-gptoss \
      plugin-dense plugin-exact method-llama method-moe serve tp2 kernels
    echo "checks rc=$?"
    copy_logs "${1}${2:+-$2}" ;;
  bench)
    m=${2:?model}; b=${3:?budget}
    SMOKE_BENCH_BUDGET=$b timeout $((b + 60)) bash scripts/gpu-smoke.sh "bench-plugin-$m"
    echo "bench rc=$?"
    [ "${4:-}" != summary ] || { bash scripts/gpu-smoke.sh summary | tee "$OUT/summary.txt"; echo "summary rc=${PIPESTATUS[0]}"; }
    copy_logs "${1}${2:+-$2}" ;;
esac
el done
