"""The main job on the embedded CPU default (``make demo`` = ``python -m vllm_qdq.demo``).

1. QDQ of one tensor in every format of :data:`vllm_qdq.qdq.FORMATS`, with its error figures
   (SQNR dB, max abs error, relative L2 error).
2. A tiny random Llama and tokenizer built on the spot (:mod:`vllm_qdq.tiny`), served twice by
   the real vLLM CPU engine: once with QDQ on (see :data:`QDQ_SERVER`), once with QDQ off.
3. The study (:mod:`vllm_qdq.study`: throughput/latency, lm-eval accuracy on the shipped local
   tasks, logprob divergence, per-layer QDQ statistics) against the two, with small sizes, and
   the report written to ``out/study/report.md`` (``--out`` to change it).
4. Both servers shut down, whatever happened.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

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
    from .qdq import FORMATS, quantize_dequantize

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_sets(n: int) -> list[str]:
    """Split this process's CPUs into ``n`` OpenMP bind lists (one per server)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if len(cpus) < n:
        return [",".join(map(str, cpus))] * n
    per = len(cpus) // n
    return [",".join(map(str, cpus[i * per:(i + 1) * per])) for i in range(n)]


def serve(model: Path, port: int, *, qdq: bool, log: Path, cpus: str, stats_dir: Path | None = None,
          max_model_len: int = 1024, enforce_eager: bool = False) -> subprocess.Popen:
    """Start ``vllm serve`` on the CPU engine (own process group, output to ``log``), in vLLM's
    default torch.compile mode (the mode users run); ``enforce_eager=True``: eager mode."""
    from .vllm_cli import vllm_command

    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env["VLLM_CPU_OMP_THREADS_BIND"] = cpus
    for k in ("VLLM_QDQ", "VLLM_QDQ_STATS"):
        env.pop(k, None)
    cmd = [*vllm_command(), "serve", str(model), "--port", str(port), "--host", "127.0.0.1",
           "--max-model-len", str(max_model_len), "--dtype", "bfloat16",
           *(["--enforce-eager"] if enforce_eager else []),
           "--seed", "0", "--max-num-seqs", "16", "--max-logprobs", "20"]
    if qdq:
        if QDQ_SERVER == "method":
            cmd += ["--quantization", "qdq"]
        else:
            env["VLLM_QDQ"] = "1"
        if stats_dir is not None:
            env["VLLM_QDQ_STATS"] = str(stats_dir)
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log, "w")
    return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


#: Seconds between the progress lines printed while the servers start.
HEARTBEAT_S = 15.0


def _last_line(log: Path, width: int = 110) -> str:
    """The last non-empty line of ``log`` (shortened), or ``""``."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    if not lines:
        return ""
    return lines[-1] if len(lines[-1]) <= width else lines[-1][:width - 3] + "..."


def _healthy(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait(servers: dict[str, tuple[str, subprocess.Popen, Path]], timeout: float,
          heartbeat: float = HEARTBEAT_S) -> None:
    """Wait until every server (``label -> (url, process, log)``) answers ``/health``.

    Every ``heartbeat`` seconds prints one line per server still starting: elapsed time, its log
    path and the log's last line. Raises ``RuntimeError`` with the log's tail when a server exits,
    ``TimeoutError`` naming the log when ``timeout`` passes.
    """
    t0 = time.monotonic()
    next_beat = t0 + heartbeat
    pending = dict(servers)
    while pending:
        for label, (url, proc, log) in list(pending.items()):
            if proc.poll() is not None:
                raise RuntimeError(f"server {label} ({url}) exited with {proc.returncode}; log {log}, last lines:\n"
                                   + log.read_text(errors="replace")[-3000:])
            if _healthy(url):
                print(f"demo: server {label} healthy after {time.monotonic() - t0:.0f} s ({url})", flush=True)
                del pending[label]
        if not pending:
            return
        now = time.monotonic()
        if now - t0 > timeout:
            label, (url, _, log) = next(iter(pending.items()))
            raise TimeoutError(f"server {label} ({url}) not healthy after {timeout:.0f} s; log {log}, "
                               f"last line: {_last_line(log)!r}")
        if now >= next_beat:
            next_beat = now + heartbeat
            for label, (_, _, log) in pending.items():
                print(f"demo: waiting for server {label}, {now - t0:.0f} s so far; log {log}: "
                      f"{_last_line(log) or '(empty)'}", flush=True)
        time.sleep(1.0)


def run_study(out: Path, *, num_prompts: int = 16, input_len: int = 32, output_len: int = 16,
              limit: int | None = None, timeout: float = 400.0) -> Path:
    """Build the tiny model, serve it QDQ on/off, run the study, stop the servers; the report path."""
    from . import study
    from .tiny import build_tiny_llama

    out.mkdir(parents=True, exist_ok=True)
    model = build_tiny_llama(out / "model")
    stats = out / "stats" / "qdq"
    if stats.is_dir():
        for f in stats.glob("qdq-stats-*.jsonl"):
            f.unlink()
    ports = {"qdq": _free_port(), "baseline": _free_port()}
    cpus = _cpu_sets(2)
    procs: dict[str, subprocess.Popen] = {}
    t0 = time.monotonic()
    try:
        logs = {label: out / "logs" / f"serve-{label}.log" for label in ("qdq", "baseline")}
        for i, label in enumerate(("qdq", "baseline")):
            procs[label] = serve(model, ports[label], qdq=label == "qdq", log=logs[label],
                                 cpus=cpus[i], stats_dir=stats if label == "qdq" else None)
        print(f"demo: starting 2 vLLM CPU servers (usually 1-3 min; a line every {HEARTBEAT_S:.0f} s): "
              + ", ".join(f"{label} on :{ports[label]}, log {logs[label]}" for label in procs), flush=True)
        _wait({label: (f"http://127.0.0.1:{ports[label]}", proc, logs[label]) for label, proc in procs.items()},
              timeout)
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
            _stop(proc)
    # the QDQ server flushes its statistics at exit: refresh the report's numerics section
    from .study_report import write_report

    return write_report(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vllm_qdq.demo", description=__doc__.split("\n\n")[0])
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
