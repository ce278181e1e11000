#!/bin/bash
# One device call: the Triton kernel tests on the new tree, then the kernel bench interleaved
# new / baseline (65406f0's overlay) / new / baseline. Bare host: torch, Triton, pytest there.
cd "$(dirname "$0")/.."
T0=$(date +%s)
el() { echo "[+$(( $(date +%s) - T0 )) s] $*"; }
NEW="$PWD/overlay:$PWD"
BASE="$PWD/.gpu-stage-baseline/overlay:$PWD"
nvidia-smi -L
python3 -c "import torch, triton, numpy; print('torch', torch.__version__, 'triton', triton.__version__)"
el "kernel tests"
PYTHONPATH=$NEW timeout 150 python3 -m pytest -q -m gpu -n 12 -p no:cacheprovider \
  tests/gpu/test_triton_qdq_gpu.py tests/gpu/test_triton_recipes_gpu.py > "$OUT/kernels.log" 2>&1
echo "rc=$?" >> "$OUT/kernels.log"; tail -3 "$OUT/kernels.log"
i=0
for who in new base new base; do
  i=$((i + 1)); el "bench $who ($i)"
  if [ "$who" = new ]; then P=$NEW; else P=$BASE; fi
  opts=--no-options; [ $i = 1 ] && opts=--check
  PYTHONPATH=$P timeout 60 python3 scripts/bench_qdq_triton.py $opts > "$OUT/bench-$i-$who.log" 2>&1
  echo "rc=$?" >> "$OUT/bench-$i-$who.log"
done
el done
