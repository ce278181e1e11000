"""Pure-torch reference QDQ: the numeric contract every kernel in this package must meet.

No Triton here. Everything reads :mod:`vllm_qdq.numerics.formats`. Works on any device torch runs on.

Numeric contract (all recipes):

* Input: a bf16 / fp16 / fp32 tensor; the scaling groups run along ``axis``. A row whose
  length is not a multiple of the block is padded with zeros, which never changes a scale.
* Element rounding: round half to even on the element grid (subnormals included); values
  beyond the largest finite element saturate to it (E5M2 too: QDQ never produces Inf).
* Output: the dequantized value ``element * scale``, rounded once (RNE) to the input dtype.
* NaN or +-Inf anywhere in a scaling group makes every element of that group NaN. For NVFP4
  the dynamic per-tensor amax is taken over finite values only, so a NaN stays in its block.
* All-zero group: zeros, never NaN. QDQ keeps the sign of every zero. Integer codes
  (``mxint8``, ``int8_*``) have one zero, so ``dequantize(quantize(x))`` returns +0 where
  ``quantize_dequantize(x)`` returns -0 (equal values, different sign bit).
* Subnormal inputs are used at their exact value.

MX recipes (OCP MX v1.0): block of ``B`` (32) elements, shared scale ``2**e`` stored as E8M0
(biased ``e + 127``; 255 = NaN), ``e`` clamped to [-127, 127]. With ``amax`` the block's
largest magnitude, ``emax`` the element's largest normal exponent and ``max_normal`` its
largest value, the scale rules are:

* ``floor``  ``e = floor(log2(amax)) - emax``  (OCP section 6.3)
* ``ceil``   ``e = ceil(log2(amax)) - emax``
* ``even``   ``e = floor(log2(amax')) - emax``, ``amax'`` = amax rounded to ``mbits + 1``
  significant bits, ties to even (Quark's and vLLM's emulation rule)
* ``rceil``  ``e = ceil(log2(amax / max_normal))``, the quotient taken in fp32 (NVIDIA
  hardware and cuBLAS)

MX arithmetic is carried out in float64, where every step is exact, so the result equals the
exact math and equals an fp32 evaluation of the same steps.

NVFP4 (operation order fixed to vLLM's fp32 kernels): ``gs = 2688 / amax_tensor`` (fp32;
2688 = 448 * 6), per 16-block ``s = e4m3(min(gs * (amax_block * fp32(1/6)), 448))``,
``inv = 1 / (s * (1 / gs))`` (0 when ``s == 0``), ``q = e2m1(clamp(x * inv, -6, 6))``, and
``y = q * (s / gs)``, each operation rounded to fp32. A tensor whose amax is 0 gives zeros.

SCALED recipes (FP8 / INT8, vLLM's dynamic activation quantization): ``s = amax / qmax`` per
group (``qmax`` = 448 or 127), floored as the recipe says, optionally rounded up to a power of
two; ``v = clamp(x / s, -qmax, qmax)``; ``q = rne(v)``; ``y = q * s``. Two operation orders,
fixed per recipe because exact ties (``x / s`` landing on a rounding midpoint) depend on them:

* ``fp32_math`` (``fp8_e4m3_per_token``): ``s``, ``x / s`` and ``q * s`` each rounded to fp32,
  as vLLM's per-token FP8 CUDA kernel does.
* otherwise: ``s`` and ``x / s`` in float64; for FP8 elements the quotient is held in fp32
  before the element cast (as an fp32 register holds it), INT8 rounds the float64 quotient.

A group whose scale is 0 gives zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch

from .formats import ELEMENTS, ElemSpec, Family, FormatSpec, Granularity

__all__ = [
    "SUPPORTED_DTYPES",
    "QuantizedTensor",
    "dequantize_reference",
    "from_rows",
    "mx_scale_exponent",
    "qdq_reference",
    "quantize_reference",
    "round_to_elem",
    "to_rows",
]

#: Input dtypes every QDQ entry point accepts.
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)

E8M0_BIAS = 127
E8M0_NAN = 255
NVFP4_GLOBAL_NUM = 448.0 * 6.0
_E2M1 = ELEMENTS["e2m1"]


@dataclass
class QuantizedTensor:
    """Codes and scales of a quantized tensor, laid out as rows along the scaling axis.

    Attributes:
        spec: the recipe.
        scale_rule: the MX scale rule used (``"floor"`` for other recipes).
        codes: ``[rows, K_padded]``; uint8 bit patterns for floating-point elements
            (E2M1/E2M3/E3M2 in the low bits, sign in bit ``bits-1``), int8 for integer ones.
        scales: MX: uint8 biased E8M0 ``[rows, K_padded / B]`` (255 = NaN block);
            NVFP4: float8_e4m3fn ``[rows, K_padded / 16]``; SCALED: float64 ``[rows, groups]``
            (``[1, 1]`` per tensor).
        global_scale: NVFP4 only: the fp32 per-tensor scale ``2688 / amax`` (0-d tensor).
        nan_groups: bool ``[rows, groups]``: groups that held NaN/Inf and dequantize to NaN.
        shape: the original shape; ``axis``: the scaling axis (non-negative);
        dtype: the original dtype; ``k``: the unpadded length along the axis.
    """

    spec: FormatSpec
    scale_rule: str
    codes: torch.Tensor
    scales: torch.Tensor
    global_scale: torch.Tensor | None
    nan_groups: torch.Tensor
    shape: torch.Size
    axis: int
    dtype: torch.dtype
    k: int


# ----------------------------------------------------------------------------- layout


def to_rows(x: torch.Tensor, axis: int, block: int | None) -> tuple[torch.Tensor, int]:
    """Move ``axis`` last, flatten to ``[rows, K]`` and zero-pad K to a multiple of ``block``.

    Returns the 2-D view/copy and the unpadded K.
    """
    xt = x.movedim(axis, -1)
    k = xt.shape[-1]
    x2 = xt.reshape(-1, k)
    if block and k % block:
        x2 = torch.nn.functional.pad(x2, (0, block - k % block))
    return x2, k


def from_rows(y2: torch.Tensor, shape: torch.Size, axis: int, k: int) -> torch.Tensor:
    """Inverse of :func:`to_rows`: drop padding and restore ``shape`` with ``axis`` in place."""
    moved = list(shape)
    moved.append(moved.pop(axis))
    return y2[:, :k].reshape(moved).movedim(-1, axis)


# ----------------------------------------------------------------------------- helpers


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """Exact float64 ``2**e`` for an integer tensor ``e`` in [-1022, 1023]."""
    return ((e.to(torch.int64) + 1023) << 52).view(torch.float64)


def _floor_log2(a: torch.Tensor) -> torch.Tensor:
    """``floor(log2(a))`` for positive finite ``a`` (exact, subnormals included)."""
    _, ex = torch.frexp(a)
    return ex.to(torch.int64) - 1


def _ceil_log2(a: torch.Tensor) -> torch.Tensor:
    """``ceil(log2(a))`` for positive finite ``a`` (exact)."""
    m, ex = torch.frexp(a)
    return ex.to(torch.int64) - (m == 0.5).to(torch.int64)


def round_to_elem(v: torch.Tensor, elem: ElemSpec) -> torch.Tensor:
    """Round finite ``v`` (float32/64) to the element grid: RNE, saturating at ``max_normal``.

    The result has ``v``'s dtype and keeps the sign of zeros (QDQ output keeps it for integer
    elements too, as the shared vectors do; their codes have one zero). Exact in float64 and float32
    for every element type here (all divisions are by powers of two).
    """
    a = v.abs().clamp(max=elem.max_normal)
    if elem.is_int:
        quantum = torch.full_like(a, 2.0**-elem.mbits)
    else:
        _, ex = torch.frexp(a)
        e = (ex.to(torch.int64) - 1).clamp(min=elem.emin)
        quantum = _pow2(e - elem.mbits).to(v.dtype)
    r = torch.round(a / quantum) * quantum  # torch.round: half to even
    return torch.copysign(r, v)


def mx_scale_exponent(amax: torch.Tensor, elem: ElemSpec, rule: str) -> torch.Tensor:
    """Unbiased shared exponent ``e`` (int64, clamped to [-127, 127]) of MX blocks.

    ``amax`` holds each block's largest magnitude (finite, >= 0; 0 gives -127). See the module
    docstring for the rule formulas.
    """
    a = amax.to(torch.float64)
    pos = a > 0
    safe = torch.where(pos, a, torch.ones_like(a))
    if rule == "floor":
        e = _floor_log2(safe) - elem.emax
    elif rule == "ceil":
        e = _ceil_log2(safe) - elem.emax
    elif rule == "even":
        m, ex = torch.frexp(safe)  # safe = m * 2**ex, m in [0.5, 1)
        # round 2m to (mbits+1) significant bits, ties to even: 2.0 wins every tie at the top.
        bump = (m >= 1.0 - 2.0 ** -(elem.mbits + 2)).to(torch.int64)
        e = ex.to(torch.int64) - 1 + bump - elem.emax
    elif rule == "rceil":
        q = (safe.to(torch.float32) / torch.tensor(elem.max_normal, dtype=torch.float32)).to(torch.float64)
        # a quotient that underflows fp32 (amax < ~2**-133 with E5M2) takes the smallest scale
        e = torch.where(q > 0, _ceil_log2(torch.where(q > 0, q, torch.ones_like(q))), -E8M0_BIAS)
    else:  # validated by callers; kept for direct use
        raise ValueError(f"unknown scale_rule {rule!r}")
    e = torch.where(pos, e, torch.full_like(e, -E8M0_BIAS))
    return e.clamp(-E8M0_BIAS, E8M0_BIAS)


@cache
def _grid_cpu(elem: ElemSpec) -> torch.Tensor:
    return torch.tensor(elem.grid(), dtype=torch.float64)


def _encode(vals: torch.Tensor, elem: ElemSpec) -> torch.Tensor:
    """Codes of values already on the element grid (NaN entries encode as +0)."""
    vals = torch.nan_to_num(vals, nan=0.0)
    if elem.is_int:
        return torch.round(vals * 2.0**elem.mbits).to(torch.int8)
    grid = _grid_cpu(elem).to(vals.device)
    mag = torch.searchsorted(grid, vals.abs().to(torch.float64).contiguous())
    sign = torch.signbit(vals).to(torch.int64) << (elem.bits - 1)
    return (mag | sign).to(torch.uint8)


def _decode(codes: torch.Tensor, elem: ElemSpec) -> torch.Tensor:
    """float64 values of element codes."""
    if elem.is_int:
        return codes.to(torch.float64) * 2.0**-elem.mbits
    c = codes.to(torch.int64)
    grid = _grid_cpu(elem).to(codes.device)
    mag = grid[c & ((1 << (elem.bits - 1)) - 1)]
    return torch.where((c >> (elem.bits - 1)) & 1 == 1, -mag, mag)


def _group_view(x2: torch.Tensor, spec: FormatSpec) -> torch.Tensor:
    """``[rows, groups, group_len]`` view of padded rows for the recipe's granularity."""
    if spec.granularity is Granularity.BLOCK:
        return x2.reshape(x2.shape[0], -1, spec.block_size)
    if spec.granularity is Granularity.ROW:
        return x2.reshape(x2.shape[0], 1, -1)
    return x2.reshape(1, 1, -1)


def _bad_and_amax(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group: whether it holds NaN/Inf, and the amax over its finite values."""
    finite = torch.isfinite(g)
    bad = ~finite.all(dim=-1)
    amax = torch.where(finite, g.abs(), torch.zeros_like(g)).amax(dim=-1)
    return bad, amax


# ----------------------------------------------------------------------------- recipes


def _mx(g: torch.Tensor, spec: FormatSpec, rule: str):
    """MX on grouped float64 values: returns (element values, E8M0 codes, nan groups)."""
    bad, amax = _bad_and_amax(g)
    e = mx_scale_exponent(amax, spec.elem, rule)
    scale = _pow2(e).unsqueeze(-1)
    q = round_to_elem(torch.where(bad.unsqueeze(-1), torch.zeros_like(g), g) / scale, spec.elem)
    codes = torch.where(bad, torch.full_like(e, E8M0_NAN), e + E8M0_BIAS).to(torch.uint8)
    return q, codes, bad


def _nvfp4(g32: torch.Tensor, global_amax: float | torch.Tensor | None):
    """NVFP4 on grouped fp32 values: (element values fp32, e4m3 scales, global scale, nan)."""
    bad, amax = _bad_and_amax(g32)
    if global_amax is None:
        gamax = amax.max() if amax.numel() else torch.zeros((), dtype=torch.float32)
    else:
        gamax = torch.as_tensor(global_amax, dtype=torch.float32, device=g32.device).reshape(())
    gamax = gamax.to(torch.float32)
    zero_tensor = gamax == 0
    gs = torch.where(
        zero_tensor, torch.ones_like(gamax), torch.tensor(NVFP4_GLOBAL_NUM, device=g32.device) / gamax
    ).to(torch.float32)
    inv6 = torch.tensor(1.0 / 6.0, dtype=torch.float32)
    s = (gs * (amax * inv6.to(g32.device))).clamp(max=448.0)
    s8 = s.to(torch.float8_e4m3fn)
    s32 = s8.to(torch.float32)
    out_scale = torch.where(s32 != 0, 1.0 / (s32 * (1.0 / gs)), torch.zeros_like(s32))
    xs = torch.where(bad.unsqueeze(-1), torch.zeros_like(g32), g32) * out_scale.unsqueeze(-1)
    q = round_to_elem(xs.clamp(-6.0, 6.0), _E2M1)  # s == 0 blocks scale by 0: signed zeros
    return q, s8, gs, bad


def _scaled_scale(amax: torch.Tensor, spec: FormatSpec) -> torch.Tensor:
    """float64 scale of a SCALED recipe from float64 group amax."""
    qmax = spec.elem.max_normal
    a = amax.clamp(min=spec.amax_floor) if spec.amax_floor else amax
    # A tensor divisor, never a Python number: PyTorch's CUDA ``div`` turns ``t / python_float``
    # into ``t * (1 / python_float)``, which is not the correctly rounded quotient (measured on
    # an H200: ``int8_per_token`` ties such as x/s = 63.5 - 1ulp then rounded the wrong way,
    # so the CUDA reference disagreed with the CPU reference and the Triton kernel).
    s = a / torch.full_like(a, qmax)
    if spec.scale_floor:
        s = s.clamp(min=spec.scale_floor)
    if spec.pow2_scale:
        pos = s > 0
        s = torch.where(pos, _pow2(_ceil_log2(torch.where(pos, s, torch.ones_like(s)))), s)
    return s


def _scaled(g: torch.Tensor, spec: FormatSpec):
    """SCALED recipes on grouped float64 values: (element values, scales, nan).

    Scales are float64 (exact fp32 values for ``fp32_math`` recipes).
    """
    bad, amax = _bad_and_amax(g)
    s = _scaled_scale(amax, spec)
    if spec.fp32_math:
        s = s.to(torch.float32).to(torch.float64)
    sd = torch.where(s > 0, s, torch.ones_like(s)).unsqueeze(-1)
    v = torch.where(bad.unsqueeze(-1), torch.zeros_like(g), g) / sd
    if spec.fp32_math or not spec.elem.is_int:
        v = v.to(torch.float32).to(torch.float64)
    q = round_to_elem(v, spec.elem)  # s == 0 only for all-zero groups: q is their zeros
    return q, s, bad


# ----------------------------------------------------------------------------- entry points


def quantize_reference(
    x: torch.Tensor,
    spec: FormatSpec,
    scale_rule: str = "floor",
    axis: int = -1,
    global_amax: float | torch.Tensor | None = None,
) -> QuantizedTensor:
    """Quantize ``x`` to codes and scales (arguments already validated by the caller)."""
    axis = axis % x.ndim if x.ndim else 0
    block = spec.block_size if spec.granularity is Granularity.BLOCK else None
    x2, k = to_rows(x, axis, block)
    rows = x2.shape[0]
    if spec.family is Family.NVFP4:
        g = _group_view(x2.to(torch.float32), spec)
        q, scales, gs, bad = _nvfp4(g, global_amax)
        gsc: torch.Tensor | None = gs
    else:
        g = _group_view(x2.to(torch.float64), spec)
        if spec.family is Family.MX:
            q, scales, bad = _mx(g, spec, scale_rule)
        else:
            q, scales, bad = _scaled(g, spec)
        gsc = None
    codes = _encode(q.reshape(rows, -1), spec.elem)
    return QuantizedTensor(spec, scale_rule, codes, scales, gsc, bad, x.shape, axis, x.dtype, k)


def dequantize_reference(q: QuantizedTensor) -> torch.Tensor:
    """Values of ``q`` in its original dtype and shape (rounded once, RNE)."""
    spec = q.spec
    rows = q.codes.shape[0]
    vals = _decode(q.codes, spec.elem)
    if spec.granularity is Granularity.TENSOR:
        g = vals.reshape(1, 1, -1)
    else:
        g = _group_view(vals, spec)
    if spec.family is Family.MX:
        e = q.scales.to(torch.int64) - E8M0_BIAS
        y = g * _pow2(e.clamp(-E8M0_BIAS, E8M0_BIAS)).unsqueeze(-1)
    elif spec.family is Family.NVFP4:
        mult = q.scales.to(torch.float32) / q.global_scale
        y = g.to(torch.float32) * mult.unsqueeze(-1)
    else:
        y = g * q.scales.unsqueeze(-1)
        if spec.fp32_math:
            y = y.to(torch.float32)
    y = torch.where(q.nan_groups.unsqueeze(-1), torch.full_like(y, math.nan), y)
    y2 = y.reshape(rows, -1).to(q.dtype)
    return from_rows(y2, q.shape, q.axis, q.k)


def qdq_reference(
    x: torch.Tensor,
    spec: FormatSpec,
    scale_rule: str = "floor",
    axis: int = -1,
    global_amax: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused reference quantize-dequantize (same numbers as quantize + dequantize)."""
    axis = axis % x.ndim if x.ndim else 0
    block = spec.block_size if spec.granularity is Granularity.BLOCK else None
    x2, k = to_rows(x, axis, block)
    if spec.family is Family.NVFP4:
        g = _group_view(x2.to(torch.float32), spec)
        q, s8, gs, bad = _nvfp4(g, global_amax)
        y = q * (s8.to(torch.float32) / gs).unsqueeze(-1)
    else:
        g = _group_view(x2.to(torch.float64), spec)
        if spec.family is Family.MX:
            q, codes, bad = _mx(g, spec, scale_rule)
            e = codes.to(torch.int64) - E8M0_BIAS
            y = q * _pow2(e.clamp(-E8M0_BIAS, E8M0_BIAS)).unsqueeze(-1)
        else:
            q, s, bad = _scaled(g, spec)
            y = q * s.unsqueeze(-1)
            if spec.fp32_math:
                y = y.to(torch.float32)
    y = torch.where(bad.unsqueeze(-1), torch.full_like(y, math.nan), y)
    return from_rows(y.reshape(x2.shape).to(x.dtype), x.shape, axis, k)
