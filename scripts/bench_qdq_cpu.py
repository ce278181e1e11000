#!/usr/bin/env python3
"""CPU micro-benchmark of the reference QDQ: elements per second for every format.

Usage: python scripts/bench_qdq_cpu.py [--rows 256] [--cols 4096] [--repeat 5] [--dtype bfloat16]
Prints one line per format (median of --repeat timed calls after one warm-up call).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from vllm_qdq.qdq import FORMATS, quantize_dequantize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x = torch.randn(args.rows, args.cols, dtype=getattr(torch, args.dtype))
    n = x.numel()
    print(f"reference QDQ on CPU: {args.rows}x{args.cols} {args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.repeat}")
    print(f"{'format':30s} {'Melem/s':>10s} {'ms/call':>10s}")
    for name in FORMATS:
        quantize_dequantize(x, name)  # warm-up
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            quantize_dequantize(x, name)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        print(f"{name:30s} {n / t / 1e6:10.1f} {t * 1e3:10.2f}")


if __name__ == "__main__":
    main()
