"""Whether the odd engines of 07g were another schedule: engines given only the first prompts
(eager: prompts 0-1; compiled + CUDA graphs: prompts 0-2), engine cores in-process, GRID_SYNC off,
against the logprobs the odd engines of calls 6 and 9 returned for those prompts (read from the
committed logs). Equal to the bit: the odd engines had scheduled those prompts in a first step of
their own. Run on the GPU host from the repository root:

    python3 results/lease-2026-12-07g/engine_prefix.py /root/ep
"""
import json
import os
import re
import sys
from pathlib import Path

from concurrent.futures import ThreadPoolExecutor

from vllm_qdq.study.llm_run import drive
from vllm_qdq.study.tiny import build_once, build_tiny_llama

HERE = Path(__file__).resolve().parent
tmp = Path(sys.argv[1])


def results(log: Path) -> dict:
    out = {}
    for line in log.read_text().splitlines():
        m = re.search(r"RESULT (\S+) (\{.*\})\s*$", line)
        if m:
            out[m.group(1)] = json.loads(m.group(2))["logprobs"]
    return out


seen = results(HERE / "engine" / "grid-sync-engine.log")
seen.update({f"c4_{k}": v for k, v in results(HERE / "c4" / "engine-pairs.log").items()})
model = build_once(tmp / "wide", build_tiny_llama, hidden=1024, intermediate=2048, heads=8, kv_heads=2,
                   head_dim=128)
qc = {"quant_method": "qdq", "weight": "nvfp4", "act": "nvfp4"}
base = {"quantization": "qdq", "dtype": "bfloat16", "max_num_seqs": 32,
        "hf_overrides": {"quantization_config": qc}}
compiled = {"compilation_config": {"cudagraph_capture_sizes": [1, 2, 4, 8, 16, 32],
                                   "inductor_compile_config": {"deterministic": True,
                                                               "benchmark_combo_kernel": False}}}
prompts = [[(7 * i + 13 * j) % 300 + 3 for j in range(9 + i % 5)] for i in range(12)]
jobs = {"eager_first2": ({**base, "enforce_eager": True}, 2), "graph_first3": ({**base, **compiled}, 3)}


def run(name: str) -> tuple[int, str, dict]:
    llm, n = jobs[name]
    env = dict(os.environ, VLLM_CACHE_ROOT=str(tmp / f"cache-{name}"), VLLM_ENABLE_V1_MULTIPROCESSING="0",
               VLLM_QDQ_GRID_SYNC="off", QDQ_TEST_GPU_UTIL="0.1")
    return drive(model, {name: llm}, env, prompts=prompts[:n], tag=name)


with ThreadPoolExecutor(len(jobs)) as pool:
    got = dict(zip(jobs, pool.map(run, jobs)))
for name, (rc, out, res) in got.items():
    print(name, "rc", rc)
    if rc != 0 or name not in res:
        print(out[-3000:])
        continue
    mine = res[name]["logprobs"]
    graph = name.startswith("graph")
    for other, lps in sorted(seen.items()):
        if other.startswith("graph") == graph:
            per = [sum(a != b for a, b in zip(ra, rb)) for ra, rb in zip(mine, lps)]
            print(f"{name} vs {other}: differing logprobs a prompt {per} (prompts 0-{len(mine) - 1})")
