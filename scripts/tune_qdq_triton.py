#!/usr/bin/env python3
"""Sweep the static tile table of the Triton QDQ kernels (``triton_qdq.TILE_CONFIG``) on a GPU.

For each kernel class, one representative format is timed on bf16 tensors of 16M (4096 x 4096)
and 64M (8192 x 8192) elements for every (elements per tile, warps) pair; the table prints the
ratio to a same-size ``y.copy_(x)`` and the best pair by the mean of the two ratios, then a
``TILE_CONFIG`` literal to paste into ``overlay/vllm_qdq/numerics/triton_qdq.py``.

    python scripts/tune_qdq_triton.py [--classes mx,nvfp4] [--tiles 2048,4096,8192,16384] [--warps 4,8,16]
"""

from __future__ import annotations

import argparse
import sys

import torch

#: kernel class -> the format timed for it (``amax`` is timed through a per-tensor recipe).
REPRESENTATIVE = {
    "mx": "mxfp4",
    "nvfp4": "nvfp4",
    "scaled_fp32": "fp8_e4m3_per_group128_ue8m0",
    "scaled_fp64": "fp8_e4m3_per_group128",
    "row_fp32": "fp8_e4m3_per_token",
    "row_fp64": "int8_per_token",
    "amax": "fp8_e4m3_per_tensor",
}
SIZES = ((4096, 4096), (8192, 8192))


def bench_ms(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", default=",".join(REPRESENTATIVE))
    ap.add_argument("--tiles", default="2048,4096,8192,16384")
    ap.add_argument("--warps", default="4,8,16")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    from vllm_qdq.numerics import triton_qdq
    from vllm_qdq.numerics.formats import FORMATS

    tiles = [int(t) for t in args.tiles.split(",")]
    warps = [int(w) for w in args.warps.split(",")]
    xs = {s: torch.randn(*s, device="cuda", dtype=torch.bfloat16) for s in SIZES}
    copy = {}
    for s, x in xs.items():
        y = torch.empty_like(x)
        copy[s] = bench_ms(lambda: y.copy_(x))  # noqa: B023
    print(f"device: {torch.cuda.get_device_name()}; copy ms: " + ", ".join(f"{s[0]}x{s[1]} {copy[s]:.3f}" for s in SIZES))
    base = dict(triton_qdq.TILE_CONFIG)
    best_table = dict(base)
    for cls in [c for c in args.classes.split(",") if c]:
        spec = FORMATS[REPRESENTATIVE[cls]]
        print(f"\n{cls} ({spec.name}): ratio to copy at " + " / ".join(f"{r}x{c}" for r, c in SIZES))
        best = None
        for t in tiles:
            for w in warps:
                triton_qdq.TILE_CONFIG.update(base)
                triton_qdq.TILE_CONFIG[cls] = (t, w)
                try:
                    ratios = [copy[s] / bench_ms(lambda: triton_qdq.qdq(x, spec, "floor", -1, None))  # noqa: B023
                              for s, x in xs.items()]
                except Exception as e:  # e.g. out of registers / shared memory for this pair
                    print(f"  tile {t:6d} warps {w:2d}: failed ({type(e).__name__}: {str(e)[:80]})")
                    continue
                mean = sum(ratios) / len(ratios)
                print(f"  tile {t:6d} warps {w:2d}: " + " / ".join(f"{r:.3f}" for r in ratios) + f"  mean {mean:.3f}",
                      flush=True)
                if best is None or mean > best[0]:
                    best = (mean, t, w)
        if best is not None:
            best_table[cls] = (best[1], best[2])
            print(f"  best: tile {best[1]} warps {best[2]} (mean ratio {best[0]:.3f})")
    triton_qdq.TILE_CONFIG.update(base)
    print("\nTILE_CONFIG = {")
    for k, v in best_table.items():
        print(f'    "{k}": {v},')
    print("}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
