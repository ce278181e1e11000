"""Which engine differences are GRID_SYNC's: two eager engines with it off, two with it "eager"
(qdq method, NVFP4 W+A, the wide tiny Llama), pairwise counts of differing prompt logprobs.

    python3 engine_pairs.py TMP [ACT] [inproc]

``inproc``: one engine of each, their engine cores in the driver process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``: every request of the generate in the first step)."""
import itertools
import os
import sys
from pathlib import Path

from vllm_qdq.study.llm_run import drive_many
from vllm_qdq.study.tiny import build_once, build_tiny_llama

tmp = Path(sys.argv[1])
act = sys.argv[2] if len(sys.argv) > 2 else "nvfp4"
model = build_once(tmp / "wide", build_tiny_llama, hidden=1024, intermediate=2048, heads=8, kv_heads=2, head_dim=128)
qc = {"quant_method": "qdq", "weight": "nvfp4", "act": act}
llm = {"quantization": "qdq", "dtype": "bfloat16", "max_num_seqs": 32, "enforce_eager": True,
       "hf_overrides": {"quantization_config": qc}}
prompts = [[(7 * i + 13 * j) % 300 + 3 for j in range(9 + i % 5)] for i in range(12)]
inproc = len(sys.argv) > 3 and sys.argv[3] == "inproc"
engines = (("off_a", "off"), ("sync_a", "eager")) if inproc else (
    ("off_a", "off"), ("off_b", "off"), ("sync_a", "eager"), ("sync_b", "eager"))
jobs = {}
for name, mode in engines:
    env = dict(os.environ, **({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if inproc else {}), VLLM_CACHE_ROOT=str(tmp / f"cache-{name}"), VLLM_WORKER_MULTIPROC_METHOD="spawn",
               VLLM_QDQ_GRID_SYNC=mode, QDQ_TEST_GPU_UTIL="0.1")
    jobs[name] = (model, {name: llm}, env)
got = drive_many(jobs, prompts=prompts)
res = {}
for name, (rc, out, r) in got.items():
    print(name, "rc", rc, "barrier line" if "grid barrier" in out else "no barrier line")
    if rc == 0:
        res[name] = r[name]
for a, b in itertools.combinations(sorted(res), 2):
    la, lb = res[a]["logprobs"], res[b]["logprobs"]
    diffs = [abs(x - y) for ra, rb in zip(la, lb) for x, y in zip(ra, rb) if x != y]
    per = [sum(x != y for x, y in zip(ra, rb)) for ra, rb in zip(la, lb)]
    print(f"{a} vs {b}: {len(diffs)} differ, max {max(diffs, default=0):.4f}, per prompt {per}, "
          f"tokens {'equal' if res[a]['generated'] == res[b]['generated'] else 'differ'}")
