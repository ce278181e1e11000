#!/usr/bin/env bash
# Lease 2026-12-07f, call 1 (bare host): 07e's untested GPU tests (the kept buffer's re-keying, the
# interleaved-streams test, the barrier test's assert), then the held-tile probe (issue 16, 16M two-pass).
export PYTHONPATH=overlay OMP_NUM_THREADS=2
D=$OUT/call1
mkdir -p "$D"
nvidia-smi -L > "$D/gpu.txt"
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout -s INT "$limit" "$@" > "$D/$name.log" 2>&1; echo "$name rc $? $((SECONDS - t0)) s" >> "$D/rc.txt"; }
step probe-hold 200 python3 scripts/probe_hold.py --rows 2048,4096,8192 --configs \
  "1:8:4096:0,1:8:4096:0:3,1:8:4096:8,2:8:4096:4,2:8:4096:4:2,2:8:8192:4,1:16:8192:8,1:16:8192:8:3,1:32:16384:4,1:16:16384:4,1:16:16384:6,1:16:16384:7,2:8:4096:8"
step scratch-tests 150 python3 -m pytest -m gpu -q -rfEs -p no:cacheprovider -n 4 tests/gpu/test_triton_recipes_gpu.py -k scratch
step grid-sync-tests 150 python3 -m pytest -m gpu -q -rfEs -p no:cacheprovider tests/gpu/test_triton_qdq_gpu.py -k grid_sync
step eager-split 60 python3 scripts/bench_qdq_triton.py --eager-split
step alloc-probe 30 python3 results/lease-2026-12-07f/alloc_probe.py
cat "$D/rc.txt"
