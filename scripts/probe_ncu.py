"""Profiler probes (issues 16, 17, 18): the calls whose time the benchmarks cannot explain, each
made once inside an NVTX range named ``probe`` after an untimed warm-up (compile, autotune), so that
Nsight Compute profiles only them::

    ncu --nvtx --nvtx-include "probe/" [--cache-control none --replay-mode application] \\
        --section SpeedOfLight ... python3 scripts/probe_ncu.py {l2,rotation,sage3}

- ``l2`` (issue 16): where a two-pass call's second read of ``x`` is served from. At each size
  (``--rows`` x 4096 bf16) a read of ``x`` twice (``torch.amax``), a copy, then the two-pass recipes (nvfp4
  with its dynamic global scale, FP8 per-tensor) and the one-pass control (nvfp4, amax given). Run it
  with ``--cache-control none --replay-mode application``: the profiler must neither flush the L2
  between the launches nor save and restore memory around a replayed launch, which is the question.
- ``rotation`` (issue 18): MXFP4 at 16384 x 4096 (64M elements) plain, with Hadamard-128, random
  Hadamard-128 and Hadamard-256, and NVFP4 with random Hadamard-128.
- ``sage3`` (issue 17): B1 H24 D128 at ``--seq`` (16384) for mxfp4, nvfp4, mxfp8_s1, and SDPA.

Each call's label is printed before it, in order, so the profiler's kernels can be matched to it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from vllm_qdq.numerics import triton_qdq
from vllm_qdq.numerics.formats import get_format
from vllm_qdq.numerics.rotation import parse_rotation


def _probe(label: str, fn: Callable[[], object]) -> None:
    """``fn`` once untimed (warm-up), then once inside the NVTX range ``probe``."""
    fn()
    torch.cuda.synchronize()
    print(f"probe: {label}", flush=True)
    torch.cuda.nvtx.range_push("probe")
    fn()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_pop()


def _l2(rows: list[int]) -> None:
    for r in rows:
        x = torch.randn(r, 4096, device="cuda", dtype=torch.bfloat16)
        gamax = x.float().abs().amax()

        def reread(x=x) -> None:
            torch.amax(x)
            torch.amax(x)

        _probe(f"{r} x 4096: torch.amax twice (the second read after the first)", reread)
        y = torch.empty_like(x)
        _probe(f"{r} x 4096: y.copy_(x) (the baseline)", lambda x=x, y=y: y.copy_(x))
        for name, g in (("nvfp4", None), ("fp8_e4m3_per_tensor", None), ("nvfp4", gamax)):
            spec = get_format(name)
            _probe(f"{r} x 4096: {name}, amax {'given' if g is not None else 'dynamic'}",
                   lambda spec=spec, g=g, x=x: triton_qdq.qdq(x, spec, "floor", -1, g))


def _rotation() -> None:
    x = torch.randn(16384, 4096, device="cuda", dtype=torch.bfloat16)
    cases = [("mxfp4", None), ("mxfp4", {"block": 128}), ("mxfp4", {"block": 128, "seed": 1}),
             ("mxfp4", {"block": 256}), ("nvfp4", {"block": 128, "seed": 1})]
    for name, rot in cases:
        spec, r = get_format(name), None if rot is None else parse_rotation(rot)
        _probe(f"{name} rotate {rot}", lambda spec=spec, r=r: triton_qdq.qdq(x, spec, "floor", -1, None, rotate=r))


def _sage3(seq: int) -> None:
    from vllm_qdq.sage3.numerics.kernel import sage3_attention

    q, k, v = (torch.randn(1, seq, 24, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    _probe("sdpa", lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt))
    for fmt in ("mxfp4", "nvfp4", "mxfp8_s1"):
        _probe(f"sage3 {fmt}", lambda fmt=fmt: sage3_attention(q, k, v, quant_format=fmt))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("l2", "rotation", "sage3"))
    ap.add_argument("--rows", default="2048,4096", help="l2: rows x 4096 bf16, comma-separated")
    ap.add_argument("--seq", type=int, default=16384, help="sage3: sequence length")
    ap.add_argument("--held-max", type=int, default=0, help="rotation: triton_qdq.ROT_HELD_MAX, ROT_HELD_MAX_MX and ROT_HELD_MAX_NVFP4 for the run")
    args = ap.parse_args()
    if args.what == "l2":
        _l2([int(r) for r in args.rows.split(",")])
    elif args.what == "rotation":
        if args.held_max:
            for n in triton_qdq.HELD_SWITCHES:
                setattr(triton_qdq, n, args.held_max)
        _rotation()
    else:
        _sage3(args.seq)


if __name__ == "__main__":
    main()
