"""One-line Triton kernels around each shared primitive, for the primitive tests (CPU interpreter and GPU).

Import (or reload) after ``vllm_qdq.numerics.triton_primitives`` was (re)loaded for the mode
the test runs in: the interpreter resolves a kernel's callees from its module's globals.
"""

from __future__ import annotations

import triton
import triton.language as tl
from vllm_qdq.numerics import triton_primitives as P


@triton.jit
def exp_kernel(a_ptr, e_ptr, RULE: tl.constexpr, EMAX: tl.constexpr, MBITS: tl.constexpr,
               MAXN: tl.constexpr, BLOCK: tl.constexpr):
    """``e[i] = mx_exponent(a[i])``."""
    i = tl.arange(0, BLOCK)
    tl.store(e_ptr + i, P.mx_exponent(tl.load(a_ptr + i), RULE, EMAX, MBITS, MAXN))


@triton.jit
def round_kernel(v_ptr, r_ptr, MAXN: tl.constexpr, EMIN: tl.constexpr, MBITS: tl.constexpr,
                 IS_INT: tl.constexpr, BLOCK: tl.constexpr):
    """``r[i] = round_elem_f32(v[i])``."""
    i = tl.arange(0, BLOCK)
    tl.store(r_ptr + i, P.round_elem_f32(tl.load(v_ptr + i), MAXN, EMIN, MBITS, IS_INT))


@triton.jit
def pow2_kernel(e_ptr, p_ptr, BLOCK: tl.constexpr):
    """``p[i] = 2**e[i]``."""
    i = tl.arange(0, BLOCK)
    tl.store(p_ptr + i, P.pow2_f32(tl.load(e_ptr + i)))


@triton.jit
def round_grid_kernel(v_ptr, r_ptr, n, MAXN: tl.constexpr, EMIN: tl.constexpr, MBITS: tl.constexpr,
                      IS_INT: tl.constexpr, BLOCK: tl.constexpr):
    """``r[i] = round_elem_f32(v[i])`` over ``n`` elements, BLOCK per program (GPU tests)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    tl.store(r_ptr + i, P.round_elem_f32(tl.load(v_ptr + i, mask=m, other=0.0), MAXN, EMIN, MBITS, IS_INT), mask=m)


@triton.jit
def fp8_cvt_vs_bits_kernel(out_ptr, base, MAXN: tl.constexpr, EMIN: tl.constexpr, MBITS: tl.constexpr,
                           BLOCK: tl.constexpr):
    """For the fp32 bit patterns ``base + program * BLOCK + i`` (``base`` an int64, the patterns
    taken mod 2**32): ``round_elem_f32`` (the GPU's FP8 conversion where it applies) against
    ``round_elem_bits_f32`` (integer arithmetic); adds the number that differ (NaN against NaN
    counts as equal) to ``out[0]`` and lowers ``out[1]`` to the first pattern that does."""
    i = base + tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    v = (i & 0xFFFFFFFF).to(tl.int32).to(tl.float32, bitcast=True)
    a = P.round_elem_f32(v, MAXN, EMIN, MBITS, False)
    b = P.round_elem_bits_f32(v, MAXN, EMIN, MBITS, False)
    same = (a.to(tl.int32, bitcast=True) == b.to(tl.int32, bitcast=True)) | ((a != a) & (b != b))
    bad = (~same).to(tl.int64)
    tl.atomic_add(out_ptr, tl.sum(bad))
    tl.atomic_min(out_ptr + 1, tl.min(tl.where(same, 1 << 40, i)))
