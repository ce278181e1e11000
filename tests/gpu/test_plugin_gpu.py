"""GPU end-to-end: activation QDQ inside vLLM 0.30.0's Marlin kernels (H100, ``pytest -m gpu``).

Models are built on the spot (scripts/tiny_models.py):

* a tiny random gpt-oss with MXFP4 experts in the gpt-oss checkpoint layout, run with
  ``moe_backend="marlin"`` -> ``moe_wna16_marlin_gemm`` (gate-up and down);
* a tiny random Llama quantized online to FP8 with ``linear_backend="marlin"`` ->
  ``marlin_gemm`` (FP8 weight-only Marlin) for every dense layer.

Each configuration runs in its own process (scripts/plugin_llm_run.py). Checked, per model:
QDQ on changes the prompt logprobs vs off; the trace lines come from the engine process (not
the driver); and with vLLM's defaults (torch.compile + CUDA graphs) QDQ changes the results as
under ``enforce_eager`` (compiled-on matches eager-on as closely as compiled-off matches
eager-off, and is far from compiled-off). Off and on share one ``VLLM_CACHE_ROOT``, so a compile
artifact cached without QDQ being reused with it would show up as "on == off".
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

pytestmark = pytest.mark.gpu

TRACE = "[vllm_qdq trace]"


def run(model: Path, llm: dict, *, qdq: bool, cache: Path, extra_env: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update(VLLM_QDQ="1" if qdq else "0", VLLM_QDQ_TRACE="1", VLLM_CACHE_ROOT=str(cache),
               QDQ_TEST_GPU_UTIL=os.environ.get("QDQ_TEST_GPU_UTIL", "0.15"))
    env.update(extra_env or {})
    spec = json.dumps({"model": str(model), "llm": llm})
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "plugin_llm_run.py"), spec],
                       env=env, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    res = json.loads(re.search(r"^RESULT (.*)$", out, re.M).group(1))
    res["driver"] = int(re.search(r"DRIVER_PID (\d+)", out).group(1))
    # engine-process lines carry vLLM's "(EngineCore pid=...)" prefix: keep from the marker on
    res["trace"] = [ln[ln.index(TRACE):] for ln in out.splitlines() if TRACE in ln]
    res["log"] = out
    return res


def diff(a: dict, b: dict) -> float:
    """Largest absolute difference between two runs' prompt logprobs."""
    return max(abs(x - y) for ra, rb in zip(a["logprobs"], b["logprobs"], strict=True)
               for x, y in zip(ra, rb, strict=True))


def check(model: Path, llm: dict, tmp: Path, op: str, weight: str, fmt: str) -> dict:
    cache = tmp / "cache"
    # three engines side by side on the GPU (a small memory share each), then the compiled QDQ
    # run alone, after the compiled QDQ-off run has filled the shared compile cache
    with ThreadPoolExecutor(3) as pool:
        jobs = [pool.submit(run, model, {**llm, "enforce_eager": True}, qdq=False, cache=cache),
                pool.submit(run, model, {**llm, "enforce_eager": True}, qdq=True, cache=cache),
                pool.submit(run, model, llm, qdq=False, cache=cache)]
        off_e, on_e, off_c = (j.result() for j in jobs)
    on_c = run(model, llm, qdq=True, cache=cache)
    figures = {
        "eager: |on-off|": diff(on_e, off_e),
        "compiled: |on-off|": diff(on_c, off_c),
        "on: |compiled-eager|": diff(on_c, on_e),
        "off: |compiled-eager|": diff(off_c, off_e),
    }
    print(f"\n{op}: " + ", ".join(f"{k} = {v:.4g}" for k, v in figures.items()))
    # trace: wrapped calls, in the engine process, with the expected routing
    want = f"{op} "
    lines = [ln for ln in on_e["trace"] if want in ln and f"weight={weight}" in ln and f"fmt={fmt}" in ln]
    assert lines, "no trace line for " + want + "\n" + "\n".join(on_e["trace"][:20])
    pids = {int(re.search(r"pid=(\d+)", ln).group(1)) for ln in lines}
    assert pids - {on_e["driver"]}, "trace lines only from the driver process"
    assert not off_e["trace"], "QDQ off must not wrap anything"
    # QDQ changes results, eagerly and compiled
    assert figures["eager: |on-off|"] > 1e-3
    assert figures["compiled: |on-off|"] > 1e-3
    # compiled + CUDA graphs: QDQ acts there as strongly as eagerly, far above the compile-vs-eager
    # noise of QDQ off (so no artifact compiled without QDQ was reused, and graph replays QDQ).
    # compiled-on is not compared with eager-on element for element: 4-bit activation QDQ turns
    # the bf16 reordering noise of torch.compile (off: |compiled-eager|) into whole grid steps.
    noise = max(figures["off: |compiled-eager|"], 1e-3)
    assert figures["compiled: |on-off|"] > 5 * noise, figures
    assert 0.25 < figures["compiled: |on-off|"] / figures["eager: |on-off|"] < 4.0, figures
    return figures


def test_gptoss_mxfp4_marlin_moe(tmp_path):
    from tiny_models import build_tiny_gptoss_mxfp4

    model = build_tiny_gptoss_mxfp4(tmp_path / "gptoss", hidden=256, experts=4, layers=2)
    check(model, {"moe_backend": "marlin"}, tmp_path, "moe_wna16_marlin_gemm",
          "float4_e2m1f/mxfp4", "mxfp4/floor")


def test_dense_fp8_marlin_gemm(tmp_path):
    from tiny_models import build_tiny_llama

    model = build_tiny_llama(tmp_path / "llama", hidden=256, intermediate=512, heads=4, kv_heads=2, head_dim=64)
    check(model, {"quantization": "fp8", "linear_backend": "marlin"}, tmp_path, "marlin_gemm",
          "float8_e4m3fn", "mxfp8_e4m3/floor")
