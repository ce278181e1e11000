"""The ``qdq`` method on CUDA (Triton QDQ when present), with torch.compile and CUDA graphs.

Run on the GPU host: ``pytest -m gpu tests/gpu/test_qdq_method_gpu.py -q``. One engine per
subprocess (tests/qdq_method_engine.py), bf16. Checks: generation works, QDQ changes the
logprobs, and they track the CPU-reference QDQ of the transformers model (float32 forward) to
within bf16 noise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

PROMPTS = [[5, 10, 20, 30, 40, 50, 60, 70], [3, 100, 200, 150, 7, 9, 11, 250, 12]]
#: bf16 engine vs float32 reference, nats (bf16 rounding of activations flips QDQ codes).
BF16_TOL = 0.15

pytestmark = pytest.mark.gpu


def _mean(a, b):
    d = [abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]
    return sum(d) / len(d)


@pytest.mark.parametrize("kind", ["llama", "moe"])
def test_qdq_method_cuda(kind, tmp_path):
    from qdq_method_reference import apply_qdq, load_fp32, prompt_logprobs
    from tiny_models import build_tiny_llama, build_tiny_moe

    model = (build_tiny_llama if kind == "llama" else build_tiny_moe)(tmp_path / kind)
    runs = [
        {
            "name": "qdq",
            "model": str(model),
            "quantization": "qdq",
            "dtype": "bfloat16",
            "enforce_eager": False,
        },
        {"name": "plain", "model": str(model), "dtype": "bfloat16", "enforce_eager": False},
    ]
    out = tmp_path / "out.json"
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0",
               QDQ_TEST_GPU_UTIL=os.environ.get("QDQ_TEST_GPU_UTIL", "0.15"))
    p = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "qdq_method_engine.py"),
            str(out),
            json.dumps(runs),
            json.dumps(PROMPTS),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.exists(), p.stderr[-4000:]
    res = json.loads(out.read_text())
    for r in runs:
        assert "error" not in res.get(r["name"], {"error": "missing"}), (res, p.stderr[-4000:])
    got = [r["prompt_logprobs"] for r in res["qdq"]["results"]]
    plain = [r["prompt_logprobs"] for r in res["plain"]["results"]]
    m = load_fp32(str(model))
    apply_qdq(m, weight="mxfp4", act="mxfp4")
    ref = [prompt_logprobs(m, ids) for ids in PROMPTS]
    d_ref, d_plain = _mean(got, ref), _mean(got, plain)
    print(f"{kind}: mean|qdq-ref|={d_ref:.4f} mean|qdq-plain|={d_plain:.4f}")
    assert d_ref <= BF16_TOL
    assert d_plain > d_ref
    assert all(len(r["generated"]) == 4 for r in res["qdq"]["results"])
