#!/usr/bin/env bash
# Lease 2026-12-07g, call 2: the two Triton GPU test files in full (Issue 16's bit-exactness check),
# after this call's stage part's receive.sh. ~270 s with a cold Triton cache (07e: 1122 passed).
export PYTHONPATH=overlay OMP_NUM_THREADS=2
D=$OUT/call2
mkdir -p "$D"
t0=$SECONDS
timeout -s INT 540 python3 -m pytest -m gpu -q -rfEs -p no:cacheprovider -n 8 --durations=15 \
  tests/gpu/test_triton_recipes_gpu.py tests/gpu/test_triton_qdq_gpu.py > "$D/triton-tests.log" 2>&1
echo "triton-tests rc $? $((SECONDS - t0)) s" | tee "$D/rc.txt"
tail -n 5 "$D/triton-tests.log"
