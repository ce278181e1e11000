"""Reproduce, or rule out, the gpt-oss compiled-run anomaly of the GPU suite (one GPU, ~6 min).

GPU runs (results/h200-2026-12-02d, -02e) saw vLLM 0.30's *compiled* run of the tiny gpt-oss
(MXFP4 experts, Marlin MoE) with QDQ **off** land far from its eager run: plugin-gptoss 0.83 nats mean /
2.77 max (-d), plugin-exact 0.75 / 2.75 (-e), against 0.012 / 0.035 in every other run; a third time
(-d kv-cache) the QDQ-off compiled baseline moved the on-vs-off figure from 0.23 to 0.69. Each time
another gpt-oss engine compiled beside it. QDQ off wraps nothing: the plugin's code is not in that run.

This script starts ``--drivers`` QDQ-off driver processes side by side (and, with ``--with-on``, one
QDQ-on neighbour, reported but not judged: its QDQ makes compiled and eager differ by ~0.15 nats), each
running the same model three times, in the order of the sightings: ``eager`` (``enforce_eager``),
``compiled`` (vLLM's defaults: torch.compile and CUDA graphs) and ``compiled-again`` (a second engine on
the compile cache the first one wrote). ``--caches shared`` gives every driver the same Triton cache and
starting Inductor cache (as two engines of one user share ``~/.triton`` and ``/tmp/torchinductor_$USER``
by default), ``separate`` gives each its own; vLLM's compile cache is per driver (and vLLM moves
Inductor's cache under it, per compile hash: the report lists where cache files landed).

``--fresh-compile`` makes ``compiled-again`` compile anew (``VLLM_DISABLE_COMPILE_CACHE=1``), and
``--inductor KEY=VALUE`` passes Inductor options to the compiled runs (e.g. ``combo_kernels=false``):
elsewhere, vLLM 0.28 users saw each boot's compile settle on its own kernels and its own greedy
outputs, with the compile cache freezing whichever draw came first.

What the figures say: a compiled run far from its eager run in one driver only -> the anomaly
reproduced; ``compiled`` and ``compiled-again`` equal in that driver -> it lives in the compiled
artifact (a compile-time choice), different -> it happens at run time; seen with ``shared`` and not
with ``separate`` -> the shared caches carry it. Exit status 1 when any driver's compiled run is
more than ``--threshold`` nats (mean) from its eager run, 0 when none is, 2 on bad arguments, 3 when
there is no GPU or a driver failed (every driver's output is in ``OUT/<tag>.log``).

    . /opt/gpu-site/env.sh; python3 scripts/gpu_compile_repro.py --out /root/repro --caches shared --with-on
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from itertools import combinations
from pathlib import Path

RUNS = ("eager", "compiled", "compiled-again")
MODELS = {"gptoss": {"moe_backend": "marlin"}, "llama": {"quantization": "fp8", "linear_backend": "marlin"}}


def mean_max(a: list[list[float]], b: list[list[float]]) -> tuple[float, float]:
    """Mean and largest |a - b| over every prompt logprob of two runs (nats)."""
    d = [abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]
    return sum(d) / len(d), max(d)


def report(results: dict[str, dict[str, list[list[float]]]], threshold: float) -> tuple[list[str], list[str]]:
    """``results``: ``{driver tag: {run name: prompt logprobs}}`` with the :data:`RUNS` of each driver.
    Returns the report lines and the QDQ-off tags (``off*``) whose ``compiled`` or ``compiled-again``
    run is more than ``threshold`` nats (mean) from the driver's own ``eager`` run; other drivers
    (the QDQ-on neighbour) are reported, not judged."""
    lines, anomalies = [], []
    for tag, runs in sorted(results.items()):
        judged = tag.startswith("off")
        missing = [r for r in RUNS if r not in runs]
        if missing:
            raise ValueError(f"driver {tag!r} reported no {missing}; expected runs {list(RUNS)}")
        figs = {f"{a} vs {b}": mean_max(runs[a], runs[b]) for a, b in
                (("compiled", "eager"), ("compiled-again", "eager"), ("compiled", "compiled-again"))}
        bad = judged and (figs["compiled vs eager"][0] > threshold or figs["compiled-again vs eager"][0] > threshold)
        if bad:
            anomalies.append(tag)
        lines.append(f"{tag}: " + "; ".join(f"{k} mean {m:.4g} max {x:.4g}" for k, (m, x) in figs.items())
                     + (f"  ANOMALY (> {threshold} mean)" if bad else "" if judged else "  (QDQ on: not judged)"))
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
    ap.add_argument("--timeout", type=float, default=420, help="seconds per driver (default 420)")
    ap.add_argument("--fresh-compile", action="store_true",
                    help="VLLM_DISABLE_COMPILE_CACHE=1: compiled-again compiles anew instead of loading the "
                    "first artifact (a per-compile draw shows as compiled != compiled-again)")
    ap.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                    help="an Inductor option for the compiled runs (compilation_config.inductor_compile_config; "
                    "VALUE a JSON literal, e.g. combo_kernels=false); repeatable")
    args = ap.parse_args(argv)
    inductor = {}
    for item in args.inductor:
        key, sep, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        if not sep or not key.isidentifier() or not isinstance(value, (bool, int, float, str)):
            ap.error(f"--inductor {item!r}: expected KEY=VALUE with VALUE a JSON number, string or true/false "
                     "(e.g. combo_kernels=false)")
        inductor[key] = value
    if args.caches not in ("shared", "separate"):
        ap.error(f"--caches {args.caches!r}; accepted: shared, separate")
    if not 1 <= args.drivers <= 6:
        ap.error(f"--drivers {args.drivers}; accepted: 1 to 6")
    if args.model not in MODELS:
        ap.error(f"--model {args.model!r}; accepted: {', '.join(MODELS)}")
    if args.out.exists() and any(args.out.iterdir()):
        ap.error(f"--out {str(args.out)!r} is not empty: a second run there would load the first one's compile "
                 "caches (give a new directory)")
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_compile_repro: no GPU (torch {torch.__version__}, torch.version.cuda={torch.version.cuda}); "
              "this reproduces a CUDA-only anomaly", file=sys.stderr)
        return 3
    from vllm_qdq.study.llm_run import drive_many
    from vllm_qdq.study.tiny import build_gpu_model

    model = build_gpu_model(args.model, args.out / "models")
    llm = MODELS[args.model]
    compiled = {**llm, "compilation_config": {"inductor_compile_config": inductor}} if inductor else llm
    runs = {"eager": {**llm, "enforce_eager": True}, "compiled": compiled, "compiled-again": compiled}
    tags = [f"off{i}" for i in range(args.drivers)] + (["on"] if args.with_on else [])
    jobs = {}
    for tag in tags:
        cdir = args.out / ("shared" if args.caches == "shared" else tag)
        env = dict(os.environ, VLLM_QDQ="1" if tag == "on" else "0", VLLM_CACHE_ROOT=str(args.out / tag / "vllm"),
                   TORCHINDUCTOR_CACHE_DIR=str(cdir / "inductor"), TRITON_CACHE_DIR=str(cdir / "triton"),
                   VLLM_WORKER_MULTIPROC_METHOD="spawn", QDQ_TEST_GPU_UTIL=os.environ.get("QDQ_TEST_GPU_UTIL", "0.1"))
        if args.fresh_compile:
            env["VLLM_DISABLE_COMPILE_CACHE"] = "1"
        jobs[tag] = (model, runs, env)
    got = drive_many(jobs, timeout=args.timeout)
    failed = []
    results = {}
    for tag, (rc, out, res) in sorted(got.items()):
        (args.out / f"{tag}.log").write_text(out)
        if rc != 0 or set(res) != set(RUNS):
            failed.append(f"{tag} (rc {rc}, runs {sorted(res)})")
        else:
            results[tag] = {name: r["logprobs"] for name, r in res.items()}
    print(f"model {args.model}, caches {args.caches}, drivers {', '.join(tags)}, "
          f"{'fresh compiles' if args.fresh_compile else 'compile cache on'}, inductor options {inductor or 'none'}")
    for d in sorted({p.parent for p in args.out.rglob("*") if p.is_file() and p.parent.name in ("inductor", "triton",
                     "inductor_cache", "triton_cache")}):
        print(f"cache files: {sum(1 for _ in d.rglob('*'))} under {d.relative_to(args.out)}")
    if failed:
        print(f"gpu_compile_repro: drivers failed: {', '.join(failed)}; their output: {args.out}/<tag>.log")
        return 3
    lines, anomalies = report(results, args.threshold)
    print("\n".join(lines))
    print(f"anomaly in {anomalies}" if anomalies else "no anomaly: every QDQ-off compiled run within "
          f"{args.threshold} nats (mean) of its eager run")
    return 1 if anomalies else 0


if __name__ == "__main__":
    raise SystemExit(main())
