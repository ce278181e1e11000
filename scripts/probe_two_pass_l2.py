"""Probe (issue 16): where a two-pass QDQ call's second read of ``x`` is served from.

Runs the two-pass recipes (nvfp4 with its dynamic global scale, FP8 per-tensor) and, as the
one-pass control, nvfp4 with a given amax, eagerly, ``--reps`` times each at ``--rows`` x 4096
bf16, with an NVTX-free plain loop, so that a profiler run over it can report each kernel's L2 hit
rate and DRAM bytes::

    ncu --cache-control none --metrics lts__t_sector_hit_rate.pct,dram__bytes_read.sum,\
dram__bytes_write.sum python3 scripts/probe_two_pass_l2.py

(``--cache-control none``: the profiler must not flush the L2 between the amax pass and the QDQ
pass, which is the question). Without a profiler it prints each call's time between CUDA events.
"""

from __future__ import annotations

import argparse

import torch
from vllm_qdq.numerics import triton_qdq
from vllm_qdq.numerics.formats import get_format


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=4096, help="rows x 4096 bf16 (4096: 16M elements, 32 MB)")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    x = torch.randn(args.rows, 4096, device="cuda", dtype=torch.bfloat16)
    gamax = x.float().abs().amax()
    calls = [("nvfp4", "floor", None), ("fp8_e4m3_per_tensor", "floor", None), ("nvfp4", "floor", gamax)]
    for name, rule, g in calls:
        spec = get_format(name)
        for _ in range(args.reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            triton_qdq.qdq(x, spec, rule, -1, g)
            b.record()
            torch.cuda.synchronize()
            print(f"{name:22s} amax {'given' if g is not None else 'dynamic':7s} {a.elapsed_time(b) * 1e3:8.1f} us")


if __name__ == "__main__":
    main()
