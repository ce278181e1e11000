"""A real CPU ``LLM()`` engine with ``VLLM_QDQ=1``: the plugin registers in every process.

CPU models do not reach the Marlin/Machete wrappers; this shows loading (and the compile-cache
factors) in the engine-core process, which is a different process from the one calling LLM().
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import os
    from vllm_qdq.study.tiny import build_tiny_llama

    if __name__ == "__main__":
        path = build_tiny_llama({model!r})
        print("DRIVER_PID", os.getpid(), flush=True)
        from vllm import LLM, SamplingParams
        import vllm.envs as envs
        llm = LLM(model=str(path), max_model_len=128, enforce_eager=True, dtype="bfloat16", seed=0)
        out = llm.generate(["hello world"], SamplingParams(max_tokens=3, temperature=0.0))
        print("GENERATED", len(out[0].outputs[0].token_ids), flush=True)
        print("FACTOR", "VLLM_QDQ_DIGEST" in envs.environment_variables, flush=True)
    """
)


@pytest.mark.slow
def test_engine_processes_register_plugin(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(model=str(tmp_path / "llama")))
    env = dict(os.environ)
    env.update(
        VLLM_QDQ="1",
        VLLM_QDQ_TRACE="1",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_PLUGINS="qdq",
        PYTHONPATH=os.pathsep.join([str(REPO / "overlay"), env.get("PYTHONPATH", "")]),
        VLLM_CACHE_ROOT=str(tmp_path / "cache"),
    )
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    driver = int(re.search(r"DRIVER_PID (\d+)", out).group(1))
    pids = {int(p) for p in re.findall(r"activation QDQ enabled in pid (\d+)", out)}
    assert driver in pids, out[-4000:]
    assert pids - {driver}, f"no registration line from the engine-core process:\n{out[-4000:]}"
    assert "GENERATED 3" in out and "FACTOR True" in out
