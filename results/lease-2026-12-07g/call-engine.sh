#!/usr/bin/env bash
# Lease 2026-12-07g, the engine call (after the last stage part's receive.sh installed vLLM into
# /opt/gpu-site): the overlay installed there, then VLLM_QDQ_GRID_SYNC=eager against off in real
# vLLM engines (the qdq method, NVFP4 weights and activations, enforce_eager and compiled + CUDA
# graphs: tests/gpu/test_qdq_method_gpu.py::test_qdq_method_grid_sync_llama), then the method's
# existing Llama test (the default recipe, for what else the log line might have moved).
. /opt/gpu-site/env.sh
export OMP_NUM_THREADS=4
D=$OUT/engine
mkdir -p "$D"
python3 -m pip install -q --no-deps --no-build-isolation --upgrade --target /opt/gpu-site/deps ./overlay > "$D/pip.log" 2>&1
echo "overlay rc $?" | tee "$D/rc.txt"
t0=$SECONDS
timeout -s INT 400 python3 -m pytest -m gpu -q -s -rfE -p no:cacheprovider tests/gpu/test_qdq_method_gpu.py \
  -k "grid_sync" > "$D/grid-sync-engine.log" 2>&1
echo "grid-sync-engine rc $? $((SECONDS - t0)) s" | tee -a "$D/rc.txt"
grep -E "differ|mean\||passed|failed|grid barrier" "$D/grid-sync-engine.log" | cut -c1-300 | tail -n 20
# (added after the first run) the odd engines as another schedule: engines given only the first
# prompts, against the odd engines' logprobs in the committed logs (engine_prefix.py)
t0=$SECONDS
timeout -s INT 170 python3 results/lease-2026-12-07g/engine_prefix.py /root/ep > "$D/engine-prefix.log" 2>&1
echo "engine-prefix rc $? $((SECONDS - t0)) s" | tee -a "$D/rc.txt"
grep -E " vs | rc " "$D/engine-prefix.log"
