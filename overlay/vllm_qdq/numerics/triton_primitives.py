"""The Triton helpers every vllm-qdq kernel shares: MX exponent, RNE onto an element grid, 2**e.

Used by the QDQ kernels (:mod:`vllm_qdq.numerics.triton_qdq`) and the sage3 attention kernel
(:mod:`vllm_qdq.sage3.numerics.kernel`); tested once, bit for bit against the torch reference
(``tests/test_triton_primitives.py``). Format facts reach them as ``tl.constexpr`` scalars read
from :mod:`vllm_qdq.numerics.formats`; the scale rule as its integer code
(:data:`~vllm_qdq.numerics.formats.SCALE_RULE_CODES`: floor 0, ceil 1, even 2, rceil 3).

Numeric contract (all fp32, exact unless said):

* :func:`pow2_f32` ``(e)``: ``2**e`` for int32 ``e`` in [-127, 127], built from exponent bits
  (``e = -127`` is the subnormal ``0x00400000``).
* :func:`mx_exponent` ``(amax, RULE, EMAX, MBITS, MAXN)``: the E8M0 shared exponent of blocks
  with finite ``amax >= 0``, as :func:`vllm_qdq.numerics.reference.mx_scale_exponent`: floor
  ``floor(log2 amax) - emax``; ceil ``ceil(log2 amax) - emax``; even: floor after rounding the
  significand to ``mbits + 1`` bits (ties up); rceil ``ceil(log2(div_rn(amax, max_normal)))``
  (a quotient that underflows to 0 gives -127). Subnormal ``amax`` is scaled by 2**64 first
  (exact); ``amax == 0`` gives -127; the result is clamped to [-127, 127].
* :func:`round_elem_f32` ``(v, MAXN, EMIN, MBITS, IS_INT)``: RNE of ``v`` onto the element grid
  (quantum ``2**(max(floor(log2 |v|), emin) - mbits)``, ``2**-mbits`` for integer elements),
  saturating at ``max_normal``, NaN kept, the sign copied from ``v`` by bits (zeros keep theirs).
  Float elements: ``(a + C) - C`` with ``C = 2**(23 - mbits + max(floor(log2 a), emin))``, the
  quantum of ``a``'s binade times ``2**23``, so that the sum lies in ``[C, 2C)`` where fp32's
  spacing is that quantum (the add rounds half to even onto the grid, the subtraction is exact);
  ``C``'s bits are ``max(bits(a), bits(2**emin))``'s exponent field plus ``23 - mbits`` in it (three
  integer operations, no select); integers: ``rne(a * 2**mbits) * 2**-mbits``. ``rne(t) = (t + 2**23) - 2**23`` is exact RNE for
  ``0 <= t < 2**23`` (kernels are compiled with FP fusion off). That is
  :func:`round_elem_bits_f32`, every grid on every device; E4M3 and E5M2 elements on a GPU of
  compute capability 9.0+ (compiled, not interpreted) take the hardware conversion instead
  (``cvt.rn.satfinite`` to FP8 and back through f16: 3 instructions a pair of elements against
  ~11 an element), the same value for every fp32 input (a GPU test checks all 2**32).
* :func:`round_elem_nonneg_f32` ``(v, MAXN, EMIN, MBITS)``: :func:`round_elem_f32` of float
  elements for ``v >= +0`` (softmax weights): the same value, without the absolute value and the
  sign copy (three integer operations an element fewer); NaN stays NaN (any ``C`` added to it). :func:`round_elem_f32`'s
  float elements are this of ``|v|`` with ``v``'s sign.
* :func:`quantum_c_f32` ``(a, T_BITS, MBITS)``: the ``C`` above for ``a >= +0`` (or NaN) and the
  grid's smallest normal ``2**emin`` given by its bits ``T_BITS``.
* :func:`round_elem_sr_f32` ``(v, u, MAXN, EMIN, MBITS, IS_INT)``: stochastic rounding onto the
  same grid with uniform draws ``u``: ``t = a / quantum`` (exact), ``floor(t) + (u < t - floor(t))``
  (:func:`vllm_qdq.numerics.reference.round_to_elem_stochastic`).
* :func:`philox_uniform_f32` ``(seed_lo, seed_hi, idx)``: ``(philox(seed, idx) >> 8) * 2**-24``,
  Philox-4x32-10 with counter ``(idx lo, idx hi, 0, 0)`` and key ``(seed lo, seed hi)``, the first
  output word (:func:`vllm_qdq.numerics.reference.philox_uniform`; Triton's ``tl.randint``).
* :func:`bf16_rne_f32` ``(x)``: fp32 rounded to the nearest bf16 value, ties to even, kept in
  fp32 (finite inputs).

No Triton standard-library jit function is called, so the module can be reloaded under
``TRITON_INTERPRET=1`` in a process that imported Triton earlier (reload this module before
the kernels that use it).
"""

from __future__ import annotations

import torch

from .formats import SCALE_RULE_CODES

try:  # Triton is optional: without it the reference backend serves every call.
    import triton
    import triton.language as tl
    from triton.language.target_info import cuda_capability_geq
except ImportError:  # pragma: no cover - exercised only where Triton is missing
    triton = None
    tl = None

__all__ = [
    "SCALE_RULE_CODES",
    "bf16_rne_f32",
    "fp8_cvt_grid",
    "interpreting",
    "mx_exponent",
    "philox_uniform_f32",
    "pow2_f32",
    "quantum_c_f32",
    "round_elem_bits_f32",
    "round_elem_f32",
    "round_elem_nonneg_f32",
    "round_elem_sr_f32",
    "rule_code",
]


@torch.compiler.assume_constant_result
def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``, read by Triton).
    A constant to ``torch.compile`` (Dynamo cannot trace Triton's knob; the answer is fixed for a
    process once its kernels are decorated)."""
    if triton is None:
        return False
    return bool(triton.knobs.runtime.interpret)


#: Whether :func:`round_elem_f32` may take the GPU's FP8 conversion for E4M3 / E5M2 elements
#: (also needs compute capability 9.0+, checked when a kernel compiles): off under the
#: interpreter, whose FP8 casts are not the hardware's.
_FP8_CVT = None if tl is None else tl.constexpr(not interpreting())

if triton is not None:
    from triton.runtime.jit import constexpr_function

    @constexpr_function
    def fp8_cvt_grid(maxn, emin, mbits, is_int=False):
        """Whether :func:`round_elem_f32` rounds onto this element grid by the GPU's FP8
        conversion (E4M3: 448, emin -6, 3 bits; E5M2: 57344, -14, 2), compiled for compute
        capability 9.0+, not interpreted: a compile-time constant in a kernel. Not 8.9 (Ada):
        Triton 3.6 lowers the fp32 -> FP8 cast there as ``cvt.rz.f16.f32`` then
        ``cvt.rn.satfinite.e4m3x2.f16x2``, whose truncation to f16 first rounds near-ties the wrong
        way (~0.4% of fp32 inputs in E4M3's range, found in review by emulating it);
        ``scripts/check_triton_compile.py`` fails a kernel whose PTX converts to FP8 from f16."""
        if not _FP8_CVT or is_int or (mbits, emin, maxn) not in ((3, -6, 448.0), (2, -14, 57344.0)):
            return False
        return cuda_capability_geq(9, 0)


def rule_code(scale_rule: str) -> int:
    """The integer code of an (already validated) MX scale rule."""
    return SCALE_RULE_CODES[scale_rule]


if triton is not None:

    @triton.jit
    def pow2_f32(e):
        """Exact fp32 ``2**e`` for int32 ``e`` in [-127, 127] (-127: subnormal 0x00400000)."""
        bits = tl.where(e >= -126, (e + 127) << 23, 1 << 22)
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _log2_parts(a):
        """``(floor(log2 a), mantissa field != 0)`` of positive finite fp32 ``a``, exact.

        Subnormals are scaled by 2**64 first (exact), so the mantissa test means "not a power
        of two" for them too.
        """
        sub = a < 1.1754943508222875e-38  # 2**-126
        a = tl.where(sub, a * 18446744073709551616.0, a)  # * 2**64
        bits = a.to(tl.int32, bitcast=True)
        ex = ((bits >> 23) & 0xFF) - 127 - tl.where(sub, 64, 0)
        return ex, (bits & 0x7FFFFF) != 0

    @triton.jit
    def _rne_f32(t):
        """Round half to even to an integer, for ``0 <= t < 2**23`` (NaN stays NaN)."""
        return (t + 8388608.0) - 8388608.0

    @triton.jit
    def mx_exponent(amax, RULE: tl.constexpr, EMAX: tl.constexpr, MBITS: tl.constexpr, MAXN: tl.constexpr):
        """Unbiased E8M0 exponent (int32, [-127, 127]) of blocks with finite ``amax >= 0``.

        ``RULE``: 0 floor, 1 ceil, 2 even, 3 rceil; ``EMAX``, ``MBITS``, ``MAXN``: the element's
        largest normal exponent, mantissa bits and max_normal.
        """
        pos = amax > 0
        a = tl.where(pos, amax, 1.0)
        if RULE == 3:  # rceil: ceil(log2(fp32(amax / max_normal)))
            qt = tl.div_rn(a, tl.full(a.shape, MAXN, tl.float32))
            ex, frac = _log2_parts(tl.where(qt > 0, qt, 1.0))
            e = tl.where(qt > 0, ex + frac.to(tl.int32), -127)  # quotient underflow: smallest scale
        else:
            ex, frac = _log2_parts(a)
            if RULE == 0:
                e = ex - EMAX
            elif RULE == 1:
                e = ex + frac.to(tl.int32) - EMAX
            else:  # even: significand rounded to mbits + 1 bits, ties up (to 2.0)
                sub = a < 1.1754943508222875e-38
                bits = tl.where(sub, a * 18446744073709551616.0, a).to(tl.int32, bitcast=True)
                bump = (bits & 0x7FFFFF) >= 0x800000 - (0x800000 >> (MBITS + 1))
                e = ex + bump.to(tl.int32) - EMAX
        e = tl.where(pos, e, -127)
        return tl.minimum(tl.maximum(e, -127), 127)

    @triton.jit
    def round_elem_f32(v, MAXN: tl.constexpr, EMIN: tl.constexpr, MBITS: tl.constexpr, IS_INT: tl.constexpr):
        """RNE of fp32 ``v`` onto an element grid, saturating at ``MAXN``, sign (of 0) kept.

        ``EMIN``: smallest normal exponent (``1 - bias``; unused for integers); ``MBITS``:
        mantissa bits (integers: the grid step is ``2**-MBITS``); ``IS_INT``: integer element.
        E4M3 (448) and E5M2 (57344) on a GPU of compute capability 9.0 or more (not under the
        interpreter; :func:`fp8_cvt_grid`): the hardware conversion there and back (``cvt.rn.satfinite.e4m3x2.f32`` /
        ``e5m2x2``, then to f16 and fp32, all exact but the first), :func:`_round_elem_fp8_cvt`,
        the same value as the integer form, :func:`round_elem_bits_f32` (every fp32 input:
        ``tests/gpu/test_triton_qdq_gpu.py::test_fp8_cvt_equals_integer_rounding``).
        """
        if fp8_cvt_grid(MAXN, EMIN, MBITS, IS_INT):
            r = _round_elem_fp8_cvt(v, MBITS == 3)
        else:
            r = round_elem_bits_f32(v, MAXN, EMIN, MBITS, IS_INT)
        return r

    @triton.jit
    def _round_elem_fp8_cvt(v, E4M3: tl.constexpr):
        """``v`` to E4M3 (``E4M3``) or E5M2 by the GPU's conversion (round to nearest even,
        saturating to the largest finite value, NaN to NaN, the sign of zero kept) and back to
        fp32 (through f16, exact): two conversions a pair of elements and one an element."""
        if E4M3:
            r = v.to(tl.float8e4nv, fp_downcast_rounding="rtne").to(tl.float32)
        else:
            r = v.to(tl.float8e5, fp_downcast_rounding="rtne").to(tl.float32)
        return r

    @triton.jit
    def round_elem_bits_f32(v, MAXN: tl.constexpr, EMIN: tl.constexpr, MBITS: tl.constexpr, IS_INT: tl.constexpr):
        """:func:`round_elem_f32` by fp32 and integer arithmetic alone (every grid, every device,
        the interpreter)."""
        if IS_INT:
            a = tl.abs(v)
            a = tl.where(a > MAXN, MAXN, a)
            k = tl.full(a.shape, MBITS, tl.int32)  # constant-folded; powers of two: exact
            r = _rne_f32(a * pow2_f32(k)) * pow2_f32(-k)
        else:
            r = round_elem_nonneg_f32(tl.abs(v), MAXN, EMIN, MBITS)
        # sign by bits: Triton lowers unary minus to 0 - r, which loses the sign of zero
        sign = v.to(tl.int32, bitcast=True) & -2147483648
        return (r.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)

    @triton.jit
    def quantum_c_f32(a, T_BITS, MBITS: tl.constexpr):
        """``2**23`` times the grid quantum at ``a`` (fp32, ``>= +0`` or NaN), for ``(a + C) - C``:
        ``C = 2**(23 - MBITS + max(floor(log2 a), emin))`` where ``T_BITS`` (int32, a scalar or
        broadcast to ``a``) holds the bits of the grid's smallest normal ``2**emin`` (0: every ``a``
        on its own binade's spacing). Bits: ``max(bits(a), T_BITS)``'s exponent field plus ``23 -
        MBITS`` in it (nonnegative fp32 values order as their bits). For ``a`` in ``[2**k,
        2**(k+1))``, ``k >= emin``, ``a + C`` lies in ``[C, 2C)``, where fp32's spacing is
        ``2**(k - MBITS)``: the add rounds ``a`` half to even onto the grid and ``- C`` is exact;
        below ``2**emin`` the same at the fixed quantum. A NaN ``a`` (its exponent field all ones)
        makes the sum wrap to a finite negative ``C`` (the add is unsigned: a wrap, never an
        overflow, also in Triton's debug builds): NaN plus it stays NaN. For ``a`` below
        ``2**(105 + MBITS)`` (every caller saturates far below it); above, ``C``'s exponent wraps."""
        e = (tl.maximum(a.to(tl.int32, bitcast=True), T_BITS) & 0x7F800000).to(tl.uint32, bitcast=True)
        return (e + ((23 - MBITS) << 23)).to(tl.float32, bitcast=True)

    @triton.jit
    def round_elem_nonneg_f32(v, MAXN: tl.constexpr, EMIN: tl.constexpr, MBITS: tl.constexpr):
        """:func:`round_elem_f32` of float elements for ``v >= +0`` (no ``-0``, no negatives):
        saturated at ``MAXN`` (NaN fails the compare and stays NaN), then ``(a + C) - C`` with
        :func:`quantum_c_f32`'s ``C`` (a round-up never passes ``MAXN``, which is on the grid):
        three integer operations and two adds an element, no compare or select beyond the
        saturation (until 2026-12-05c: the mantissa rounded by integer ops in the normal range, and a
        select)."""
        a = tl.where(v > MAXN, MAXN, v)
        T: tl.constexpr = (EMIN + 127) << 23
        c = quantum_c_f32(a, T, MBITS)
        return (a + c) - c

    @triton.jit
    def round_elem_sr_f32(v, u, MAXN: tl.constexpr, EMIN: tl.constexpr, MBITS: tl.constexpr, IS_INT: tl.constexpr):
        """Stochastic rounding of fp32 ``v`` onto an element grid with draws ``u`` in [0, 1):
        up iff ``u < frac(|v| / quantum)``; saturating at ``MAXN`` first; sign (of 0) kept."""
        a = tl.abs(v)
        a = tl.where(a > MAXN, MAXN, a)
        if IS_INT:
            q = tl.full(a.shape, -MBITS, tl.int32)
        else:
            ex = ((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
            q = tl.maximum(ex, EMIN) - MBITS
        t = a * pow2_f32(-q)
        f = _rne_f32(t)
        f = tl.where(f > t, f - 1.0, f)  # floor(t), exact
        r = (f + tl.where(u < t - f, 1.0, 0.0)) * pow2_f32(q)
        sign = v.to(tl.int32, bitcast=True) & -2147483648
        return (r.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)

    @triton.jit
    def philox_uniform_f32(seed_lo, seed_hi, idx):
        """fp32 uniforms in [0, 1) from Philox-4x32-10 keyed by the seed words, counter ``idx`` (int64)."""
        c0 = idx.to(tl.uint32)
        c1 = (idx >> 32).to(tl.uint32)
        c2 = c0 * 0
        c3 = c0 * 0
        k0 = seed_lo.to(tl.uint32)
        k1 = seed_hi.to(tl.uint32)
        for _ in tl.static_range(10):
            _c0, _c2 = c0, c2
            c0 = tl.umulhi(_c2, 0xCD9E8D57) ^ c1 ^ k0
            c2 = tl.umulhi(_c0, 0xD2511F53) ^ c3 ^ k1
            c1 = _c2 * 0xCD9E8D57
            c3 = _c0 * 0xD2511F53
            k0 = k0 + 0x9E3779B9
            k1 = k1 + 0xBB67AE85
        return (c0 >> 8).to(tl.float32) * 5.960464477539063e-08  # 2**-24

    @triton.jit
    def bf16_rne_f32(x):
        """Round fp32 to the nearest bf16 value, ties to even, kept in fp32 (finite inputs)."""
        u = x.to(tl.uint32, bitcast=True)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        return u.to(tl.float32, bitcast=True)
