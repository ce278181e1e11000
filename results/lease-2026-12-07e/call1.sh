#!/usr/bin/env bash
# Lease 2026-12-07e, call 1 (bare host): issue 17's repeated timing runs, then issue 16's eager figures.
# Run from the repository root: bash results/lease-2026-12-07e/call1.sh  (writes under $OUT/call1)
export PYTHONPATH=overlay OMP_NUM_THREADS=2
D=$OUT/call1
mkdir -p "$D"
nvidia-smi -L > "$D/gpu.txt"
git log -1 --format=%H > "$D/tree.txt" 2>/dev/null || true
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout -s INT "$limit" "$@" > "$D/$name.log" 2>&1; echo "$name rc $? $((SECONDS - t0)) s" >> "$D/rc.txt"; }
for i in 1 2 3; do  # issue 17: the time tables alone, D=128 and 64, 1k / 4k / 16k, 5 rounds
  step "sage3-time-$i" 100 python3 scripts/bench_sage3.py --no-check --switches '' --rounds 5 --time-only
done
# accuracy at 4k and the breakdown (one run)
step sage3-full 100 python3 scripts/bench_sage3.py --no-check --switches '' --rounds 3 --seqs 4096 --dims 128
# issue 16: the kept scratch buffer's GPU tests, then where an eager call's time goes
step qdq-tests 80 python3 -m pytest -m gpu -q -rfEs -p no:cacheprovider -n 8 tests/gpu/test_triton_recipes_gpu.py \
  -k "scratch or replay"
step eager-split 90 python3 scripts/bench_qdq_triton.py --eager-split
cat "$D/rc.txt"
