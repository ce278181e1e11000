#!/usr/bin/env python3
"""The Python cost of one Triton QDQ call before its kernels: the kernels stubbed out, CPU only.

Runs ``vllm_qdq.numerics.triton_qdq.qdq`` under ``TRITON_INTERPRET=1`` with the three kernels
replaced by no-ops, so what is timed is the call's own Python (checks, launch plan, allocation),
not Triton's launcher nor any kernel. Best of 5 rounds of ``--calls`` calls, microseconds per call.
Two columns: ``triton_qdq.qdq`` itself, and the ``torch.ops.vllm_qdq.qdq`` op around it (the op's
dispatch, ``quantize_dequantize``'s checks and the op kernel's layout check: what the plugin and
the ``qdq`` method call). Under the interpreter the eager fast path is off, so this is the first
(recording) call's Python, the upper bound of a replayed one.

    TRITON_INTERPRET=1 python scripts/bench_qdq_prologue.py [--rows 16] [--k 4096] [--calls 2000]
"""

from __future__ import annotations

import argparse
import sys
import timeit


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *a, **k: None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--formats", default="int8_per_token,fp8_e4m3_per_token,mxfp4,mxfp6_e2m3,nvfp4,fp8_e4m3_per_tensor")
    args = ap.parse_args()
    import torch
    from vllm_qdq.numerics import triton_qdq as tq
    from vllm_qdq.numerics.formats import FORMATS

    if not tq.interpreting():
        print("run with TRITON_INTERPRET=1 (the kernels are stubbed; a CPU tensor stands in)", file=sys.stderr)
        return 2
    unknown = [n for n in args.formats.split(",") if n not in FORMATS]
    if unknown:
        print(f"--formats: unknown {unknown}; accepted: {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    import vllm_qdq.activation.ops  # noqa: F401  (registers torch.ops.vllm_qdq.qdq)
    from vllm_qdq.numerics import qdq as api

    tq._qdq_block_kernel = tq._qdq_row_kernel = tq._amax_kernel = _NoLaunch()
    api.set_default_backend("triton")  # the op's path on a GPU: quantize_dequantize -> triton_qdq.qdq
    x = torch.randn(args.rows, args.k, dtype=torch.bfloat16)
    print(f"{'format':28s} {'triton_qdq.qdq':>15s} {'torch.ops.vllm_qdq.qdq':>23s}   (us per call, Python only, "
          "kernels stubbed; the op: what the plugin and the qdq method call)")
    for name in args.formats.split(","):
        spec = FORMATS[name]
        fns = (lambda: tq.qdq(x, spec, "floor", -1, None),  # noqa: B023
               lambda: torch.ops.vllm_qdq.qdq(x, name, "floor", -1, None, None))  # noqa: B023
        us = []
        for fn in fns:
            fn()
            us.append(min(timeit.repeat(fn, number=args.calls, repeat=5)) / args.calls * 1e6)
        print(f"{name:28s} {us[0]:15.1f} {us[1]:23.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
