"""The main job on the embedded CPU default (``make demo`` = ``python -m vllm_qdq.study.demo``).

1. QDQ of one tensor in every format of :data:`vllm_qdq.qdq.FORMATS`, with its error figures
   (SQNR dB, max abs error, relative L2 error).
2. A tiny random Llama and tokenizer built on the spot (:mod:`vllm_qdq.study.tiny`), served twice by
   the real vLLM CPU engine: once with QDQ on (see :data:`QDQ_SERVER`), once with QDQ off.
3. The study (:mod:`vllm_qdq.study.run`: throughput/latency, lm-eval accuracy on the shipped local
   tasks, logprob divergence, per-layer QDQ statistics) against the two, with small sizes, and
   the report written to ``out/study/report.md`` (``--out`` to change it).
4. Both servers shut down, whatever happened (:mod:`vllm_qdq.study.server` starts, waits for
   and stops them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from .. import config
from . import server

__all__ = ["QDQ_SERVER", "format_table", "main", "serve"]

#: How the QDQ server is switched on: "method" serves the model with ``--quantization qdq``
#: (weights and activations QDQ'd by the ``qdq`` quantization method, MXFP4 by default); "env"
#: sets ``VLLM_QDQ=1`` (the activation plugin, which acts only on already-quantized GEMMs — on
#: this unquantized tiny model it would change nothing).
QDQ_SERVER = "method"

#: Formats and sizes of the demo tensor.
DEMO_SHAPE = (64, 256)


def format_table(x: torch.Tensor) -> list[dict]:
    """QDQ ``x`` in every format; SQNR dB, max abs error and relative L2 error of each."""
    from ..qdq import FORMATS, quantize_dequantize

    rows = []
    xf = x.double()
    for name, spec in FORMATS.items():
        y = quantize_dequantize(x, name).double()
        err = xf - y
        e2 = float(err.square().sum())
        s2 = float(xf.square().sum())
        rows.append({
            "format": name,
            "bits": spec.elem.bits,
            "sqnr_db": float("inf") if e2 == 0 else 10 * torch.log10(torch.tensor(s2 / e2)).item(),
            "max_abs_err": float(err.abs().max()),
            "rel_l2": (e2 / s2) ** 0.5 if s2 else 0.0,
            "description": spec.description,
        })
    return rows


def _print_formats() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(DEMO_SHAPE, generator=g) * torch.logspace(-2, 1, DEMO_SHAPE[0]).unsqueeze(1)
    x[0, 0] = 40.0  # one outlier: shows per-tensor vs per-block scaling
    x = x.to(torch.bfloat16)
    print(f"QDQ of one bf16 tensor {tuple(x.shape)} (rows scaled 0.01..10, one outlier 40):")
    print(f"  {'format':<30} {'bits':>4} {'SQNR dB':>8} {'max abs err':>12} {'rel L2':>9}")
    for r in format_table(x):
        print(f"  {r['format']:<30} {r['bits']:>4} {r['sqnr_db']:>8.2f} {r['max_abs_err']:>12.4g} "
              f"{r['rel_l2']:>9.4f}")
    print(flush=True)


def serve(model: Path, port: int, *, qdq: bool, log: Path, cpus: str, stats_dir: Path | None = None,
          max_model_len: int = 1024, enforce_eager: bool = False) -> subprocess.Popen:
    """Start ``vllm serve`` on the CPU engine (:func:`vllm_qdq.study.server.start`: own process
    group, output to ``log``), in vLLM's default torch.compile mode (the mode users run);
    ``enforce_eager=True``: eager mode."""
    env = config.process_env()
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env["VLLM_CPU_OMP_THREADS_BIND"] = cpus
    for k in ("VLLM_QDQ", "VLLM_QDQ_STATS"):
        env.pop(k, None)
    args = ["--max-model-len", str(max_model_len), "--dtype", "bfloat16",
            *(["--enforce-eager"] if enforce_eager else []),
            "--seed", "0", "--max-num-seqs", "16", "--max-logprobs", "20"]
    if qdq:
        if QDQ_SERVER == "method":
            args += ["--quantization", "qdq"]
        else:
            env["VLLM_QDQ"] = "1"
        if stats_dir is not None:
            env["VLLM_QDQ_STATS"] = str(stats_dir)
    return server.start(model, port, args, log, env)


def run_study(out: Path, *, num_prompts: int = 16, input_len: int = 32, output_len: int = 16,
              limit: int | None = None, timeout: float = 400.0) -> Path:
    """Build the tiny model, serve it QDQ on/off, run the study, stop the servers; the report path."""
    from . import run as study
    from .report import write_report
    from .tiny import build_study_llama

    out.mkdir(parents=True, exist_ok=True)
    model = build_study_llama(out / "model")
    stats = out / "stats" / "qdq"
    if stats.is_dir():
        for f in stats.glob("qdq-stats-*.jsonl"):
            f.unlink()
    ports = {"qdq": server.free_port(), "baseline": server.free_port()}
    cpus = server.cpu_sets(2)
    procs: dict[str, subprocess.Popen] = {}
    t0 = time.monotonic()
    try:
        logs = {label: out / "logs" / f"serve-{label}.log" for label in ("qdq", "baseline")}
        for i, label in enumerate(("qdq", "baseline")):
            procs[label] = serve(model, ports[label], qdq=label == "qdq", log=logs[label],
                                 cpus=cpus[i], stats_dir=stats if label == "qdq" else None)
        print(f"demo: starting 2 vLLM CPU servers (usually 1-3 min; a line every {server.HEARTBEAT_S:.0f} s): "
              + ", ".join(f"{label} on :{ports[label]}, log {logs[label]}" for label in procs), flush=True)
        server.wait({label: (f"http://127.0.0.1:{ports[label]}", proc, logs[label]) for label, proc in procs.items()},
                    timeout, tag="demo")
        print(f"demo: both servers healthy after {time.monotonic() - t0:.0f} s "
              f"(QDQ via {'--quantization qdq' if QDQ_SERVER == 'method' else 'VLLM_QDQ=1'})", flush=True)
        args = ["run", "--qdq", f"http://127.0.0.1:{ports['qdq']}",
                "--baseline", f"http://127.0.0.1:{ports['baseline']}",
                "--model", str(model), "--out", str(out), "--tasks", "local",
                "--num-prompts", str(num_prompts), "--input-len", str(input_len),
                "--output-len", str(output_len)]
        if limit:
            args += ["--limit", str(limit)]
        study.main(args)
    finally:
        for proc in procs.values():
            server.stop(proc)
    # the QDQ server flushes its statistics at exit: refresh the report's numerics section
    return write_report(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vllm_qdq.study.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/study"))
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--limit", type=int, default=None, help="documents per accuracy task")
    ap.add_argument("--formats-only", action="store_true", help="only print the format table")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    _print_formats()
    if args.formats_only:
        return 0
    report = run_study(args.out, num_prompts=args.num_prompts, limit=args.limit)
    lp = json.loads((args.out / "logprobs" / "divergence.json").read_text())["summary"]
    print(f"demo: KL mean {lp['kl_mean']:.3g}, top-1 agreement {lp['top1_agreement']:.3f}")
    print(f"demo: report {report} (plots in {report.parent / 'plots'}); {time.monotonic() - t0:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
