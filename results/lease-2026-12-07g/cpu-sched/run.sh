#!/usr/bin/env bash
# The CPU engine's steps for one generate of 6 prompts (tiny Llama, the qdq method, NVFP4 W+A, bf16,
# eager; statistics on: per layer, calls = engine steps), with vLLM's engine-core process
# (MP=1, runs 1-3 here) or in-process (MP=0, run 4). From the repository root, after `make env`:
#   bash results/lease-2026-12-07g/cpu-sched/run.sh 1 1; ... ; bash results/lease-2026-12-07g/cpu-sched/run.sh 4 0
# Measured (2026-12-07): calls 5, 5, 5 with MP=1; 4 with MP=0 (1 prefill + 3 decode steps); the
# logprobs of run 4 differ from runs 1-3 in every value (8, 9, 10, 11, 8, 9 a prompt).
set -e
i=$1 mp=$2
T=/tmp/sched
export PYTHONPATH=$PWD/overlay:$PWD VLLM_CPU_KVCACHE_SPACE=1 VLLM_CACHE_ROOT=$T/cache
.venv/bin/python -c "from vllm_qdq.study.tiny import build_once, build_tiny_llama; build_once('$T/model', build_tiny_llama)"
rm -rf $T/stats$i
VLLM_QDQ_STATS=$T/stats$i VLLM_ENABLE_V1_MULTIPROCESSING=$mp timeout 300 .venv/bin/python -m vllm_qdq.study.llm_run \
  '{"model": "'$T'/model", "runs": [{"name": "r", "llm": {"quantization": "qdq", "dtype": "bfloat16", "enforce_eager": true, "max_num_seqs": 32, "hf_overrides": {"quantization_config": {"quant_method": "qdq", "weight": "nvfp4", "act": "nvfp4"}}}}], "prompts": [[3,4,5,6,7,8,9,10,11],[12,13,14,15,16,17,18,19,20,21],[5,6,7,8,9,10,11,12,13,14,15],[22,23,24,25,26,27,28,29,30,31,32,33],[40,41,42,43,44,45,46,47,48],[50,51,52,53,54,55,56,57,58,59]]}' > $T/out$i.log 2>&1
python3 -c "import json, sys; print('calls', json.loads(open(sys.argv[1]).readline())['calls'])" $T/stats$i/*.jsonl
