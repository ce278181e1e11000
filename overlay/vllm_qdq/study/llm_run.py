"""Run vLLM ``LLM()`` configurations in a driver process and report their prompt logprobs.

The one engine-run helper of the tests, the GPU suite and the scripts. Two forms of the JSON
argument of ``python -m vllm_qdq.study.llm_run SPEC``:

**Batch form** (the GPU suite; :func:`drive` / :func:`drive_many` launch it): ``model`` (path),
``runs`` (a list of ``{"name", "llm"}``: extra ``LLM(...)`` keyword arguments per run, over
defaults sized for a tiny model: :func:`run_one`; the older single-run form ``{"llm": {...}}`` is
one run named ``run``), ``prompts`` (token-id lists; default: three fixed prompts). Prints
``DRIVER_PID <pid>`` then, per run, ``RESULT <name> {"logprobs": [[...], ...], "generated": ...,
"start_s": ...}``: the logprob of every prompt token after the first (a deterministic function of
the weights and the numerics, independent of sampling) and 4 greedy tokens, all prompts in one
``generate``. With vLLM's default engine-core process that ``generate`` may schedule its first
prompts in a step of their own (requests arriving while the core is idle start a step): runs of an
activation format whose scale spans tokens (per-tensor FP8, NVFP4's dynamic global amax) compare
bit for bit only with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` in the environment (README: "Activation
scales that span tokens depend on the batch").

**File form** (the CPU engine tests; the spec has ``out``): ``runs`` (a list of ``{"name",
"llm"}`` with the *whole* ``LLM(...)`` keyword arguments, ``model`` included, nothing added),
``prompts``, ``sampling`` (``SamplingParams`` keyword arguments; default greedy, 4 tokens,
``prompt_logprobs=0, logprobs=0``) and optional hooks ``setup`` (called once before the first
engine), ``before_prompt`` and ``after_prompt`` (around each prompt's ``generate``; the latter
returns a dict merged into that prompt's result), each ``"module:function"``. Each prompt gets
a ``generate`` call of its own (batch-wide activation scales then see one prompt, as a reference
model does). After every run ``out`` is rewritten as ``{name: {"results": [{"prompt_logprobs",
"generated", ...}, ...]}}``, or ``{name: {"error", "traceback"}}`` when the engine failed to
start (the test reads the message).

The environment (``VLLM_QDQ``, ...) is the caller's and the same for every run of the process
(the plugin registers once per process: runs with QDQ on and off belong in different processes).

Engines beside each other on one GPU: vLLM 0.30's memory profiler fails when another engine
starts or frees memory while it profiles ("Error in memory profiling"). On CUDA every batch-form
run therefore gets a fixed KV-cache size (``kv_cache_memory_bytes``: ``QDQ_TEST_KV_BYTES``,
default 1 GiB), with which vLLM skips that profiling, so engines of several drivers
(``drive_many``) can start side by side. ``QDQ_TEST_KV_BYTES=0`` restores the profiled size: each
run's engine is then shut down, and the GPU's used memory has settled, before the next one starts.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

from .. import config
from .server import kill_group

DEFAULT_PROMPTS = [
    [5, 17, 42, 99, 7, 123, 64, 200, 31, 8, 77, 150, 12, 250, 3, 90],
    [11, 22, 33, 44, 55, 66, 77, 88, 99, 110, 121, 132],
    [300, 4, 180, 9, 260, 16, 140, 25, 100, 36, 60, 49, 20, 64, 10, 81, 30, 70],
]


def gpu_used_mib() -> int | None:
    """Used memory of GPU 0 in MiB from ``nvidia-smi`` (no CUDA context here), or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                              "-i", "0"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        return int(out.stdout.strip().splitlines()[0])
    except (ValueError, IndexError):
        return None


def wait_gpu_settled(timeout: float = 60.0, step: float = 1.0) -> None:
    """Wait until the GPU's used memory stops changing (two equal readings in a row)."""
    last = gpu_used_mib()
    if last is None:
        time.sleep(5)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(step)
        now = gpu_used_mib()
        if now is not None and abs(now - last) < 64:
            return
        last = now


def shutdown(llm) -> None:
    """Stop ``llm``'s engine processes now (not at garbage collection)."""
    for fn in (getattr(llm, "shutdown", None), getattr(getattr(llm.llm_engine, "engine_core", None), "shutdown", None)):
        if callable(fn):
            fn()
            break


def kv_bytes() -> int | None:
    """The fixed KV-cache size for CUDA engines (``QDQ_TEST_KV_BYTES``, default 1 GiB; 0: let
    vLLM profile), or None without CUDA (the CPU engine sizes its cache from
    ``VLLM_CPU_KVCACHE_SPACE``)."""
    import torch

    n = config.engine_kv_bytes()
    return n if n > 0 and torch.cuda.is_available() else None


def run_streamed(cmd: list[str], env: dict[str, str], timeout: float, tag: str = "") -> tuple[int, str]:
    """Run ``cmd``, echoing its output line by line as it comes (so a log shows progress even
    when the caller is killed at a time limit), each echoed line prefixed with ``tag`` (drivers
    running side by side); ``(return code, whole output)``, -9 on timeout."""
    import sys
    import threading

    # a process group of its own: on timeout the driver's engine processes go with it
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            sys.stdout.write(f"[{tag}] {line}" if tag else line)
            sys.stdout.flush()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        rc = -9
    finally:  # timed out, died, done, or the caller interrupted: nothing of the driver stays
        kill_group(proc)
    t.join(10)
    return rc, "".join(lines)


def drive(model: str | os.PathLike, runs: dict[str, dict], env: dict[str, str], *,
          prompts: list[list[int]] | None = None, timeout: float = 900,
          tag: str = "") -> tuple[int, str, dict[str, dict]]:
    """Run this module (batch form) on ``runs`` (``{name: LLM kwargs}``) in a driver process of its own.

    Returns ``(return code, whole output, {name: result})``; each result also carries
    ``driver`` (the driver's pid) and ``log``: the output lines between the previous run's
    ``RESULT`` line and its own, i.e. what this run's engine printed.
    """
    import sys

    spec: dict = {"model": str(model), "runs": [{"name": k, "llm": v} for k, v in runs.items()]}
    if prompts is not None:
        spec["prompts"] = prompts
    rc, out = run_streamed([sys.executable, "-m", "vllm_qdq.study.llm_run", json.dumps(spec)], env, timeout, tag)
    m = re.search(r"DRIVER_PID (\d+)", out)
    driver = int(m.group(1)) if m else -1
    res: dict[str, dict] = {}
    chunks = re.split(r"^RESULT (\S+) (.*)$", out, flags=re.M)
    for i in range(1, len(chunks) - 1, 3):
        name, payload, before = chunks[i], chunks[i + 1], chunks[i - 1]
        res[name] = {**json.loads(payload), "driver": driver, "log": before}
    return rc, out, res


def drive_many(jobs: dict[str, tuple], *, prompts: list[list[int]] | None = None,
               timeout: float = 900) -> dict[str, tuple[int, str, dict[str, dict]]]:
    """``drive`` for each ``{tag: (model, runs, env)}`` at once, one driver process each (their
    engines side by side on the GPU: see the module text); ``{tag: drive's result}``."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(jobs)) as pool:
        futs = {tag: pool.submit(drive, model, runs, env, prompts=prompts, timeout=timeout, tag=tag)
                for tag, (model, runs, env) in jobs.items()}
        return {tag: f.result() for tag, f in futs.items()}


def run_one(model: str, llm_kwargs: dict, prompts: list[list[int]]) -> dict:
    """One batch-form run: ``LLM(model, **defaults | llm_kwargs)``, all ``prompts`` in one greedy
    ``generate`` of 4 tokens; the engine shut down before returning."""
    from vllm import LLM, SamplingParams

    # few CUDA graph sizes: a tiny model's start is dominated by capture otherwise
    kwargs = {"max_model_len": 256, "seed": 0, "max_num_seqs": 8,
              "gpu_memory_utilization": config.engine_gpu_util(0.5),
              "compilation_config": {"cudagraph_capture_sizes": [1, 2, 4, 8]}, **llm_kwargs}
    if (kv := kv_bytes()) is not None:
        kwargs.setdefault("kv_cache_memory_bytes", kv)
    t0 = time.monotonic()
    llm = LLM(model=model, **kwargs)
    start_s = time.monotonic() - t0
    try:
        sp = SamplingParams(max_tokens=4, temperature=0.0, prompt_logprobs=0)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        result, tokens = [], []
        for p, o in zip(prompts, outs, strict=True):
            lp = [None if d is None else d[t].logprob for d, t in zip(o.prompt_logprobs, p, strict=True)]
            result.append([x for x in lp if x is not None])
            tokens.append(list(o.outputs[0].token_ids))
    finally:
        shutdown(llm)
        del llm
        gc.collect()
    return {"logprobs": result, "generated": tokens, "start_s": round(start_s, 1)}


def _hook(ref: str | None) -> Callable[..., Any] | None:
    """``"module:function"`` -> the function (None -> None)."""
    if not ref:
        return None
    import importlib

    mod, _, fn = ref.partition(":")
    return getattr(importlib.import_module(mod), fn)


#: The file form's default sampling: greedy, 4 tokens, the prompt's logprobs.
FILE_SAMPLING: dict[str, Any] = {"temperature": 0.0, "max_tokens": 4, "prompt_logprobs": 0, "logprobs": 0}


def run_per_prompt(llm_kwargs: dict, prompts: list[list[int]], sampling: dict[str, Any],
                   before: Callable[[], Any] | None = None,
                   after: Callable[[], dict] | None = None) -> dict:
    """One file-form run: ``LLM(**llm_kwargs)``, one ``generate`` per prompt; ``{"results":
    [{"prompt_logprobs", "generated", **after()}, ...]}`` or ``{"error", "traceback"}`` when the
    engine failed to start."""
    import traceback

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    try:
        llm = LLM(**llm_kwargs)
    except Exception as e:  # the test reads the message
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    try:
        sp = SamplingParams(**sampling)
        res = []
        for ids in prompts:
            if before is not None:
                before()
            out = llm.generate([TokensPrompt(prompt_token_ids=ids)], sp, use_tqdm=False)[0]
            plp = [d[t].logprob for d, t in zip(out.prompt_logprobs[1:], ids[1:], strict=True)]
            res.append({"prompt_logprobs": plp, "generated": list(out.outputs[0].token_ids),
                        **(after() if after is not None else {})})
    finally:
        del llm
        gc.collect()
    return {"results": res}


def run_file_form(spec: dict) -> int:
    """The file form of the spec (see the module text): every run, ``spec["out"]`` rewritten after each."""
    setup = _hook(spec.get("setup"))
    if setup is not None:
        setup()
    before, after = _hook(spec.get("before_prompt")), _hook(spec.get("after_prompt"))
    sampling = spec.get("sampling", FILE_SAMPLING)
    out: dict[str, dict] = {}
    for r in spec["runs"]:
        out[r["name"]] = run_per_prompt(r["llm"], spec["prompts"], sampling, before, after)
        with open(spec["out"], "w") as f:
            json.dump(out, f)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m vllm_qdq.study.llm_run SPEC``: the batch or the file form (module text)."""
    ap = argparse.ArgumentParser(prog="python -m vllm_qdq.study.llm_run", description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", help='JSON: {"model": PATH, "runs": [{"name": ..., "llm": {...}}], "prompts": [[ids]]}; '
                    'with "out": the file form')
    args = ap.parse_args(argv)
    spec = json.loads(args.spec)
    if "out" in spec:
        return run_file_form(spec)
    runs = spec.get("runs") or [{"name": "run", "llm": spec.get("llm", {})}]
    prompts = spec.get("prompts", DEFAULT_PROMPTS)
    print("DRIVER_PID", os.getpid(), flush=True)
    for i, r in enumerate(runs):
        if i and kv_bytes() is None:
            wait_gpu_settled()
        res = run_one(spec["model"], r.get("llm", {}), prompts)
        print(f"RESULT {r['name']} " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
