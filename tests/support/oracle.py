"""An independent QDQ oracle: numpy float64 math and ml_dtypes element casts.

Written apart from ``vllm_qdq.numerics.reference`` on purpose: no shared code, no torch rounding.
Scale exponents come from ``math.frexp`` on Python floats, element rounding from ml_dtypes'
round-to-nearest-even casts into the real element dtypes (after clamping, since ml_dtypes turns
out-of-range values into NaN/Inf instead of saturating). It is slow and only for tests.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

ELEM_DTYPES = {
    "e2m1": ml_dtypes.float4_e2m1fn,
    "e2m3": ml_dtypes.float6_e2m3fn,
    "e3m2": ml_dtypes.float6_e3m2fn,
    "e4m3": ml_dtypes.float8_e4m3fn,
    "e5m2": ml_dtypes.float8_e5m2,
}
# (element, emax, max normal, significand bits after the point) per MX format
MX = {
    "mxfp4": ("e2m1", 2, 6.0, 1),
    "mxfp6_e2m3": ("e2m3", 2, 7.5, 3),
    "mxfp6_e3m2": ("e3m2", 4, 28.0, 2),
    "mxfp8_e4m3": ("e4m3", 8, 448.0, 3),
    "mxfp8_e5m2": ("e5m2", 15, 57344.0, 2),
    "mxint8": ("int", 0, 127 / 64, 6),
}


def _elem_round(v: np.ndarray, elem: str, maxv: float) -> np.ndarray:
    v = np.clip(v, -maxv, maxv)
    if elem == "int":
        return np.round(v * 64.0) / 64.0  # numpy rounds half to even
    return v.astype(ELEM_DTYPES[elem]).astype(np.float64)


def _mx_exp(amax: float, emax: int, maxv: float, mbits: int, rule: str) -> int:
    if amax == 0.0:
        return -127
    m, ex = math.frexp(amax)  # amax = m * 2**ex, 0.5 <= m < 1
    floor_l2 = ex - 1
    ceil_l2 = floor_l2 if m == 0.5 else ex
    if rule == "floor":
        e = floor_l2 - emax
    elif rule == "ceil":
        e = ceil_l2 - emax
    elif rule == "even":
        sig = 2 * m  # in [1, 2)
        step = 2.0**-mbits
        rounded = round(sig / step) * step  # Python round: half to even
        e = floor_l2 + (1 if rounded >= 2.0 else 0) - emax
    elif rule == "rceil":
        q = float(np.float32(amax) / np.float32(maxv))
        if q == 0.0:  # the fp32 quotient underflowed: the smallest scale
            return -127
        mq, exq = math.frexp(q)
        e = exq - 1 if mq == 0.5 else exq
    else:
        raise AssertionError(rule)
    return max(-127, min(127, e))


def _out(y: np.ndarray, dtype: str) -> np.ndarray:
    """Round float64 results to the output dtype (via fp32, as torch's cast does)."""
    y32 = y.astype(np.float32)
    if dtype == "bfloat16":
        return y32.astype(ml_dtypes.bfloat16).astype(np.float64)
    if dtype == "float16":
        return y32.astype(np.float16).astype(np.float64)
    return y32.astype(np.float64)


def _blocks(x: np.ndarray, block: int) -> tuple[np.ndarray, int]:
    k = x.shape[-1]
    pad = (-k) % block
    xp = np.concatenate([x, np.zeros((x.shape[0], pad))], axis=1) if pad else x
    return xp.reshape(x.shape[0], -1, block), k


def oracle_mx(x: np.ndarray, fmt: str, rule: str, dtype: str, block: int = 32) -> np.ndarray:
    """MX QDQ of 2-D float64 ``x`` (rows, K), blocks along K."""
    elem, emax, maxv, mbits = MX[fmt]
    g, k = _blocks(x, block)
    y = np.empty_like(g)
    for r in range(g.shape[0]):
        for b in range(g.shape[1]):
            blk = g[r, b]
            if not np.isfinite(blk).all():
                y[r, b] = np.nan
                continue
            e = _mx_exp(float(np.abs(blk).max()), emax, maxv, mbits, rule)
            y[r, b] = _elem_round(blk / 2.0**e, elem, maxv) * 2.0**e
    return _out(y.reshape(x.shape[0], -1)[:, :k], dtype)


def oracle_scaled(x: np.ndarray, fmt: str, dtype: str) -> np.ndarray:
    """vLLM-style dynamic FP8 / INT8 QDQ of 2-D float64 ``x``."""
    is_int = fmt.startswith("int8")
    qmax = 127.0 if is_int else 448.0
    if fmt == "fp8_e4m3_per_tensor":
        groups = x.reshape(1, 1, -1)
    elif fmt.startswith("fp8_e4m3_per_group128"):
        groups, _k = _blocks(x, 128)
    else:
        groups = x.reshape(x.shape[0], 1, -1)
    y = np.empty_like(groups)
    for r in range(groups.shape[0]):
        for b in range(groups.shape[1]):
            grp = groups[r, b]
            if not np.isfinite(grp).all():
                y[r, b] = np.nan
                continue
            amax = float(np.abs(grp).max())
            if fmt == "fp8_e4m3_per_token":  # vLLM's fp32 kernel
                s = max(np.float32(amax) / np.float32(qmax), np.float32(1.0 / (448.0 * 512.0)))
                if s == 0:
                    y[r, b] = 0.0 * grp
                    continue
                v = np.clip(grp.astype(np.float32) / s, -qmax, qmax).astype(np.float64)
                q = v.astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
                y[r, b] = (q * s).astype(np.float64)
                continue
            if fmt.startswith("fp8_e4m3_per_group128"):
                amax = max(amax, 1e-10)
            s = amax / qmax
            if fmt.endswith("ue8m0"):
                s = 2.0 ** math.ceil(math.log2(s))
            if s == 0:
                y[r, b] = 0.0 * grp
                continue
            v = np.clip(grp / s, -qmax, qmax)
            if is_int:
                q = np.round(v)
            else:
                q = v.astype(np.float32).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
            y[r, b] = q * s
    if fmt.startswith("fp8_e4m3_per_group128"):
        return _out(y.reshape(x.shape[0], -1)[:, : x.shape[1]], dtype)
    return _out(y.reshape(x.shape), dtype)


def oracle_nvfp4_exact(x: np.ndarray, dtype: str, global_amax: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """NVFP4 in exact float64 math; also returns a mask of elements at an E2M1 rounding tie.

    The package fixes vLLM's fp32 operation order instead, so the two agree except near ties
    (an element at an E2M1 tie, or a whole block whose E4M3 scale is at a tie: within one E2M1
    step) and in the last bit of the final rounding.
    """
    fin = np.where(np.isfinite(x), np.abs(x), 0.0)
    gamax = float(fin.max()) if global_amax is None else float(global_amax)
    g, k = _blocks(x, 16)
    y = np.zeros_like(g)
    tie = np.zeros(g.shape, dtype=bool)
    gs = 2688.0 / gamax if gamax else 0.0
    mids = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    for r in range(g.shape[0]):
        for b in range(g.shape[1]):
            blk = g[r, b]
            if not np.isfinite(blk).all():
                y[r, b] = np.nan
                continue
            if gs == 0:
                continue
            raw = min(gs * np.abs(blk).max() / 6.0, 448.0)
            s = float(np.array(raw).astype(ml_dtypes.float8_e4m3fn))
            # the block scale itself at an E4M3 tie: fp32 order may round it the other way
            lo, hi = (float(np.array(raw * f).astype(ml_dtypes.float8_e4m3fn)) for f in (1 - 1e-6, 1 + 1e-6))
            if s == 0:
                continue
            v = np.clip(blk * gs / s, -6.0, 6.0)
            near = np.min(np.abs(np.abs(v)[:, None] - mids[None, :]), axis=1) <= 1e-5 * np.maximum(np.abs(v), 1)
            tie[r, b] = near | (lo != hi)
            y[r, b] = _elem_round(v, "e2m1", 6.0) * (s / gs)
    return _out(y.reshape(x.shape[0], -1)[:, :k], dtype), tie.reshape(x.shape[0], -1)[:, :k]


# ============================================================================ issue 18 recipes
# Rotation, stochastic rounding, NVFP4 "four over six", nvfp4_e5m3. Written apart from the package:
# element and scale rounding by exhaustive search over the grid with exact Fractions (grids built
# from the bit definitions), Philox with Python integers, fp32 arithmetic with numpy float32
# scalars in the operation order the package's contract fixes (vllm_qdq.numerics.reference).

from fractions import Fraction  # noqa: E402


def fp_grid(ebits: int, mbits: int, bias: int, top_code: int) -> list[Fraction]:
    """Non-negative values of an ebits/mbits/bias float, codes 0..top_code, ascending (code order)."""
    out = []
    for code in range(top_code + 1):
        e, m = code >> mbits, code & ((1 << mbits) - 1)
        if e == 0:
            out.append(Fraction(m, 1 << mbits) * Fraction(2) ** (1 - bias))
        else:
            out.append((1 + Fraction(m, 1 << mbits)) * Fraction(2) ** (e - bias))
    return out


E2M1_GRID = fp_grid(2, 1, 1, 7)  # 0 .. 6
E4M3_GRID = fp_grid(4, 3, 7, 126)  # 0 .. 448 (0x7F is NaN)
UE5M3_GRID = fp_grid(5, 3, 15, 254)  # 0 .. 114688 (0xFF is NaN, no sign bit)


def grid_nearest(v: float, grid: list[Fraction]) -> float:
    """Nearest grid value to |v| (exact), ties to the even code, saturating; sign of v kept."""
    a = Fraction(abs(v))
    best = min(range(len(grid)), key=lambda i: (abs(grid[i] - a), i & 1))
    return math.copysign(float(grid[best]), v)


def grid_stochastic(v: float, grid: list[Fraction], u: Fraction) -> float:
    """Stochastic rounding of |v| between its two grid neighbours: up iff u < (a - lo) / (hi - lo)."""
    a = min(Fraction(abs(v)), grid[-1])
    lo = max(g for g in grid if g <= a)
    hi = min(g for g in grid if g >= a)
    r = lo if lo == hi or not u < (a - lo) / (hi - lo) else hi
    return math.copysign(float(r), v)


def philox_u32(seed: int, i: int) -> int:
    """Philox-4x32-10 (Salmon et al. 2011; Triton's constants), counter (i lo, i hi, 0, 0), key (seed lo, hi)."""
    m = 0xFFFFFFFF
    c0, c1, c2, c3 = i & m, (i >> 32) & m, 0, 0
    k0, k1 = seed & m, (seed >> 32) & m
    for _ in range(10):
        pb, pa = 0xCD9E8D57 * c2, 0xD2511F53 * c0
        c0, c1, c2, c3 = ((pb >> 32) ^ c1 ^ k0) & m, pb & m, ((pa >> 32) ^ c3 ^ k1) & m, pa & m
        k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m
    return c0


def philox_fraction(seed: int, i: int) -> Fraction:
    return Fraction(philox_u32(seed, i) >> 8, 1 << 24)


def _bf16_out(y32: np.ndarray) -> np.ndarray:
    return y32.astype(np.float32).astype(ml_dtypes.bfloat16)


def hadamard_f32(v: np.ndarray, block: int, signs: np.ndarray | None, inverse: bool) -> np.ndarray:
    """R v (or R^T v) of float32 rows in blocks: index-pair butterflies, one fp32(1/sqrt(b)) product."""
    v = v.astype(np.float32).copy()
    if signs is not None and not inverse:
        v = (v * signs.astype(np.float32)).astype(np.float32)
    h = 1
    while h < block:
        for j in range(0, v.shape[1], 2 * h):
            a = v[:, j : j + h].copy()
            b = v[:, j + h : j + 2 * h].copy()
            v[:, j : j + h] = a + b
            v[:, j + h : j + 2 * h] = a - b
        h *= 2
    v = (v * np.float32(1.0 / math.sqrt(block))).astype(np.float32)
    if signs is not None and inverse:
        v = (v * signs.astype(np.float32)).astype(np.float32)
    return v


def oracle_mx4(x32: np.ndarray, rounding: str = "nearest", seed: int = 0, block: int = 32) -> np.ndarray:
    """MXFP4 (floor rule) of float32 rows, output float32 (exact); stochastic draws indexed row * K + col."""
    rows, k = x32.shape
    y = np.zeros_like(x32, dtype=np.float32)
    for r in range(rows):
        for b0 in range(0, k, block):
            blk = x32[r, b0 : b0 + block].astype(np.float64)
            if not np.isfinite(blk).all():
                y[r, b0 : b0 + block] = np.nan
                continue
            e = _mx_exp(float(np.abs(blk).max()), 2, 6.0, 1, "floor")
            for c in range(blk.shape[0]):
                v = float(blk[c]) / 2.0**e
                if rounding == "nearest":
                    q = grid_nearest(v, E2M1_GRID)
                else:
                    q = grid_stochastic(v, E2M1_GRID, philox_fraction(seed, r * k + b0 + c))
                y[r, b0 + c] = q * 2.0**e
    return y


def _tree16(e: np.ndarray) -> np.float32:
    e = e.astype(np.float32)
    while e.shape[0] > 1:
        e = (e[0::2] + e[1::2]).astype(np.float32)
    return e[0]


def oracle_nvfp4_family(
    x32: np.ndarray, scale: str = "e4m3", rule: str = "floor", rounding: str = "nearest", seed: int = 0
) -> np.ndarray:
    """NVFP4 / nvfp4_e5m3 of float32 rows (dynamic tensor amax), fp32 operation order, output float32."""
    grid = E4M3_GRID if scale == "e4m3" else UE5M3_GRID
    smax = np.float32(float(grid[-1]))
    rows, k = x32.shape
    fin = np.where(np.isfinite(x32), np.abs(x32), 0).astype(np.float32)
    gamax = np.float32(fin.max())
    gs = np.float32(1.0) if gamax == 0 else np.float32(np.float32(smax * np.float32(6.0)) / gamax)
    inv_gs = np.float32(np.float32(1.0) / gs)
    y = np.zeros_like(x32, dtype=np.float32)
    for r in range(rows):
        for b0 in range(0, k, 16):
            blk = x32[r, b0 : b0 + 16]
            if not np.isfinite(blk).all():
                y[r, b0 : b0 + 16] = np.nan
                continue
            amax = np.float32(np.abs(blk).max())

            def cand(mult: np.float32, blk=blk, amax=amax, r=r, b0=b0):
                raw = np.float32(gs * np.float32(amax * mult))
                s = np.float32(grid_nearest(float(min(raw, smax)), grid))
                osc = np.float32(np.float32(1.0) / np.float32(s * inv_gs)) if s != 0 else np.float32(0.0)
                mul = np.float32(s / gs)
                out = np.zeros(16, dtype=np.float32)
                for c in range(16):
                    v = float(np.clip(np.float32(blk[c] * osc), np.float32(-6), np.float32(6)))
                    if rounding == "nearest":
                        q = grid_nearest(v, E2M1_GRID)
                    else:
                        q = grid_stochastic(v, E2M1_GRID, philox_fraction(seed, r * k + b0 + c))
                    out[c] = np.float32(np.float32(q) * mul)
                return out

            y6 = cand(np.float32(1.0 / 6.0))
            if rule == "four_over_six":
                y4 = cand(np.float32(0.25))
                d6 = (y6 - blk).astype(np.float32)
                d4 = (y4 - blk).astype(np.float32)
                if _tree16((d4 * d4).astype(np.float32)) < _tree16((d6 * d6).astype(np.float32)):
                    y6 = y4
            y[r, b0 : b0 + 16] = y6
    return y


def oracle_recipe(x_bf16: np.ndarray, recipe: dict, signs: np.ndarray | None = None) -> np.ndarray:
    """One recipe of the issue-18 vectors on bf16 rows (ml_dtypes.bfloat16 array) -> bf16 array.

    ``recipe``: fmt (mxfp4 | nvfp4 | nvfp4_e5m3), scale_rule, rounding, seed, rotate (block, pad)
    with ``signs`` the random-Hadamard sign vector (or None).
    """
    x = x_bf16.astype(np.float32)
    rows, k = x.shape
    rot = recipe.get("rotate")
    kp = k
    if rot:
        b = rot["block"]
        kp = -(-k // b) * b
        if kp != k:
            x = np.concatenate([x, np.zeros((rows, kp - k), np.float32)], axis=1)
        x = hadamard_f32(x, b, signs, inverse=False)
    fmt = recipe["fmt"]
    rounding, seed = recipe.get("rounding", "nearest"), recipe.get("seed") or 0
    if fmt == "mxfp4":
        y = oracle_mx4(x, rounding, seed)
    else:
        scale = "e4m3" if fmt == "nvfp4" else "ue5m3"
        y = oracle_nvfp4_family(x, scale, recipe.get("scale_rule", "floor"), rounding, seed)
    if rot:
        y = hadamard_f32(y, rot["block"], signs, inverse=True)[:, :k]
    return _bf16_out(y)
