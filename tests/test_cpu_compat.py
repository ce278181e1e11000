"""vllm_qdq.cpu_compat: an eager vLLM CPU engine survives its first forward on an AMX CPU.

Without the AMX permission request (before vllm_qdq.cpu_compat), this engine's worker died by
SIGILL (exit -4) on its first forward on an AMX machine (Xeon with amx_tile, 2026-12-02). On a
CPU without AMX the request is a no-op and the engine runs either way.
"""

from __future__ import annotations

import os

import pytest
from vllm_qdq.cpu_compat import request_amx_permission


def test_request_is_made_once_per_process():
    assert isinstance(request_amx_permission(), bool)
    assert request_amx_permission() is False  # once done (here or by the plugin), never again


@pytest.mark.slow
def test_eager_cpu_engine_runs_its_first_forward(tmp_path):
    from vllm_qdq.study.llm_run import drive
    from vllm_qdq.study.tiny import build_tiny_llama

    model = build_tiny_llama(tmp_path / "llama")
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CACHE_ROOT=str(tmp_path / "cache"))
    env.pop("VLLM_QDQ", None)
    runs = {"eager": {"enforce_eager": True, "compilation_config": {}}}
    rc, out, res = drive(model, runs, env, prompts=[[5, 6, 7, 8]], timeout=600)
    assert rc == 0 and "died unexpectedly" not in out, out[-4000:]
    assert len(res["eager"]["logprobs"][0]) == 3 and len(res["eager"]["generated"][0]) == 4
