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
