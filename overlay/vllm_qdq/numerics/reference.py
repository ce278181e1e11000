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

NVFP4 family (operation order fixed to vLLM's fp32 kernels), with ``S`` the block-scale
element's largest value (E4M3: 448 for ``nvfp4``; UE5M3: 114688 for ``nvfp4_e5m3``):
``gs = (S * 6) / amax_tensor`` (fp32; 2688 for nvfp4, 688128 for nvfp4_e5m3), per 16-block
``s = enc(min(gs * (amax_block * m), S))`` with ``m = fp32(1/6)`` and ``enc`` RNE onto the
scale element's grid (E4M3 or UE5M3, subnormals included, saturating at ``S``),
``inv = 1 / (s * (1 / gs))`` (0 when ``s == 0``), ``q = e2m1(clamp(x * inv, -6, 6))``, and
``y = q * (s / gs)``, each operation rounded to fp32. A tensor whose amax is 0 gives zeros.

Scale rule ``four_over_six`` (NVFP4 family, arXiv 2512.02010): each block is quantized twice,
with ``m = fp32(1/6)`` (block max to 6) and ``m = 1/4`` (block max to 4; the tensor scale
``gs`` is unchanged, so the clamp at ``S`` makes the 4-candidate of the tensor's largest blocks
equal to the 6-candidate), and keeps the candidate with the lower squared error
``err = sum((y - x)**2)`` over the block, computed in fp32: ``d = y - x``, ``d * d``, then a
fixed pairwise tree (16 -> 8 -> 4 -> 2 -> 1, element ``2i`` plus ``2i + 1`` at each level).
Tie rule: the 4-candidate is kept only when its error is strictly lower (a tie keeps 6).

Stochastic rounding (``rounding="stochastic"``, MX and NVFP4 family): the element rounding
step ``rne(a / quantum)`` becomes ``floor(t) + (u < t - floor(t))`` with ``t = a / quantum``
(exact) and ``u = (philox(seed, i) >> 8) * 2**-24`` (exact in fp32), where ``philox`` is
Philox-4x32-10 (the generator of Triton's ``tl.randint``: counter ``(i mod 2**32, i >> 32,
0, 0)``, key ``(seed mod 2**32, seed >> 32)``, first output word) and ``i = row * K + col`` the
element's index in the ``[rows, K]`` layout (axis last, leading dimensions flattened in C
order), independent of any tiling. Every result is one of the two grid neighbours of ``a``
(saturation at ``max_normal`` first, so values beyond it give ``max_normal``); it is the upper
one with probability ``ceil(frac * 2**24) / 2**24`` (``frac`` = ``t - floor(t)``), which is
``frac`` exactly whenever ``frac`` is a multiple of ``2**-24`` (every ``t >= 2**-1`` with a
24-bit significand): the rounding is unbiased there, and biased by less than ``2**-24``
quanta below. The same ``(seed, i)`` gives the same draw: results are reproducible.
Codes and scales are those of the rounded values (NVFP4's block scales do not depend on it).

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
from .rotation import Rotation, check_length, hadamard_signs, rotate_rows

__all__ = [
    "SUPPORTED_DTYPES",
    "QuantizedTensor",
    "dequantize_reference",
    "from_rows",
    "mx_scale_exponent",
    "philox_uniform",
    "qdq_reference",
    "qdq_rotated_reference",
    "quantize_reference",
    "round_to_elem",
    "round_to_elem_stochastic",
    "to_rows",
]

#: Input dtypes every QDQ entry point accepts.
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)

E8M0_BIAS = 127
E8M0_NAN = 255
NVFP4_GLOBAL_NUM = 448.0 * 6.0  # nvfp4's S * 6 (the family's general form: spec.scale_elem)
_E2M1 = ELEMENTS["e2m1"]
#: The default seed of stochastic rounding when a caller passes none.
DEFAULT_SEED = 0


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


def round_to_elem_stochastic(v: torch.Tensor, elem: ElemSpec, u: torch.Tensor) -> torch.Tensor:
    """Stochastic rounding of finite ``v`` (float32/64) onto the element grid with uniform draws
    ``u`` in [0, 1) (same shape): up iff ``u < frac(|v| / quantum)``; saturates at
    ``max_normal`` first; sign kept (see the module docstring). Exact in float32 and float64."""
    a = v.abs().clamp(max=elem.max_normal)
    if elem.is_int:
        quantum = torch.full_like(a, 2.0**-elem.mbits)
    else:
        _, ex = torch.frexp(a)
        e = (ex.to(torch.int64) - 1).clamp(min=elem.emin)
        quantum = _pow2(e - elem.mbits).to(v.dtype)
    t = a / quantum
    f = torch.floor(t)
    r = (f + (u.to(v.dtype) < t - f).to(v.dtype)) * quantum
    return torch.copysign(r, v)


_M32 = 0xFFFFFFFF
_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85


def _mul32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of ``a * b`` for a 32-bit constant ``a`` and int64 ``b`` < 2**32,
    in int64 without overflow (``b`` split into 16-bit halves)."""
    p = a * (b >> 16)  # < 2**48
    q = a * (b & 0xFFFF)  # < 2**48
    hi = (p + (q >> 16)) >> 16
    lo = (((p & 0xFFFF) << 16) + q) & _M32
    return hi & _M32, lo


def philox_uniform(seed: int, idx: torch.Tensor) -> torch.Tensor:
    """fp32 uniforms ``(philox(seed, idx) >> 8) * 2**-24`` in [0, 1) for int64 indices ``idx``
    (Philox-4x32-10, the first output word, as Triton's ``tl.randint(seed, idx)``)."""
    c0 = idx & _M32
    c1 = (idx >> 32) & _M32
    c2 = torch.zeros_like(idx)
    c3 = torch.zeros_like(idx)
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for _ in range(10):
        hi_b, lo_b = _mul32(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul32(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _PHILOX_KEY_A) & _M32, (k1 + _PHILOX_KEY_B) & _M32
    return (c0 >> 8).to(torch.float32) * 2.0**-24


def _uniforms(rows: int, k: int, kpad: int, seed: int, device: torch.device) -> torch.Tensor:
    """Draws for padded rows ``[rows, kpad]``: element ``(r, c)`` gets index ``r * k + c``."""
    r = torch.arange(rows, dtype=torch.int64, device=device)[:, None]
    c = torch.arange(kpad, dtype=torch.int64, device=device)[None, :]
    return philox_uniform(seed, r * k + c)


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


def _round(v: torch.Tensor, elem: ElemSpec, u: torch.Tensor | None) -> torch.Tensor:
    return round_to_elem(v, elem) if u is None else round_to_elem_stochastic(v, elem, u)


def _mx(g: torch.Tensor, spec: FormatSpec, rule: str, u: torch.Tensor | None = None):
    """MX on grouped float64 values: returns (element values, E8M0 codes, nan groups)."""
    bad, amax = _bad_and_amax(g)
    e = mx_scale_exponent(amax, spec.elem, rule)
    scale = _pow2(e).unsqueeze(-1)
    q = _round(torch.where(bad.unsqueeze(-1), torch.zeros_like(g), g) / scale, spec.elem, u)
    codes = torch.where(bad, torch.full_like(e, E8M0_NAN), e + E8M0_BIAS).to(torch.uint8)
    return q, codes, bad


def _tree_sum16(e: torch.Tensor) -> torch.Tensor:
    """fp32 sum over the last dimension (a power of two) by the fixed pairwise tree."""
    while e.shape[-1] > 1:
        p = e.reshape(*e.shape[:-1], e.shape[-1] // 2, 2)
        e = p[..., 0] + p[..., 1]
    return e[..., 0]


def _nvfp4(
    g32: torch.Tensor,
    global_amax: float | torch.Tensor | None,
    spec: FormatSpec,
    rule: str = "floor",
    u: torch.Tensor | None = None,
):
    """NVFP4 family on grouped fp32 values: (element values fp32, block scales fp32 (values on
    the scale element's grid), global scale, nan groups)."""
    selem = spec.scale_elem
    smax = selem.max_normal
    dev = g32.device
    bad, amax = _bad_and_amax(g32)
    if global_amax is None:
        gamax = amax.max() if amax.numel() else torch.zeros((), dtype=torch.float32)
    else:
        gamax = torch.as_tensor(global_amax, dtype=torch.float32, device=dev).reshape(())
    gamax = gamax.to(torch.float32).to(dev)
    zero_tensor = gamax == 0
    gnum = torch.tensor(smax * spec.elem.max_normal, dtype=torch.float32, device=dev)
    gs = torch.where(zero_tensor, torch.ones_like(gamax), gnum / gamax).to(torch.float32)
    x = torch.where(bad.unsqueeze(-1), torch.zeros_like(g32), g32)

    def candidate(mult: float):
        m = torch.tensor(mult, dtype=torch.float32, device=dev)
        s = round_to_elem((gs * (amax * m)).clamp(max=smax), selem)
        out_scale = torch.where(s != 0, 1.0 / (s * (1.0 / gs)), torch.zeros_like(s))
        q = _round((x * out_scale.unsqueeze(-1)).clamp(-6.0, 6.0), _E2M1, u)  # s == 0: signed zeros
        return q, s

    q, s = candidate(float(torch.tensor(1.0 / 6.0, dtype=torch.float32)))
    if rule == "four_over_six":
        q4, s4 = candidate(0.25)
        d6 = q * (s / gs).unsqueeze(-1) - x
        d4 = q4 * (s4 / gs).unsqueeze(-1) - x
        use4 = _tree_sum16(d4 * d4) < _tree_sum16(d6 * d6)
        q = torch.where(use4.unsqueeze(-1), q4, q)
        s = torch.where(use4, s4, s)
    return q, s, gs, bad


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


def _draws(x2: torch.Tensor, k: int, rounding: str, seed: int | None, spec: FormatSpec) -> torch.Tensor | None:
    if rounding == "nearest":
        return None
    u = _uniforms(x2.shape[0], k, x2.shape[1], DEFAULT_SEED if seed is None else seed, x2.device)
    return _group_view(u, spec)


def _quantize_groups(x: torch.Tensor, spec: FormatSpec, scale_rule: str, axis: int, global_amax,
                     rounding: str, seed: int | None):
    """(padded rows, k, element values, scales, global scale, nan groups) of ``x``."""
    block = spec.block_size if spec.granularity is Granularity.BLOCK else None
    x2, k = to_rows(x, axis, block)
    u = _draws(x2, k, rounding, seed, spec)
    if spec.family is Family.NVFP4:
        q, scales, gs, bad = _nvfp4(_group_view(x2.to(torch.float32), spec), global_amax, spec, scale_rule, u)
        return x2, k, q, scales, gs, bad
    g = _group_view(x2.to(torch.float64), spec)
    if spec.family is Family.MX:
        q, scales, bad = _mx(g, spec, scale_rule, u)
    else:
        q, scales, bad = _scaled(g, spec)
    return x2, k, q, scales, None, bad


def quantize_reference(
    x: torch.Tensor,
    spec: FormatSpec,
    scale_rule: str = "floor",
    axis: int = -1,
    global_amax: float | torch.Tensor | None = None,
    rounding: str = "nearest",
    seed: int | None = None,
) -> QuantizedTensor:
    """Quantize ``x`` to codes and scales (arguments already validated by the caller).

    NVFP4-family scales: ``float8_e4m3fn`` for E4M3 block scales, float32 values (on the UE5M3
    grid) for ``nvfp4_e5m3``.
    """
    axis = axis % x.ndim if x.ndim else 0
    x2, k, q, scales, gsc, bad = _quantize_groups(x, spec, scale_rule, axis, global_amax, rounding, seed)
    if spec.family is Family.NVFP4 and spec.scale_elem.name == "e4m3":
        scales = scales.to(torch.float8_e4m3fn)
    codes = _encode(q.reshape(x2.shape[0], -1), spec.elem)
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
    rounding: str = "nearest",
    seed: int | None = None,
) -> torch.Tensor:
    """Fused reference quantize-dequantize (same numbers as quantize + dequantize)."""
    axis = axis % x.ndim if x.ndim else 0
    x2, k, q, scales, gs, bad = _quantize_groups(x, spec, scale_rule, axis, global_amax, rounding, seed)
    if spec.family is Family.NVFP4:
        y = q * (scales / gs).unsqueeze(-1)
    elif spec.family is Family.MX:
        e = scales.to(torch.int64) - E8M0_BIAS
        y = q * _pow2(e.clamp(-E8M0_BIAS, E8M0_BIAS)).unsqueeze(-1)
    else:
        y = q * scales.unsqueeze(-1)
        if spec.fp32_math:
            y = y.to(torch.float32)
    y = torch.where(bad.unsqueeze(-1), torch.full_like(y, math.nan), y)
    return from_rows(y.reshape(x2.shape).to(x.dtype), x.shape, axis, k)


def qdq_rotated_reference(
    x: torch.Tensor,
    spec: FormatSpec,
    rotation: Rotation,
    scale_rule: str = "floor",
    axis: int = -1,
    global_amax: float | torch.Tensor | None = None,
    rounding: str = "nearest",
    seed: int | None = None,
    qdq_fn=None,
) -> torch.Tensor:
    """``R^T QDQ(R x)`` along ``axis`` (see :mod:`vllm_qdq.numerics.rotation` for ``R``).

    Rows are taken to fp32, zero-padded to ``Kp`` (a multiple of the block; ``pad`` must be on
    when ``K`` is not one), rotated, quantize-dequantized as fp32 rows of length ``Kp`` (stochastic
    rounding indices ``row * Kp + col``; NVFP4's tensor amax is that of ``R x``), rotated back,
    cut to ``K`` and rounded once (RNE) to ``x``'s dtype. ``qdq_fn`` (default
    :func:`qdq_reference`) does the middle step, with this function's signature minus the rotation.
    """
    axis = axis % x.ndim if x.ndim else 0
    x2, k = to_rows(x, axis, None)
    kp = check_length(rotation, k)
    v = x2.to(torch.float32)
    if kp != k:
        v = torch.nn.functional.pad(v, (0, kp - k))
    signs = hadamard_signs(rotation, kp, v.device)
    r = rotate_rows(v, rotation, signs)
    fn = qdq_fn or qdq_reference
    y = fn(r, spec, scale_rule, -1, global_amax, rounding, seed)
    z = rotate_rows(y.to(torch.float32), rotation, signs, inverse=True)
    return from_rows(z[:, :k].to(x.dtype), x.shape, axis, k)
