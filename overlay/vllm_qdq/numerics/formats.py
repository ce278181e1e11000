"""The format table: every number format and QDQ recipe this package knows, as data.

One frozen :class:`ElemSpec` per element encoding and one frozen :class:`FormatSpec` per named
recipe. The torch reference (:mod:`vllm_qdq.numerics.reference`), the Triton kernels
(:mod:`vllm_qdq.numerics.triton_qdq`) and the tests all read these records; nothing else in the
package restates a bit width, a bias or a maximum.

Sources:

* OCP Microscaling Formats (MX) Specification v1.0, section 5 (element types E2M1, E2M3,
  E3M2, E4M3, E5M2, INT8), section 6.3 (shared-scale computation ``floor``).
* NVIDIA NVFP4: E2M1 elements, 16-element blocks, E4M3 block scale, FP32 per-tensor scale.
* UE5M3 block scales (``nvfp4_e5m3``): NVIDIA CUDA Math API 13.4 (developer preview),
  ``__nv_fp8x2_ue5m3`` / ``__nv_fp8x4_ue5m3``: no sign bit, 5 exponent bits, 3 mantissa bits,
  no infinities, only ``0xFF`` is NaN; conversions round to nearest (even) and saturate to the
  largest finite value (``__NV_SATFINITE``). With the IEEE-style bias 15 that gives subnormals
  ``m * 2**-17``, smallest normal ``2**-14``, largest finite ``0xFE = 1.75 * 2**16 = 114688``
  (AutoRound's ``FLOAT8_UE5M3_MAX = 114688`` for its ``nvfp4_v2`` / UE5M3 simulation agrees).
* "Four over six" NVFP4 block scaling: arXiv 2512.02010 (per block, the block max mapped to 6 or
  to 4, whichever gives the lower squared error).
* vLLM 0.30.0 dynamic activation quantization (``scaled_fp8_quant``,
  ``per_token_group_quant_fp8``, ``scaled_int8_quant``) for the FP8 / INT8 recipes.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "ALL_SCALE_RULES",
    "ELEMENTS",
    "FORMATS",
    "MX_BLOCK_SIZES",
    "NVFP4_SCALE_RULES",
    "ROUNDINGS",
    "SCALE_RULES",
    "SCALE_RULE_CODES",
    "ElemSpec",
    "Family",
    "FormatSpec",
    "Granularity",
    "check_rounding",
    "check_scale_rule",
    "get_format",
]


@dataclass(frozen=True)
class ElemSpec:
    """One element encoding.

    Floating-point elements (``is_int`` false) have ``ebits`` exponent bits, ``mbits`` mantissa
    bits and exponent ``bias``; their normal exponents run from ``emin = 1 - bias`` to ``emax``,
    and values below ``2**emin`` are subnormal with quantum ``2**(emin - mbits)``.
    ``max_normal`` is the largest finite magnitude; out-of-range values saturate to it.

    Integer elements (``is_int`` true) are ``k * 2**-mbits`` for ``|k| <= 2**(bits-1) - 1``
    (symmetric: the most negative two's complement code is never produced).
    """

    name: str
    bits: int
    ebits: int
    mbits: int
    bias: int
    emax: int
    max_normal: float
    is_int: bool = False

    @property
    def emin(self) -> int:
        """Smallest normal exponent (floating-point elements)."""
        return 1 - self.bias

    @property
    def quantum_min(self) -> float:
        """Spacing of the finest part of the grid (subnormals, or the integer step)."""
        return 2.0 ** (self.emin - self.mbits) if not self.is_int else 2.0**-self.mbits

    def grid(self) -> list[float]:
        """Every non-negative finite value of the encoding, ascending (code order for fp4/fp6/fp8)."""
        if self.is_int:
            top = 2 ** (self.bits - 1) - 1
            return [k * 2.0**-self.mbits for k in range(top + 1)]
        vals = []
        for e_field in range(2**self.ebits):
            for m_field in range(2**self.mbits):
                if e_field == 0:
                    v = m_field * 2.0 ** (self.emin - self.mbits)
                else:
                    v = (1 + m_field / 2**self.mbits) * 2.0 ** (e_field - self.bias)
                if v > self.max_normal:
                    continue
                vals.append(v)
        return vals


#: Element encodings by name.
ELEMENTS: dict[str, ElemSpec] = {
    e.name: e
    for e in (
        ElemSpec("e2m1", bits=4, ebits=2, mbits=1, bias=1, emax=2, max_normal=6.0),
        ElemSpec("e2m3", bits=6, ebits=2, mbits=3, bias=1, emax=2, max_normal=7.5),
        ElemSpec("e3m2", bits=6, ebits=3, mbits=2, bias=3, emax=4, max_normal=28.0),
        # E4M3 "fn": no infinities, S.1111.111 is NaN, so the top finite value is 448.
        ElemSpec("e4m3", bits=8, ebits=4, mbits=3, bias=7, emax=8, max_normal=448.0),
        # E5M2 keeps IEEE infinities; QDQ saturates to the largest finite value instead.
        ElemSpec("e5m2", bits=8, ebits=5, mbits=2, bias=15, emax=15, max_normal=57344.0),
        # UE5M3 (unsigned block scale of nvfp4_e5m3): 8 bits, no sign, no Inf, 0xFF = NaN, so
        # the top finite code 0xFE is 1.75 * 2**16; bias 15, subnormal quantum 2**-17.
        ElemSpec("ue5m3", bits=8, ebits=5, mbits=3, bias=15, emax=16, max_normal=114688.0),
        # OCP MXINT8: two's complement with an implicit 2**-6, so |k|/64 <= 127/64.
        ElemSpec("mxint8", bits=8, ebits=0, mbits=6, bias=0, emax=0, max_normal=127 / 64, is_int=True),
        # Plain symmetric INT8 (vLLM's per-token activation quantization): |k| <= 127.
        ElemSpec("int8", bits=8, ebits=0, mbits=0, bias=0, emax=6, max_normal=127.0, is_int=True),
    )
}


class Family(str, enum.Enum):
    """How a recipe computes its scales."""

    MX = "mx"  # OCP MX: power-of-two E8M0 scale per block, chosen by a scale rule
    NVFP4 = "nvfp4"  # E4M3 (or UE5M3) block scale under an FP32 per-tensor scale
    SCALED = "scaled"  # one real-valued (or power-of-two) scale per group from amax / qmax


class Granularity(str, enum.Enum):
    """Which elements share one scale."""

    BLOCK = "block"  # ``block_size`` consecutive elements along the axis
    ROW = "row"  # every element along the axis (per token / per output channel)
    TENSOR = "tensor"  # the whole tensor


#: MX shared-scale rules (see :func:`vllm_qdq.numerics.reference.mx_scale_exponent` for the formulas).
SCALE_RULES: tuple[str, ...] = ("floor", "ceil", "even", "rceil")
#: The one integer encoding of :data:`SCALE_RULES` (what Triton kernels get as ``tl.constexpr``).
SCALE_RULE_CODES: dict[str, int] = {rule: code for code, rule in enumerate(SCALE_RULES)}

#: NVFP4-family block-scale rules: ``floor`` is the standard one (the block max mapped to the
#: largest element, 6), ``four_over_six`` tries 6 and 4 per block and keeps the lower squared
#: error, 6 on a tie (see :mod:`vllm_qdq.numerics.reference`).
NVFP4_SCALE_RULES: tuple[str, ...] = ("floor", "four_over_six")
#: Every scale rule name of any family.
ALL_SCALE_RULES: tuple[str, ...] = SCALE_RULES + tuple(r for r in NVFP4_SCALE_RULES if r not in SCALE_RULES)
#: Element rounding modes: round half to even, or unbiased stochastic rounding (MX / NVFP4).
ROUNDINGS: tuple[str, ...] = ("nearest", "stochastic")

#: Block sizes an MX recipe accepts; 32 is the OCP v1.0 value and the default.
MX_BLOCK_SIZES: tuple[int, ...] = (16, 32, 64)


@dataclass(frozen=True)
class FormatSpec:
    """A named QDQ recipe: element encoding plus how scales are chosen and stored.

    Attributes:
        name: the public name (``FORMATS`` key).
        family: MX, NVFP4 or SCALED (see :class:`Family`).
        elem: the element encoding.
        granularity: which elements share a scale.
        block_size: elements per block for ``Granularity.BLOCK``; ``None`` otherwise.
        pow2_scale: SCALED recipes only: round the scale up to a power of two (UE8M0).
        scale_floor: SCALED recipes only: lower bound on the scale (vLLM per-token FP8 uses
            ``1 / (448 * 512)``), applied as ``max(amax / qmax, scale_floor)``.
        amax_floor: SCALED recipes only: lower bound on a group's amax before dividing
            (vLLM's per-group FP8 uses ``1e-10``).
        fp32_math: SCALED recipes only: scale, quotient and product in fp32, as vLLM's
            per-token FP8 CUDA kernel computes them; otherwise float64 (see
            :mod:`vllm_qdq.numerics.reference`).
        description: one line for listings and errors.
        scale_elem: NVFP4 family only: the block-scale encoding (E4M3 or UE5M3); the tensor
            scale maps the tensor amax to ``scale_elem.max_normal * elem.max_normal``.
    """

    name: str
    family: Family
    elem: ElemSpec
    granularity: Granularity
    block_size: int | None
    description: str
    pow2_scale: bool = False
    scale_floor: float = 0.0
    amax_floor: float = 0.0
    fp32_math: bool = False
    scale_elem: ElemSpec | None = None

    @property
    def allowed_block_sizes(self) -> tuple[int, ...]:
        """Block sizes a caller may ask for (empty: the recipe has no block)."""
        if self.family is Family.MX:
            return MX_BLOCK_SIZES
        return (self.block_size,) if self.block_size is not None else ()

    @property
    def takes_scale_rule(self) -> bool:
        """Only MX recipes choose between the MX scale rules (:data:`SCALE_RULES`)."""
        return self.family is Family.MX

    @property
    def scale_rules(self) -> tuple[str, ...]:
        """The scale rules the recipe accepts (its first is the default)."""
        if self.family is Family.MX:
            return SCALE_RULES
        if self.family is Family.NVFP4:
            return NVFP4_SCALE_RULES
        return ("floor",)

    @property
    def pow2_seven_shift(self) -> int:
        """Power-of-two SCALED recipes with ``qmax = 7 * 2**k`` (E4M3's 448, E5M2's 57344) and an
        amax floor, no scale floor: ``k``, with which the scale exponent ``ceil(log2(max(amax,
        amax_floor) / qmax))`` is ``e - k - 2 + (m > 1.75)`` for a normal fp32 ``amax = m *
        2**e`` at or above the floor (at least 2**-126) (the float64 quotient never rounds across a power of two:
        only ``amax = 7 * 2**j`` comes within an ulp of one, and that quotient is exact); -1 for
        every other recipe. The Triton kernels compute the scale from ``amax``'s bits this way."""
        # a floor of at least 2**-126: every amax the formula reads is a normal fp32 number
        ok = self.pow2_scale and self.amax_floor >= 2.0**-126 and not self.scale_floor and not self.fp32_math
        return self._qmax_seven_shift if ok else -1

    @property
    def _qmax_seven_shift(self) -> int:
        """``k`` where ``qmax = 7 * 2**k`` (E4M3's 448, E5M2's 57344), else -1."""
        q = self.elem.max_normal
        k = int(math.log2(q / 7)) if q > 7 else -1
        return k if k >= 0 and q == 7 * 2.0**k else -1

    @property
    def fp32_scale_floor(self) -> float:
        """``fp32_math`` recipes whose ``qmax`` is ``7 * 2**k`` (E4M3's 448), with no amax floor, no
        power-of-two scale and a scale floor of at least 2**-126 (the fp32 quotient is not correctly
        rounded where it is subnormal): the fp32 value of the scale floor, with which the fp32 scale
        is ``max(RN32(amax / qmax), floor)``, the same number as the reference's
        ``RN32(max(RN64(amax / qmax), scale_floor))`` (a review checked every fp32 amax with an exact
        FMA, 2026-12-05: none differ): rounding is monotonic, and RN32 of RN64 of
        ``m * 2**e / 7`` (``m`` below 2**24) is RN32 of the quotient, whose bits past the 22nd are
        the period-3 expansion of a seventh (never 28 equal bits in a row, so RN64 never lands on an
        fp32 midpoint); the same holds for the floor ``1 / (7 * 2**15)``. -1.0 for every other
        recipe (the float64 scale). The Triton kernels take this path."""
        # a floor of at least 2**-126: the fp32 quotient (_div_rn) is correctly rounded down to the
        # smallest normal number, not below (a subnormal quotient can come out an ulp off)
        if not (self.fp32_math and not self.amax_floor and not self.pow2_scale and self._qmax_seven_shift >= 0
                and self.scale_floor >= 2.0**-126):
            return -1.0
        return struct.unpack("<f", struct.pack("<f", self.scale_floor))[0]

    @property
    def pow2_floor_code(self) -> int:
        """``ceil(log2(amax_floor / qmax))`` with the float64 quotient (the scale exponent of a
        group under the amax floor; see :attr:`pow2_seven_shift`)."""
        if not self.amax_floor:
            return 0
        m, e = math.frexp(self.amax_floor / self.elem.max_normal)
        return e - (m == 0.5)

    @property
    def amax_floor_f32(self) -> float:
        """The least fp32 number at or above ``amax_floor``: an fp32 ``amax`` is under the floor
        exactly when it is under this."""
        f = struct.unpack("<f", struct.pack("<f", self.amax_floor))[0]
        if f < self.amax_floor:
            f = struct.unpack("<f", struct.pack("<I", struct.unpack("<I", struct.pack("<f", f))[0] + 1))[0]
        return f

    @property
    def takes_rounding(self) -> bool:
        """Stochastic rounding applies to MX and NVFP4-family recipes (fp32 element math)."""
        return self.family in (Family.MX, Family.NVFP4)


def _mx(name: str, elem: str) -> FormatSpec:
    e = ELEMENTS[elem]
    return FormatSpec(
        name, Family.MX, e, Granularity.BLOCK, 32,
        f"OCP MX {elem.upper()} elements, E8M0 scale per 32 along the axis",
    )


#: Every recipe by public name.
FORMATS: dict[str, FormatSpec] = {
    f.name: f
    for f in (
        _mx("mxfp4", "e2m1"),
        _mx("mxfp6_e2m3", "e2m3"),
        _mx("mxfp6_e3m2", "e3m2"),
        _mx("mxfp8_e4m3", "e4m3"),
        _mx("mxfp8_e5m2", "e5m2"),
        _mx("mxint8", "mxint8"),
        FormatSpec(
            "nvfp4", Family.NVFP4, ELEMENTS["e2m1"], Granularity.BLOCK, 16,
            "NVIDIA NVFP4: E2M1 elements, E4M3 scale per 16, FP32 per-tensor scale",
            scale_elem=ELEMENTS["e4m3"],
        ),
        FormatSpec(
            "nvfp4_e5m3", Family.NVFP4, ELEMENTS["e2m1"], Granularity.BLOCK, 16,
            "NVFP4 with UE5M3 block scales: E2M1 elements, UE5M3 scale per 16, FP32 per-tensor scale",
            scale_elem=ELEMENTS["ue5m3"],
        ),
        FormatSpec(
            "fp8_e4m3_per_tensor", Family.SCALED, ELEMENTS["e4m3"], Granularity.TENSOR, None,
            "FP8 E4M3, one FP scale amax/448 for the whole tensor",
        ),
        FormatSpec(
            "fp8_e4m3_per_token", Family.SCALED, ELEMENTS["e4m3"], Granularity.ROW, None,
            "FP8 E4M3, scale max(amax/448, 1/(448*512)) per row (token)",
            scale_floor=1.0 / (448.0 * 512.0), fp32_math=True,
        ),
        FormatSpec(
            "fp8_e4m3_per_channel", Family.SCALED, ELEMENTS["e4m3"], Granularity.ROW, None,
            "FP8 E4M3, scale amax/448 per row (weight output channel)",
        ),
        FormatSpec(
            "fp8_e4m3_per_group128", Family.SCALED, ELEMENTS["e4m3"], Granularity.BLOCK, 128,
            "FP8 E4M3, scale max(amax,1e-10)/448 per 128 along the axis (DeepSeek-style)",
            amax_floor=1e-10,
        ),
        FormatSpec(
            "fp8_e4m3_per_group128_ue8m0", Family.SCALED, ELEMENTS["e4m3"], Granularity.BLOCK, 128,
            "FP8 E4M3, power-of-two scale 2^ceil(log2(max(amax,1e-10)/448)) per 128",
            pow2_scale=True, amax_floor=1e-10,
        ),
        FormatSpec(
            "int8_per_token", Family.SCALED, ELEMENTS["int8"], Granularity.ROW, None,
            "symmetric INT8, scale amax/127 per row (token)",
        ),
        FormatSpec(
            "int8_per_channel", Family.SCALED, ELEMENTS["int8"], Granularity.ROW, None,
            "symmetric INT8, scale amax/127 per row (weight output channel)",
        ),
    )
}


def get_format(name: str, block_size: int | None = None) -> FormatSpec:
    """Look up a recipe by name, optionally with another block size.

    Raises:
        ValueError: the name is unknown, or the block size is not one the recipe allows;
            the message names the bad value and the accepted ones.
    """
    if not isinstance(name, str) or name not in FORMATS:
        raise ValueError(f"unknown QDQ format {name!r}; accepted: {', '.join(FORMATS)}")
    spec = FORMATS[name]
    if block_size is None or block_size == spec.block_size:
        return spec
    allowed = spec.allowed_block_sizes
    if block_size not in allowed:
        accepted = ", ".join(map(str, allowed)) if allowed else "none (the format has no block)"
        raise ValueError(
            f"block_size={block_size!r} is not allowed for format {name!r}; accepted: {accepted}"
        )
    return _with_block(spec, block_size)


@lru_cache(maxsize=256)
def _with_block(spec: FormatSpec, block_size: int) -> FormatSpec:
    """``spec`` with another block size: one object per (recipe, block size), so callers that
    cache by identity (the Triton launcher's eager fast path) meet the same recipe again."""
    from dataclasses import replace

    return replace(spec, block_size=block_size)


def check_scale_rule(spec: FormatSpec, scale_rule: str) -> str:
    """Validate ``scale_rule`` for ``spec`` and return it.

    MX recipes accept every rule in :data:`SCALE_RULES`; NVFP4-family recipes those in
    :data:`NVFP4_SCALE_RULES`; other recipes have a fixed scale computation and accept only the
    default ``"floor"`` (which they ignore).
    """
    if scale_rule not in ALL_SCALE_RULES:
        raise ValueError(
            f"unknown scale_rule {scale_rule!r}; accepted: {', '.join(ALL_SCALE_RULES)}"
        )
    if scale_rule not in spec.scale_rules:
        takers = [n for n, f in FORMATS.items() if scale_rule in f.scale_rules]
        raise ValueError(
            f"scale_rule={scale_rule!r} does not apply to format {spec.name!r} "
            f"({spec.description}; accepted: {', '.join(spec.scale_rules)}); "
            f"{scale_rule!r} applies to: {', '.join(takers)}"
        )
    return scale_rule


def check_rounding(spec: FormatSpec, rounding: str) -> str:
    """Validate an element ``rounding`` mode for ``spec`` and return it.

    ``nearest`` applies everywhere; ``stochastic`` to MX and NVFP4-family recipes.
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; accepted: {', '.join(ROUNDINGS)}")
    if rounding != "nearest" and not spec.takes_rounding:
        raise ValueError(
            f"rounding={rounding!r} does not apply to format {spec.name!r}; it applies to: "
            f"{', '.join(n for n, f in FORMATS.items() if f.takes_rounding)}"
        )
    return rounding
