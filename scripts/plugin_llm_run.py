"""Run one vLLM ``LLM()`` configuration and print its prompt logprobs as one JSON line.

    python scripts/plugin_llm_run.py '{"model": "/tmp/m", "llm": {"moe_backend": "marlin"}}'

The JSON argument: ``model`` (path), ``llm`` (extra ``LLM(...)`` keyword arguments),
``prompts`` (token-id lists; default: three fixed prompts). The environment (``VLLM_QDQ``, ...)
is the caller's. Prints ``DRIVER_PID <pid>`` then ``RESULT {"logprobs": [[...], ...]}``: the
logprob of every prompt token after the first (a deterministic function of the weights and the
numerics, independent of sampling). One configuration per process, so each run loads plugins,
compiles and captures CUDA graphs afresh (or from the compile cache under ``VLLM_CACHE_ROOT``).
"""

from __future__ import annotations

import json
import os
import sys

DEFAULT_PROMPTS = [
    [5, 17, 42, 99, 7, 123, 64, 200, 31, 8, 77, 150, 12, 250, 3, 90],
    [11, 22, 33, 44, 55, 66, 77, 88, 99, 110, 121, 132],
    [300, 4, 180, 9, 260, 16, 140, 25, 100, 36, 60, 49, 20, 64, 10, 81, 30, 70],
]


def main(spec: dict) -> dict:
    from vllm import LLM, SamplingParams

    prompts = spec.get("prompts", DEFAULT_PROMPTS)
    # few CUDA graph sizes: a tiny model's start is dominated by capture otherwise
    kwargs = {"max_model_len": 256, "seed": 0, "gpu_memory_utilization": float(os.environ.get("QDQ_TEST_GPU_UTIL", "0.5")), "max_num_seqs": 8,
              "compilation_config": {"cudagraph_capture_sizes": [1, 2, 4, 8]}, **spec.get("llm", {})}
    llm = LLM(model=spec["model"], **kwargs)
    sp = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp)
    result = []
    for p, o in zip(prompts, outs, strict=True):
        lp = [None if d is None else d[t].logprob for d, t in zip(o.prompt_logprobs, p, strict=True)]
        result.append([x for x in lp if x is not None])
    return {"logprobs": result}


if __name__ == "__main__":
    print("DRIVER_PID", os.getpid(), flush=True)
    res = main(json.loads(sys.argv[1]))
    print("RESULT " + json.dumps(res), flush=True)
