"""Reproduce, or rule out, the gpt-oss compiled-run anomaly of the GPU suite (one GPU, ~6 min).

Three GPU runs (results/h200-2026-12-02d, -02e) saw vLLM 0.30's *compiled* run of the tiny gpt-oss
(MXFP4 experts, Marlin MoE) with QDQ **off** land 0.67-0.75 nats (mean; 2.75 max) away from its eager run and
from every QDQ-on run, where it is ~0.035 (max) in every other run; each time another gpt-oss engine
compiled beside it. QDQ off wraps nothing, so the plugin's code is not in that run.

This script starts ``--drivers`` QDQ-off driver processes side by side (and, with ``--with-on``, one
QDQ-on neighbour), each running the same model three times: ``compiled`` (vLLM's defaults: torch.compile
and CUDA graphs), ``compiled-again`` (a second engine on the compile cache the first one wrote) and
``eager`` (``enforce_eager``). ``--caches shared`` gives every driver the same Inductor and Triton cache
directories (as two engines of one user share ``/tmp/torchinductor_$USER`` and ``~/.triton`` by
default), ``separate`` gives each its own; vLLM's own compile cache is always per driver.

What the figures say: a compiled run far from its eager run in one driver only -> the anomaly
reproduced; ``compiled`` and ``compiled-again`` equal in that driver -> it lives in the compiled
artifact (a compile-time choice), different -> it happens at run time; seen with ``shared`` and not
with ``separate`` -> the shared caches carry it. Exit status 1 when any driver's compiled run is
more than ``--threshold`` nats (mean) from its eager run, 0 when none is, 2 on bad arguments.

    . /opt/gpu-site/env.sh; python3 scripts/gpu_compile_repro.py --out /root/repro --caches shared --with-on
"""

from __future__ import annotations

import argparse
import os
import sys
from itertools import combinations
from pathlib import Path

RUNS = ("compiled", "compiled-again", "eager")
MODELS = {"gptoss": {"moe_backend": "marlin"}, "llama": {"quantization": "fp8", "linear_backend": "marlin"}}


def mean_max(a: list[list[float]], b: list[list[float]]) -> tuple[float, float]:
    """Mean and largest |a - b| over every prompt logprob of two runs (nats)."""
    d = [abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]
    return sum(d) / len(d), max(d)


def report(results: dict[str, dict[str, list[list[float]]]], threshold: float) -> tuple[list[str], list[str]]:
    """``results``: ``{driver tag: {run name: prompt logprobs}}`` with the :data:`RUNS` of each driver.
    Returns the report lines and the tags whose ``compiled`` or ``compiled-again`` run is more than
    ``threshold`` nats (mean) from the driver's own ``eager`` run."""
    lines, anomalies = [], []
    for tag, runs in sorted(results.items()):
        missing = [r for r in RUNS if r not in runs]
        if missing:
            raise ValueError(f"driver {tag!r} reported no {missing}; expected runs {list(RUNS)}")
        figs = {f"{a} vs {b}": mean_max(runs[a], runs[b]) for a, b in
                (("compiled", "eager"), ("compiled-again", "eager"), ("compiled", "compiled-again"))}
        bad = figs["compiled vs eager"][0] > threshold or figs["compiled-again vs eager"][0] > threshold
        if bad:
            anomalies.append(tag)
        lines.append(f"{tag}: " + "; ".join(f"{k} mean {m:.4g} max {x:.4g}" for k, (m, x) in figs.items())
                     + (f"  ANOMALY (> {threshold} mean)" if bad else ""))
    off = sorted(t for t in results if t.startswith("off"))
    for run in RUNS:
        for a, b in combinations(off, 2):
            m, x = mean_max(results[a][run], results[b][run])
            lines.append(f"{run}: {a} vs {b} mean {m:.4g} max {x:.4g}")
    return lines, anomalies


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="models, caches and logs go here")
    ap.add_argument("--caches", default="shared", help="shared or separate Inductor + Triton caches (default shared)")
    ap.add_argument("--drivers", type=int, default=3, help="QDQ-off drivers side by side (1-6, default 3)")
    ap.add_argument("--with-on", action="store_true", help="one QDQ-on driver beside them")
    ap.add_argument("--model", default="gptoss", help=f"one of {', '.join(MODELS)} (default gptoss)")
    ap.add_argument("--threshold", type=float, default=0.1, help="nats, mean |compiled - eager| (default 0.1)")
    args = ap.parse_args(argv)
    if args.caches not in ("shared", "separate"):
        ap.error(f"--caches {args.caches!r}; accepted: shared, separate")
    if not 1 <= args.drivers <= 6:
        ap.error(f"--drivers {args.drivers}; accepted: 1 to 6")
    if args.model not in MODELS:
        ap.error(f"--model {args.model!r}; accepted: {', '.join(MODELS)}")
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_compile_repro: no GPU (torch {torch.__version__}, torch.version.cuda={torch.version.cuda}); "
              "this reproduces a CUDA-only anomaly", file=sys.stderr)
        return 2
    from vllm_qdq.study.llm_run import drive_many
    from vllm_qdq.study.tiny import build_gpu_model

    model = build_gpu_model(args.model, args.out / "models")
    llm = MODELS[args.model]
    runs = {"compiled": llm, "compiled-again": llm, "eager": {**llm, "enforce_eager": True}}
    tags = [f"off{i}" for i in range(args.drivers)] + (["on"] if args.with_on else [])
    jobs = {}
    for tag in tags:
        cdir = args.out / ("shared" if args.caches == "shared" else tag)
        env = dict(os.environ, VLLM_QDQ="1" if tag == "on" else "0", VLLM_CACHE_ROOT=str(args.out / tag / "vllm"),
                   TORCHINDUCTOR_CACHE_DIR=str(cdir / "inductor"), TRITON_CACHE_DIR=str(cdir / "triton"),
                   VLLM_WORKER_MULTIPROC_METHOD="spawn", QDQ_TEST_GPU_UTIL=os.environ.get("QDQ_TEST_GPU_UTIL", "0.1"))
        jobs[tag] = (model, runs, env)
    got = drive_many(jobs)
    results = {}
    for tag, (rc, out, res) in got.items():
        (args.out / f"{tag}.log").write_text(out)
        if rc != 0 or set(res) != set(RUNS):
            print(f"gpu_compile_repro: driver {tag} failed (rc {rc}); its output: {args.out / f'{tag}.log'}\n{out[-3000:]}")
            return 1
        results[tag] = {name: r["logprobs"] for name, r in res.items()}
    lines, anomalies = report(results, args.threshold)
    print(f"model {args.model}, caches {args.caches}, drivers {', '.join(tags)}")
    print("\n".join(lines))
    print(f"anomaly in {anomalies}" if anomalies else "no anomaly: every compiled run within "
          f"{args.threshold} nats (mean) of its eager run")
    return 1 if anomalies else 0


if __name__ == "__main__":
    raise SystemExit(main())
