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
