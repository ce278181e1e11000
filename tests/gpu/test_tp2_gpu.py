"""Issue 20: tensor parallelism on two GPUs, QDQ in every worker (``gpu-smoke.sh tp2``).

Run on a host with two GPUs: ``pytest -m gpu tests/gpu/test_tp2_gpu.py -q -s``; skipped, with the
reason, on fewer. vLLM's defaults (torch.compile + CUDA graphs), bf16, greedy. Per model (the tiny
gpt-oss MXFP4 model through the plugin's Marlin MoE route, VLLM_QDQ=1; a tiny Llama through the
``qdq`` method), TP=1 and TP=2 with QDQ on and TP=2 with QDQ off:

* TP=2 vs TP=1, QDQ on: prompt logprobs within :data:`TP_TOL` mean nats. Not bit for bit: the
  row-parallel partial GEMMs are summed by an all-reduce (another bf16 summation order), and the
  weight shards differ from the unsharded QDQ where :mod:`vllm_qdq.method.tp` says so (none for
  MXFP4 with K/tp a multiple of 32, the case here: the tiny models' K are multiples of 64).
* trace lines (``VLLM_QDQ_TRACE=1``) from two distinct worker pids at TP=2;
* QDQ on vs off at TP=2 differ (mean nats > the TP=1/TP=2 difference).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

PROMPTS = [[5, 10, 20, 30, 40, 50, 60, 70], [3, 100, 200, 150, 7, 9, 11, 250, 12]]
#: TP=2 vs TP=1 mean |logprob| difference allowed (bf16 all-reduce order; same order as the
#: compiled-vs-eager tolerance of test_qdq_method_gpu.py). Not yet measured on two H200s.
TP_TOL = 0.1


def _gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def _mean(a, b):
    d = [abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]
    return sum(d) / len(d)


@pytest.mark.skipif(_gpus() < 2, reason=f"TP=2 needs two GPUs; this host has {_gpus()}")
@pytest.mark.parametrize("kind", ["gptoss", "llama"])
def test_tp2_matches_tp1_and_traces_both_workers(kind, tmp_path):
    from vllm_qdq.study.llm_run import drive
    from vllm_qdq.study.tiny import build_once, build_tiny_gptoss_mxfp4, build_tiny_llama

    root = Path(os.environ["SMOKE_MODELS"]) if os.environ.get("SMOKE_MODELS") else tmp_path
    model = build_once(root / f"tp2-{kind}", build_tiny_gptoss_mxfp4 if kind == "gptoss" else build_tiny_llama)
    base = dict(os.environ, VLLM_CACHE_ROOT=str(tmp_path / "cache"), VLLM_WORKER_MULTIPROC_METHOD="spawn",
                VLLM_QDQ_TRACE="1")
    on = dict(base, VLLM_QDQ="1") if kind == "gptoss" else dict(base)
    off = dict(base, VLLM_QDQ="0")
    extra = {} if kind == "gptoss" else {"quantization": "qdq"}
    res, logs = {}, {}
    for name, env, llm in (("tp1", on, {"dtype": "bfloat16", **extra}),
                           ("tp2", on, {"dtype": "bfloat16", "tensor_parallel_size": 2, **extra}),
                           ("tp2_off", off, {"dtype": "bfloat16", "tensor_parallel_size": 2})):
        rc, out, r = drive(model, {name: llm}, env, prompts=PROMPTS)
        assert rc == 0, f"{name} driver failed:\n" + out[-6000:]
        res[name], logs[name] = r[name], out
    tp1, tp2, off_lp = (res[k]["logprobs"] for k in ("tp1", "tp2", "tp2_off"))
    d_tp, d_off = _mean(tp1, tp2), _mean(tp2, off_lp)
    same_tokens = res["tp1"]["generated"] == res["tp2"]["generated"]
    print(f"{kind}: mean|tp2-tp1|={d_tp:.4f} mean|qdq on-off @tp2|={d_off:.4f} same greedy tokens: {same_tokens}")
    assert d_tp <= TP_TOL
    assert d_off > d_tp
    lines = [ln for ln in logs["tp2"].splitlines() if "[vllm_qdq trace]" in ln]
    pids = {int(re.search(r"\] pid=(\d+)", ln).group(1)) for ln in lines if re.search(r"\] pid=(\d+)", ln)}
    assert len(pids) >= 2, f"trace lines from {len(pids)} worker process(es) at TP=2:\n" + "\n".join(lines[:20])
    ranks = {int(m.group(1)) for ln in lines if (m := re.search(r"\] pid=\d+ rank=(\d+)", ln))}
    assert ranks == {0, 1}, f"trace lines name ranks {sorted(ranks)} at TP=2, want [0, 1]:\n" + "\n".join(lines[:20])
