"""Element pairs for the float64 recipes' fp32 form (``triton_qdq._scaled_qdq_narrow``): a 16-bit
value and its group's amax, over whole binades; and group amaxes for the scale tests (the CPU
interpreter and GPU tests)."""

from __future__ import annotations

import torch


def narrow_pairs(dtype: torch.dtype, a_ranges, rel: float, a_pick=None):
    """``(x, amax)`` fp32 pairs: every ``amax`` of ``dtype`` in ``a_ranges`` (``a_pick`` may thin
    them), each with every ``dtype`` value ``x`` of ``amax * rel <= |x| <= amax``, both signs, and
    signed zeros."""
    v = torch.arange(0, 1 << 15, dtype=torch.int32).to(torch.int16).view(dtype).double()
    v = v[torch.isfinite(v)]
    a_all = torch.cat([v[(v >= lo) & (v < hi)] for lo, hi in a_ranges])
    if a_pick is not None:
        a_all = a_pick(a_all)
    xs, amaxes = [], []
    for a in a_all.tolist():
        x = v[(v <= a) & (v >= a * rel)]
        x = torch.cat([x, -x, torch.tensor([0.0, -0.0], dtype=torch.float64)])
        xs.append(x)
        amaxes.append(torch.full_like(x, a))
    return torch.cat(xs).float(), torch.cat(amaxes).float()


def _significand(a: torch.Tensor) -> torch.Tensor:
    """fp16 values' 11-bit integer significands (normal values; subnormals scaled up alike)."""
    m, _ = torch.frexp(a)
    return (m * 2048).long()


def fp16_amax_sample(a: torch.Tensor) -> torch.Tensor:
    """fp16 maxima whose significand a factor of 7 or 127 divides (448 = 7 * 64 and 127: the
    exact-quotient cases), and 32 others."""
    m = _significand(a)
    special = (m % 7 == 0) | (m % 127 == 0)
    g = torch.Generator().manual_seed(11)
    rest = a[~special][torch.randperm(int((~special).sum()), generator=g)[:32]]
    return torch.cat([a[special], rest])


def fp16_amax_thin(a: torch.Tensor) -> torch.Tensor:
    """fp16 maxima whose significand 7 or 127 divides, and every 16th other one: every binade
    thinned (where fp16 outputs turn subnormal, scaling by a power of two changes the roundings,
    so each binade is its own case)."""
    m = _significand(a)
    return a[(m % 7 == 0) | (m % 127 == 0) | (m % 16 == 0)]


def amax_values() -> torch.Tensor:
    """Non-negative finite fp32 amaxes: every bf16 and fp16 value, and for every fp32 exponent the
    significands 0, 1, the last, 2048 around 1.75 (0x600000) and 2048 random ones."""
    bits = torch.arange(0, 1 << 15, dtype=torch.int32).to(torch.int16)
    halves = torch.cat([bits.view(torch.bfloat16).float(), bits.view(torch.float16).float()])
    g = torch.Generator().manual_seed(12)
    e = torch.arange(0, 255, dtype=torch.int64)[:, None] << 23
    mant = torch.cat([torch.tensor([0, 1, 0x7FFFFF]), torch.arange(0x600000 - 1024, 0x600000 + 1024),
                      torch.randint(0, 1 << 23, (2048,), generator=g)])
    f32 = (e + mant[None, :]).flatten().to(torch.int32).view(torch.float32)
    a = torch.cat([halves, f32])
    return a[torch.isfinite(a)]


def scale_amaxes() -> torch.Tensor:
    """:func:`amax_values`, every 8th fp32 significand of [1, 2), [2**-8, 2**-7) and [2**20,
    2**21) (above FP8 per-token's scale floor: the quotient's double rounding), and 0."""
    sig = torch.arange(0x3F800000, 0x40000000, 8, dtype=torch.int32).view(torch.float32)
    return torch.cat([amax_values(), sig, sig * 2.0**-8, sig * 2.0**20, torch.zeros(1)])
