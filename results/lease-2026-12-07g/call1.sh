#!/usr/bin/env bash
# Lease 2026-12-07g, call 1 (07f's call 2, which never ran, plus the new barrier log line's test on
# the GPU): the eager split; the bench's main table with GRID_SYNC off (the default) and "eager";
# the fast path's and the barrier's GPU tests. Run after the first stage part's receive.sh.
export PYTHONPATH=overlay OMP_NUM_THREADS=2
D=$OUT/call1
mkdir -p "$D"
nvidia-smi -L > "$D/gpu.txt"; git log -1 --format=%H >> "$D/gpu.txt" 2>/dev/null
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout -s INT "$limit" "$@" > "$D/$name.log" 2>&1; echo "$name rc $? $((SECONDS - t0)) s" >> "$D/rc.txt"; }
step eager-split 60 python3 scripts/bench_qdq_triton.py --eager-split
step check-off 100 python3 scripts/bench_qdq_triton.py --check --no-sweeps --no-options
step check-sync-eager 100 python3 -c "import runpy, sys; import vllm_qdq.numerics.triton_qdq as t; t.GRID_SYNC = 'eager'; sys.argv = ['bench_qdq_triton.py', '--check', '--no-sweeps', '--no-options']; runpy.run_path('scripts/bench_qdq_triton.py', run_name='__main__')"
step fast-tests 150 python3 -m pytest -m gpu -q -rfEs -p no:cacheprovider -n 8 tests/gpu/test_triton_recipes_gpu.py tests/gpu/test_triton_qdq_gpu.py -k "replay or scratch or grid_sync or two_pass_paths"
cat "$D/rc.txt"
