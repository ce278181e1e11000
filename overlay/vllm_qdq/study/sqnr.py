"""SQNR of the issue-18 recipes on activations with outlier channels (the README's table).

``python -m vllm_qdq.study.sqnr [--rows 256] [--width 4096] [--seed 0] [--backend reference]``

Inputs (bf16, built on the spot): the shape of the shared QDQ vectors' outlier rows
(tests/data/qdq-vectors rows 32-47: standard normal values with 10 of 512 channels, ~2%, scaled
by 200, the same channels in every row) at ``--width`` columns: ``width * 10 / 512`` fixed random
outlier channels x200; the same rows without outliers (plain gaussian); and log-normal rows
(random signs, magnitudes ``exp(3 N(0, 1))``: a dynamic range of ~2**25 across the tensor, where
a block scale's range matters: E4M3's ``2**-9 .. 448`` against UE5M3's ``2**-17 .. 114688``).

SQNR = ``10 log10(sum x**2 / sum (x - QDQ(x))**2)`` in float64, over all elements ("all"), and
over the non-outlier channels only ("inliers": where rotations and four-over-six act on the
small values). Stochastic rounding: the mean SQNR over ``--draws`` seeds.
"""

from __future__ import annotations

import argparse
import math

import torch

from ..numerics.qdq import quantize_dequantize

#: (label, format, keyword arguments) in table order.
RECIPES: tuple[tuple[str, str, dict], ...] = (
    ("mxfp4", "mxfp4", {}),
    ("mxfp4 + hadamard32", "mxfp4", {"rotate": {"block": 32}}),
    ("mxfp4 + hadamard128", "mxfp4", {"rotate": {"block": 128}}),
    ("mxfp4 + hadamard128 random", "mxfp4", {"rotate": {"block": 128, "seed": 1}}),
    ("mxfp4 stochastic", "mxfp4", {"rounding": "stochastic"}),
    ("nvfp4", "nvfp4", {}),
    ("nvfp4 four_over_six", "nvfp4", {"scale_rule": "four_over_six"}),
    ("nvfp4 + hadamard16", "nvfp4", {"rotate": {"block": 16}}),
    ("nvfp4 stochastic", "nvfp4", {"rounding": "stochastic"}),
    ("nvfp4_e5m3", "nvfp4_e5m3", {}),
    ("nvfp4_e5m3 four_over_six", "nvfp4_e5m3", {"scale_rule": "four_over_six"}),
)


def inputs(rows: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(outlier rows, plain gaussian rows, log-normal rows, bool mask of the outlier channels), bf16."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, width, generator=g)
    n_out = max(1, round(width * 10 / 512))
    chans = torch.randperm(width, generator=g)[:n_out]
    mask = torch.zeros(width, dtype=torch.bool)
    mask[chans] = True
    outl = base.clone()
    outl[:, mask] *= 200.0
    logn = torch.sign(torch.randn(rows, width, generator=g)) * torch.exp(3.0 * torch.randn(rows, width, generator=g))
    return outl.to(torch.bfloat16), base.to(torch.bfloat16), logn.to(torch.bfloat16), mask


def sqnr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    x64, y64 = x.double(), y.double()
    err = ((x64 - y64) ** 2).sum().item()
    return math.inf if err == 0 else 10 * math.log10((x64**2).sum().item() / err)


def table(rows: int = 256, width: int = 4096, seed: int = 0, draws: int = 4, backend: str = "reference") -> list[dict]:
    """One dict per recipe: label, sqnr_all, sqnr_inliers (outlier rows), sqnr_gaussian, sqnr_lognormal."""
    outl, gauss, logn, mask = inputs(rows, width, seed)
    out = []
    for label, fmt, kw in RECIPES:
        seeds = range(draws) if kw.get("rounding") == "stochastic" else (None,)
        vals = {"all": 0.0, "inliers": 0.0, "gaussian": 0.0, "lognormal": 0.0}
        for s in seeds:
            extra = {"seed": s} if s is not None else {}
            y = quantize_dequantize(outl, fmt, backend=backend, **kw, **extra)
            yg = quantize_dequantize(gauss, fmt, backend=backend, **kw, **extra)
            vals["all"] += sqnr_db(outl, y) / len(seeds)
            vals["inliers"] += sqnr_db(outl[:, ~mask], y[:, ~mask]) / len(seeds)
            vals["gaussian"] += sqnr_db(gauss, yg) / len(seeds)
            yl = quantize_dequantize(logn, fmt, backend=backend, **kw, **extra)
            vals["lognormal"] += sqnr_db(logn, yl) / len(seeds)
        out.append({"label": label, "sqnr_all": vals["all"], "sqnr_inliers": vals["inliers"],
                    "sqnr_gaussian": vals["gaussian"], "sqnr_lognormal": vals["lognormal"]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draws", type=int, default=4, help="seeds averaged for stochastic rounding")
    ap.add_argument("--backend", default="reference")
    a = ap.parse_args(argv)
    print("| recipe | outlier rows: all (dB) | outlier rows: inlier channels (dB) | gaussian rows (dB) "
          "| log-normal rows (dB) |\n|---|---:|---:|---:|---:|")
    for r in table(a.rows, a.width, a.seed, a.draws, a.backend):
        print(f"| {r['label']} | {r['sqnr_all']:.2f} | {r['sqnr_inliers']:.2f} | {r['sqnr_gaussian']:.2f} "
              f"| {r['sqnr_lognormal']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
