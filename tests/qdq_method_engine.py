"""Run vLLM CPU engines in this process and write prompt logprobs as JSON.

Used by tests/test_qdq_method_engine.py, always in a subprocess of its own:

    python tests/qdq_method_engine.py OUT.json RUNS_JSON PROMPTS_JSON

``RUNS_JSON`` is a list of ``{"name", "model", "quantization", "hf_overrides", "dtype"}``;
the engines run one after the other (each deleted before the next). ``PROMPTS_JSON`` is a list
of token-id lists. The output maps each run's name to, per prompt, the logprob of every prompt
token after the first (``prompt_logprobs``) and the greedy continuation (``generated``); or
``{"error": ...}`` when the engine failed to start.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import traceback


def run_one(run: dict, prompts: list[list[int]]) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    kw = {}
    if os.environ.get("QDQ_TEST_GPU_UTIL"):  # GPU: share the device with other test engines
        kw["gpu_memory_utilization"] = float(os.environ["QDQ_TEST_GPU_UTIL"])
        kw["compilation_config"] = {"cudagraph_capture_sizes": [1, 2, 4]}
    if run.get("quantization"):
        kw["quantization"] = run["quantization"]
    if run.get("hf_overrides"):
        kw["hf_overrides"] = run["hf_overrides"]
    try:
        llm = LLM(
            model=run["model"],
            dtype=run.get("dtype", "float32"),
            max_model_len=128,
            enforce_eager=run.get("enforce_eager", True),
            seed=0,
            **kw,
        )
    except Exception as e:  # the test reads the message
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    sp = SamplingParams(temperature=0.0, max_tokens=4, prompt_logprobs=0, logprobs=0)
    res = []
    for ids in prompts:
        # One prompt per call, so batch-wide activation scales see one prompt (as the reference).
        out = llm.generate([TokensPrompt(prompt_token_ids=ids)], sp, use_tqdm=False)[0]
        plp = [d[t].logprob for d, t in zip(out.prompt_logprobs[1:], ids[1:], strict=True)]
        res.append({"prompt_logprobs": plp, "generated": list(out.outputs[0].token_ids)})
    del llm
    gc.collect()
    return {"results": res}


def main() -> None:
    out_path, runs, prompts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    out = {}
    for run in runs:
        out[run["name"]] = run_one(run, prompts)
        with open(out_path, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
