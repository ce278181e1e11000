#!/usr/bin/env python3
"""Sweep the static tile table of the Triton QDQ kernels (``triton_qdq.TILE_CONFIG``) on a GPU.

For each kernel class, one representative format is timed on bf16 tensors of 16M (4096 x 4096)
and 64M (8192 x 8192) elements for every (elements per tile, warps) pair, one call replayed from a
CUDA graph (:func:`vllm_qdq.study.gpu_timing.kernel_ms`: the kernels without the host's launch
path); the table prints the ratio to a same-size ``y.copy_(x)`` timed the same way and the best pair by the mean of the two ratios, then a
table of the best pairs for this GPU's architecture (``sm_XY``). The sweep starts from the table
in force for that architecture (``tile_configs.json`` over the defaults). ``--write`` puts the
best table into ``overlay/vllm_qdq/numerics/tile_configs.json`` under the architecture (the file
the kernels read, :func:`vllm_qdq.numerics.triton_qdq.use_tiles_for`); ``--json`` saves every
timing (commit it under ``results/``).

    python scripts/tune_qdq_triton.py [--classes mx,nvfp4] [--tiles 2048,4096,8192,16384] [--warps 4,8,16]
                                      [--write [PATH]] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from vllm_qdq.study.gpu_timing import kernel_ms

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", default=",".join(REPRESENTATIVE))
    ap.add_argument("--tiles", default="2048,4096,8192,16384")
    ap.add_argument("--warps", default="4,8,16")
    ap.add_argument("--write", nargs="?", const=Path("overlay/vllm_qdq/numerics/tile_configs.json"), type=Path,
                    default=None, help="store the best table under this GPU's architecture in PATH "
                    "(default PATH: the checkout's tile_configs.json)")
    ap.add_argument("--json", type=Path, default=None, help="write every timing here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    from vllm_qdq.numerics import triton_qdq
    from vllm_qdq.numerics.formats import FORMATS

    unknown = [c for c in args.classes.split(",") if c and c not in REPRESENTATIVE]
    if unknown:
        ap.error(f"--classes: unknown {unknown}; accepted: {', '.join(REPRESENTATIVE)}")
    if args.write is not None and not args.write.is_file():
        ap.error(f"--write {args.write}: no such file (run from the checkout, or name the file)")
    arch = triton_qdq.arch_key()
    in_force = triton_qdq.use_tiles_for()
    tiles = [int(t) for t in args.tiles.split(",")]
    warps = [int(w) for w in args.warps.split(",")]
    xs = {s: torch.randn(*s, device="cuda", dtype=torch.bfloat16) for s in SIZES}
    copy = {}
    for s, x in xs.items():
        y = torch.empty_like(x)
        copy[s] = kernel_ms(lambda: y.copy_(x))  # noqa: B023
    print(f"device: {torch.cuda.get_device_name()} ({arch}; starting table: "
          f"{'tile_configs.json ' + in_force if in_force else 'the defaults'}); copy ms: " + ", ".join(f"{s[0]}x{s[1]} {copy[s]:.3f}" for s in SIZES))
    base = dict(triton_qdq.TILE_CONFIG)
    best_table = dict(base)
    raw: list[dict] = []
    for cls in [c for c in args.classes.split(",") if c]:
        spec = FORMATS[REPRESENTATIVE[cls]]
        print(f"\n{cls} ({spec.name}): ratio to copy at " + " / ".join(f"{r}x{c}" for r, c in SIZES))
        best = None
        for t in tiles:
            for w in warps:
                triton_qdq.TILE_CONFIG.update(base)
                triton_qdq.TILE_CONFIG[cls] = (t, w)
                try:
                    ratios = [copy[s] / kernel_ms(lambda: triton_qdq.qdq(x, spec, "floor", -1, None))  # noqa: B023
                              for s, x in xs.items()]
                except Exception as e:  # e.g. out of registers / shared memory for this pair
                    print(f"  tile {t:6d} warps {w:2d}: failed ({type(e).__name__}: {str(e)[:80]})")
                    continue
                mean = sum(ratios) / len(ratios)
                raw.append({"class": cls, "format": spec.name, "tile": t, "warps": w,
                            "ratio_to_copy": dict(zip([f"{r}x{c}" for r, c in SIZES], ratios, strict=True))})
                print(f"  tile {t:6d} warps {w:2d}: " + " / ".join(f"{r:.3f}" for r in ratios) + f"  mean {mean:.3f}",
                      flush=True)
                if best is None or mean > best[0]:
                    best = (mean, t, w)
        if best is not None:
            best_table[cls] = (best[1], best[2])
            print(f"  best: tile {best[1]} warps {best[2]} (mean ratio {best[0]:.3f})")
    triton_qdq.TILE_CONFIG.update(base)
    print(f"\n{arch}: " + json.dumps({k: list(v) for k, v in best_table.items()}))
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "arch": arch,
                                         "copy_ms": {f"{r}x{c}": copy[(r, c)] for r, c in SIZES},
                                         "sweep": raw, "best": best_table}, indent=1))
    if args.write is not None:
        data = json.loads(args.write.read_text())
        data[arch] = {k: list(v) for k, v in best_table.items()}
        args.write.write_text(json.dumps(data, indent=1) + "\n")
        triton_qdq.tile_configs(args.write)  # what the kernels will read back
        print(f"wrote {arch} into {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
