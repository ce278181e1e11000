#!/usr/bin/env bash
# GPU calls for the kernels (issues 16, 17, 18) on a bare GPU host (torch, Triton, pytest with
# xdist; no vLLM needed): the Triton kernel tests, and the kernel benches of this tree and of a
# baseline overlay interleaved (new, base, new, base: the host's speed drifts between runs).
#
#   git archive <baseline commit> overlay | tar -x -C .gpu-stage-baseline   # here, once; carry it
#   bash scripts/gpu-kernels-ab.sh STEP... [--base DIR]   # on the GPU host, one call per few steps
#
# Steps (measured budgets on the H200, 2026-12-03): tests (~200 s: test_triton_qdq_gpu,
# test_triton_recipes_gpu, test_sage3_gpu), qdq (4 x bench_qdq_triton.py, ~45-60 s each: the first,
# new, with --check, the options table (both rotation layouts) and the amax-slot sweep; the others
# --no-options), sage3 (4 x bench_sage3.py --no-check --dims 128 --seqs 4096,16384). tests + qdq
# fit one 10-minute call; sage3 another. --base defaults to .gpu-stage-baseline/overlay.
# Logs go to $OUT (default results/gpu-kernels-ab): kernels.log, qdq-<i>-<who>.log,
# sage3-<i>-<who>.log, each ending "rc=N". Exits 2 naming a bad step, a missing baseline or no GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu-kernels-ab}
BASE=.gpu-stage-baseline/overlay
STEPS=()
while [ $# -gt 0 ]; do
  case $1 in
    --base) BASE=${2:?--base needs a directory}; shift 2 ;;
    tests|qdq|sage3) STEPS+=("$1"); shift ;;
    *) echo "gpu-kernels-ab: unknown step or option '$1'; accepted: tests, qdq, sage3, --base DIR" >&2; exit 2 ;;
  esac
done
[ ${#STEPS[@]} -gt 0 ] || { echo "gpu-kernels-ab: no step given; accepted: tests, qdq, sage3" >&2; exit 2; }
mkdir -p "$OUT"
T0=$(date +%s)
el() { echo "[+$(( $(date +%s) - T0 )) s] $*"; }
NEW="$PWD/overlay:$PWD"
OLD="$PWD/$BASE:$PWD"
nvidia-smi -L || { echo "gpu-kernels-ab: no GPU (nvidia-smi failed)" >&2; exit 2; }
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

ab() {  # ab NAME: 4 interleaved runs of a bench, new / base
  local i=0 who P
  for who in new base new base; do
    i=$((i + 1))
    if [ "$who" = new ]; then P=$NEW; else P=$OLD; fi
    el "$1 bench $i ($who)"
    if [ "$1" = qdq ]; then
      local opts=--no-options
      [ $i = 1 ] && opts=--check
      PYTHONPATH=$P timeout 100 python3 scripts/bench_qdq_triton.py $opts > "$OUT/qdq-$i-$who.log" 2>&1
      echo "rc=$?" >> "$OUT/qdq-$i-$who.log"
    else
      PYTHONPATH=$P timeout 120 python3 scripts/bench_sage3.py --no-check --dims 128 --seqs 4096,16384 \
        > "$OUT/sage3-$i-$who.log" 2>&1
      echo "rc=$?" >> "$OUT/sage3-$i-$who.log"
    fi
  done
}

for s in "${STEPS[@]}"; do
  case $s in
    tests)
      el "kernel tests"
      PYTHONPATH=$NEW timeout 240 python3 -m pytest -q -m gpu -n 12 -p no:cacheprovider \
        tests/gpu/test_triton_qdq_gpu.py tests/gpu/test_triton_recipes_gpu.py tests/gpu/test_sage3_gpu.py \
        > "$OUT/kernels.log" 2>&1
      echo "rc=$?" >> "$OUT/kernels.log"
      tail -3 "$OUT/kernels.log" ;;
    qdq|sage3)
      if [ ! -d "$BASE/vllm_qdq" ]; then
        echo "gpu-kernels-ab: no baseline overlay at $BASE (expected $BASE/vllm_qdq); see the header" >&2
        exit 2
      fi
      ab "$s" ;;
  esac
done
el done
