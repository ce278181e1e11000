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


@triton.jit
def scaled_paths_kernel(x_ptr, amax_ptr, fast_ptr, slow_ptr, n, SPEC: tl.constexpr, BLOCK: tl.constexpr):
    """Both forms of a float64 recipe's QDQ, element by element with each element's own group
    ``amax`` (fp32 inputs holding 16-bit values): ``fast`` = ``_scaled_qdq_narrow`` (the fp32 form),
    ``slow`` = ``_scaled_qdq_f64`` (the reference's float64 order), each cast to the output dtype."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    x = tl.load(x_ptr + i, mask=m, other=0.0)
    amax = tl.load(amax_ptr + i, mask=m, other=1.0)
    s = TQ._scaled_scale(amax, SPEC)
    tl.store(fast_ptr + i, TQ._to_out(TQ._scaled_qdq_narrow(x, amax, s, SPEC), fast_ptr.dtype.element_ty), mask=m)
    tl.store(slow_ptr + i, TQ._to_out(TQ._scaled_qdq_f64(x, s, SPEC), slow_ptr.dtype.element_ty), mask=m)


@triton.jit
def nan_qdq_f64(x, s, SPEC: tl.constexpr):
    """A stand-in for ``_scaled_qdq_f64`` that marks where it ran: NaN everywhere."""
    return tl.full(x.shape, float("nan"), tl.float32) + 0.0 * x


@triton.jit
def scale_kernel(amax_ptr, s_ptr, n, SPEC: tl.constexpr, BLOCK: tl.constexpr):
    """``s[i] = _scaled_scale(amax[i])``: a SCALED recipe's float64 group scale from an fp32 amax."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    tl.store(s_ptr + i, TQ._scaled_scale(tl.load(amax_ptr + i, mask=m, other=1.0), SPEC), mask=m)


@triton.jit
def grid_barrier_kernel(bar_ptr, out_ptr, n):
    """``_grid_barrier(bar_ptr, n)`` alone (as a program of an ``n``-program grid), then ``out[0] = 1``:
    the program got through."""
    TQ._grid_barrier(bar_ptr, n)
    tl.store(out_ptr, 1)


@triton.jit
def grid_barrier_stress_kernel(bar_ptr, slots_ptr, err_ptr, rounds, N_MAX: tl.constexpr):
    """``rounds`` rounds of ``_grid_barrier`` over the whole grid (``n`` programs, ``n <= N_MAX``):
    each round every program stores a tag of the round and its id (``r * n + pid``) in its slot of
    the round's half of ``slots`` (two halves of ``N_MAX`` words, by the round's parity: a program a
    round ahead writes the other half, which nobody still reads), meets the others at the barrier,
    then reads every slot of that half at the L2 (``.cg``, as ``_grid_stats`` reads the pairs) and
    counts the tags that are not the round's; ``err[pid]`` = its count over all rounds. Any store
    not visible after the barrier, or a program let through early, shows as a count."""
    pid = tl.program_id(0)
    n = tl.num_programs(0)
    p = tl.arange(0, N_MAX)
    errs = tl.zeros([N_MAX], tl.int32)
    for r in range(rounds):
        half = slots_ptr + (r % 2) * N_MAX
        tl.store(half + pid, r * n + pid)
        TQ._grid_barrier(bar_ptr, n)
        v = tl.load(half + p, mask=p < n, other=0, cache_modifier=".cg")
        errs += tl.where((p < n) & (v != r * n + p), 1, 0)
    tl.store(err_ptr + pid, tl.sum(errs, 0))


@triton.jit
def tile_amax_bits_kernel(x_ptr, o_ptr, N: tl.constexpr, PART: tl.constexpr):
    """``o = (amax bits, bad)`` of ``_tile_amax_bits`` over the ``N`` fp32 values at ``x``, in runs of ``PART``."""
    amax, bad = TQ._tile_amax_bits(tl.load(x_ptr + tl.arange(0, N)), N, PART)
    tl.store(o_ptr, amax)
    tl.store(o_ptr + 1, bad.to(tl.int32))
