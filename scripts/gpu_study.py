#!/usr/bin/env python3
"""The QDQ study on one CUDA GPU without Docker: two `vllm serve` side by side, then the study.

What `docker compose --profile study up` does, for a host with vLLM 0.30.0 and no Docker (and a
way to get a GPU example report when nothing can be downloaded): a tiny model is built on the
spot (:func:`vllm_qdq.study.tiny.build_gpu_model`; default: a gpt-oss with MXFP4 MoE weights in the checkpoint
layout, served with the Marlin MoE backend, so the activation plugin turns its W4A16 MoE GEMMs
into W4A4), two servers start side by side on the one GPU (a fixed KV-cache size each, see
scripts/gpu_serve_check.py; vLLM's defaults: torch.compile and CUDA graphs), one with
``VLLM_QDQ=1`` (settings from the
environment: ``VLLM_QDQ_CONFIG``, ...), one with ``VLLM_QDQ=0``, and ``vllm_qdq.study run``
measures both (bench, lm-eval on the shipped local tasks, logprob divergence) and writes
OUT/report.md with its plots. Per-layer statistics are off: they need ``--enforce-eager``,
which would distort the speed figures.

    python scripts/gpu_study.py [--model gptoss|fp8] [--out DIR] [--num-prompts N] ...
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from vllm_qdq.study import server
from vllm_qdq.study.server import gpu_args, side_by_side
from vllm_qdq.study.tiny import build_gpu_model

#: name -> (tiny model kind, extra serve args); the models of scripts/gpu_serve_check.py.
MODELS = {
    "gptoss": ("gptoss", ["--moe-backend", "marlin"]),
    "fp8": ("llama", ["--quantization", "fp8", "--linear-backend", "marlin"]),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gptoss", choices=sorted(MODELS))
    ap.add_argument("--out", type=Path, default=Path("out/gpu-study"))
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--port", type=int, default=18650)
    args = ap.parse_args()
    from vllm_qdq.study import run as study

    kind, extra = MODELS[args.model]
    args.out.mkdir(parents=True, exist_ok=True)
    model = build_gpu_model(kind, args.out / "models")
    ports = {"qdq": args.port, "baseline": args.port + 1}
    logs = {k: args.out / "logs" / f"serve-{k}.log" for k in ports}
    logs["qdq"].parent.mkdir(parents=True, exist_ok=True)
    max_len = max(1024, 2 * (args.input_len + args.output_len))
    t0 = time.monotonic()
    procs = {}
    try:
        for k in ports:  # side by side, or one after the other where vLLM profiles memory
            env = dict(os.environ, VLLM_QDQ="1" if k == "qdq" else "0", VLLM_QDQ_TRACE="0")
            serve_args = gpu_args(max_model_len=max_len, max_num_seqs=args.max_num_seqs, max_logprobs=20)
            procs[k] = server.start(model, ports[k], [*serve_args, *extra], logs[k], env)
            if side_by_side():
                continue
            if not server.wait_healthy(k, ports[k], procs[k], logs[k], 900, tag="gpu_study"):
                return 1
        for k in ports:
            if not server.wait_healthy(k, ports[k], procs[k], logs[k], 900, tag="gpu_study"):
                return 1
        print(f"gpu_study: both servers healthy after {time.monotonic() - t0:.0f} s", flush=True)
        rc = study.main(["run", "--qdq", f"http://127.0.0.1:{ports['qdq']}",
                         "--baseline", f"http://127.0.0.1:{ports['baseline']}", "--model", str(model),
                         "--out", str(args.out), "--tasks", "local", "--num-prompts", str(args.num_prompts),
                         "--input-len", str(args.input_len), "--output-len", str(args.output_len),
                         "--max-concurrency", str(args.max_num_seqs)])
    finally:
        for proc in procs.values():
            server.stop(proc)
    qlog = logs["qdq"].read_text()
    if "activation QDQ enabled" not in qlog:
        print("gpu_study: the QDQ server's log has no 'activation QDQ enabled' line")
        return 1
    print(f"gpu_study: report {args.out / 'report.md'}; {time.monotonic() - t0:.0f} s in all")
    return rc


if __name__ == "__main__":
    sys.exit(main())
