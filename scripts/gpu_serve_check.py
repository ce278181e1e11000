#!/usr/bin/env python3
"""`vllm serve` round trips with activation QDQ on and off, on a CUDA GPU (part of the smoke suite).

For each tiny model built on the spot (:func:`vllm_qdq.study.tiny.build_gpu_model`) two servers run side by side on
the one GPU, one with ``VLLM_QDQ=1 VLLM_QDQ_TRACE=1``, one with ``VLLM_QDQ=0``, under vLLM's
defaults (torch.compile, CUDA graphs); the models are checked at the same time. Every server
gets a fixed KV-cache size (``--kv-cache-memory-bytes``, 1 GiB: ``QDQ_TEST_KV_BYTES``), with
which vLLM skips the memory profiling that fails while another engine starts beside it
(``QDQ_TEST_KV_BYTES=0``: profiled, 0.4 of the GPU each, started one after the other; see
:mod:`vllm_qdq.study.server`, which starts, waits for and stops the servers). Checked
per model:

* ``/health`` answers and ``/v1/completions`` returns the asked number of tokens on both;
* the QDQ server's log has trace lines of the expected op, weight type and format, from the
  engine process; the baseline's has none;
* the prompt logprobs (``echo`` + ``logprobs``) of QDQ on and off differ.

    python scripts/gpu_serve_check.py [--models gptoss,fp8] [--out DIR]

Prints one line per check and exits 1 when any fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from vllm_qdq.study import server
from vllm_qdq.study.server import gpu_args, side_by_side
from vllm_qdq.study.tiny import build_gpu_model

TRACE = "[vllm_qdq trace]"
PROMPT = "The capital of France is Paris. Numbers: 12345"

#: name -> (builder, extra serve args, op, weight description, activation format)
MODELS = {
    "gptoss": ("gptoss", ["--moe-backend", "marlin"], "moe_wna16_marlin_gemm", "float4_e2m1f/mxfp4", "mxfp4/floor"),
    "fp8": ("llama", ["--quantization", "fp8", "--linear-backend", "marlin"], "marlin_gemm", "float8_e4m3fn",
            "mxfp8_e4m3/floor"),
}


def start(model: Path, port: int, extra: list[str], qdq: bool, log: Path, *, trace: bool = True,
          max_model_len: int = 256, max_num_seqs: int = 8, max_logprobs: int = 5) -> subprocess.Popen:
    """``vllm serve`` under vLLM's defaults (:func:`vllm_qdq.study.server.gpu_args`), QDQ on or off."""
    env = dict(os.environ, VLLM_QDQ="1" if qdq else "0", VLLM_QDQ_TRACE="1" if qdq and trace else "0")
    args = gpu_args(max_model_len=max_model_len, max_num_seqs=max_num_seqs, max_logprobs=max_logprobs)
    return server.start(model, port, [*args, *extra], log, env)


def wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 540) -> bool:
    """Whether the server on ``port`` answers ``/health`` within ``timeout`` s (a heartbeat line
    naming ``log`` meanwhile; the reason printed when not)."""
    return server.wait_healthy(f":{port}", port, proc, log, timeout, tag="gpu_serve_check")


def complete(port: int, model: Path) -> dict:
    body = {"model": str(model), "prompt": PROMPT, "max_tokens": 8, "temperature": 0.0, "echo": True,
            "logprobs": 1}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def check_model(name: str, root: Path, port: int) -> list[tuple[str, bool, str]]:
    kind, extra, op, weight, fmt = MODELS[name]
    model = build_gpu_model(kind, root)
    logs = {k: root / f"serve-{name}-{k}.log" for k in ("qdq", "base")}
    # side by side with a fixed KV-cache size; otherwise the baseline starts once the QDQ server
    # is up (vLLM 0.30's memory profiler fails when another engine starts beside it)
    procs = {"qdq": start(model, port, extra, True, logs["qdq"])}
    if side_by_side():
        procs["base"] = start(model, port + 1, extra, False, logs["base"])
    rows = []
    try:
        up = {"qdq": wait_healthy(port, procs["qdq"], logs["qdq"])}
        if up["qdq"] and "base" not in procs:
            procs["base"] = start(model, port + 1, extra, False, logs["base"])
        if "base" in procs:
            up["base"] = wait_healthy(port + 1, procs["base"], logs["base"])
        rows.append((f"{name}: both servers healthy", all(up.values()), str(up)))
        if not all(up.values()):
            for k in procs:
                print(f"--- {logs[k]} (tail)\n" + logs[k].read_text()[-3000:])
            return rows
        out = {k: complete(port + (k == "base"), model) for k in procs}
        n_tok = {k: out[k]["usage"]["completion_tokens"] for k in out}
        rows.append((f"{name}: /v1/completions returns 8 tokens", all(v == 8 for v in n_tok.values()), str(n_tok)))
        lp = {k: out[k]["choices"][0]["logprobs"]["token_logprobs"] for k in out}
        d = max(abs(a - b) for a, b in zip(lp["qdq"], lp["base"], strict=False) if a is not None and b is not None)
        rows.append((f"{name}: prompt logprobs differ with QDQ on", d > 1e-3, f"max |on-off| = {d:.4f}"))
    finally:
        for p in procs.values():
            server.stop(p)
    text = {k: logs[k].read_text() for k in logs}
    lines = [ln[ln.index(TRACE):] for ln in text["qdq"].splitlines() if TRACE in ln]
    want = [ln for ln in lines if f"{op} " in ln and f"weight={weight}" in ln and f"fmt={fmt}" in ln]
    engine = [ln for ln in text["qdq"].splitlines() if TRACE in ln and "EngineCore" in ln]
    rows.append((f"{name}: trace has {op} weight={weight} fmt={fmt}", bool(want), want[0] if want else f"{len(lines)} lines"))
    rows.append((f"{name}: trace lines come from the engine process", bool(engine), f"{len(engine)} lines"))
    rows.append((f"{name}: baseline traced nothing", TRACE not in text["base"], ""))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="qdq-serve-"))
    root.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.models.split(",") if n]
    for name in names:
        if name not in MODELS:
            print(f"unknown model {name!r}; accepted: {', '.join(MODELS)}")
            return 2
    t0 = time.time()
    for name in names:  # built here, one at a time: transformers' lazy imports are not thread-safe
        build_gpu_model(MODELS[name][0], root)

    def one(i: int, name: str) -> list[tuple[str, bool, str]]:
        got = check_model(name, root, 18600 + 10 * i)
        print(f"{name}: {time.time() - t0:.0f} s", flush=True)
        return got

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(names) if side_by_side() else 1) as pool:
        rows = [r for got in pool.map(one, range(len(names)), names) for r in got]
    for what, ok, detail in rows:
        print(f"{'PASS' if ok else 'FAIL'}  {what}  {detail}")
    return 0 if all(ok for _, ok, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
