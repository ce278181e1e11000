"""Test kernels around helpers of :mod:`vllm_qdq.numerics.triton_qdq` (the QDQ kernel tests, CPU and GPU).

Import (or reload) after ``triton_qdq`` was (re)loaded for the mode the test runs in: the
interpreter resolves a kernel's callees from its module's globals.
"""

from __future__ import annotations

import triton
import triton.language as tl
from vllm_qdq.numerics import triton_qdq as TQ


@triton.jit
def div_f64_kernel(a_ptr, b_ptr, q_ptr, n, BLOCK: tl.constexpr):
    """``q[i] = _div_rn_f64(a[i], b[i], *_recip2_f64(b[i]))`` in float64 with fp32 ``a`` (as the kernels call it)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    a = tl.load(a_ptr + i, mask=m, other=0.0)
    b = tl.load(b_ptr + i, mask=m, other=1.0)
    rb, rb_lo = TQ._recip2_f64(b)
    tl.store(q_ptr + i, TQ._div_rn_f64(a, b, rb, rb_lo), mask=m)


@triton.jit
def div_f32_kernel(a_ptr, b_ptr, q_ptr, n, BLOCK: tl.constexpr):
    """``q[i] = _div_rn(a[i], b[i], div_rn(1, b[i]))`` in fp32 (fp32, as the per-token kernel calls it)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    a = tl.load(a_ptr + i, mask=m, other=0.0)
    b = tl.load(b_ptr + i, mask=m, other=1.0)
    tl.store(q_ptr + i, TQ._div_rn(a, b, tl.div_rn(tl.full(b.shape, 1.0, tl.float32), b)), mask=m)
