"""Triton forward kernel of sage3 quantized attention (CUDA, or ``TRITON_INTERPRET=1`` on CPU).

Numerics: exactly the algorithm of :mod:`vllm_qdq.sage3.numerics.reference` (read its docstring), in
the same order:

1. K smoothing: ``Ks = K - mean_s(K)`` (fp32 mean over the key sequence per batch, KV head,
   channel, in the reference's order: :func:`sage3_k_mean`, two launches; exact for softmax).
2. A fused pre-pass kernel (:func:`_qdq_prepass_kernel`, one launch for all three operands) quantizes
   Q and Ks per block along the head dim and V per block along the token dim (32 tokens of one
   channel; 16 for NVFP4) once (Q in the attention kernel instead with :data:`FUSE_Q`), writing ``element * block scale`` ("raw", exact in bf16) to a
   ``[B, H, S, D]`` buffer; NVFP4's per-tensor factors ``1/gs`` are folded into the logit
   factor ``c`` (Q, K) and the epilogue (V).
3. The attention kernel (:func:`_sage3_fwd_kernel`) runs online softmax over key tiles of
   ``BLOCK_N = 64`` keys and quantizes only P inside the loop: per row, per block of 32 (16)
   keys, relative to the running max; two-level for ``mxfp4`` (P * 6, then MX E8M0) and
   ``nvfp4`` (fixed tensor amax 1, i.e. ``gs = 2688``, then E4M3 per 16), single level for
   ``_s1``. Keys past the sequence end and causally masked keys give ``p = 0`` exactly.
4. Accumulation: ``fp32`` (bf16 MMA operands - exact - with fp32 accumulators),
   ``bf16_pv_only`` (``Praw @ Vraw`` rounded to bf16, running accumulator held in bf16),
   ``bf16_both_dot`` (also each ``Qraw @ Ksraw^T`` tile rounded to bf16).

Element rounding and MX exponents: the shared primitives of
:mod:`vllm_qdq.numerics.triton_primitives` (the QDQ kernels use the same ones): ``v = x * 2**-e``
(``e`` the block exponent, exact), RNE of ``v`` onto the element grid saturating at
``max_normal``, then ``* 2**e``; the exponent from the ``SAGE3_SCALE_RULE`` rule (OCP ``floor``
by default; ``ceil`` / ``even`` / ``rceil``) with the bit arithmetic of
:func:`vllm_qdq.numerics.reference.mx_scale_exponent`, clamped to [-127, 127]. The E4M3 NVFP4
block scale uses the same rounding with E4M3's ``emin`` / ``mbits``.
All constants come from :mod:`vllm_qdq.numerics.formats`.

Every kernel is compiled with FP fusion off (``enable_fp_fusion=False``, as the QDQ kernels are):
each product is rounded before the sum it feeds, as in the reference. With fusion on, the full
key tiles' ``s * c - m`` became one FMA, so the row max's ``p`` came out ``exp2(rounding error of
s * c)`` = ``1 +- 2**-24`` instead of 1: a block amax just below 1 takes the next E8M0 exponent
down under ``floor`` (P's maximum then saturates at ``max_normal * 2**e``, e.g. 0.875 for
``mxfp8_s1``), and ``rceil`` moves likewise at ``amax / max_normal`` = 1 (found on the H200,
2026-12-04: ``_s1`` formats 0.015-0.064 relative from the reference).

Under ``TRITON_INTERPRET=1`` the MMA operands are fp32 (the interpreter's bf16 ``tl.dot`` is
not usable); the values are the same, since every raw operand is exactly representable in bf16.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ...numerics.formats import ELEMENTS, Family, check_scale_rule
from ...numerics.triton_primitives import (
    bf16_rne_f32,
    fp8_cvt_grid,
    interpreting,
    mx_exponent,
    pow2_f32,
    quantum_c_f32,
    round_elem_f32,
    round_elem_nonneg_f32,
    rule_code,
)
from ...numerics.triton_qdq import _ALIGN, _full_args, _hooks_idle, _replay_entry
from .reference import (
    BLOCK_N,
    KMEAN_ROWS,
    KMEAN_TILES,
    LOG2E,
    check_acc_dtype,
    get_sage3_format,
)

__all__ = ["SUPPORTED_DTYPES", "SUPPORTED_HEAD_DIMS", "interpreting", "sage3_attention", "sage3_k_mean", "sage3_prepass"]

#: Head dims the kernel runs (others fall back to SDPA in the backend).
SUPPORTED_HEAD_DIMS: tuple[int, ...] = (32, 64, 128)
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)

_E2M1 = ELEMENTS["e2m1"]
_E4M3 = ELEMENTS["e4m3"]
_NVFP4_P_GS = 448.0 * 6.0  # NVFP4 global scale of P (tensor amax fixed to 1)


# ----------------------------------------------------------------------------- device helpers
# The MX exponent, the element rounding and 2**e are the shared primitives of
# vllm_qdq.numerics.triton_primitives (the QDQ kernels use the same ones).


@triton.jit
def _mx_qdq(x3, AXIS: tl.constexpr, EMAX: tl.constexpr, EMIN: tl.constexpr, MBITS: tl.constexpr,
            MAXN: tl.constexpr, RULE: tl.constexpr):
    """OCP MX QDQ of blocks running along ``AXIS`` of a 3-D fp32 tensor (scale rule code ``RULE``)."""
    return _mx_qdq_amax(x3, tl.max(tl.abs(x3), axis=AXIS), AXIS, EMAX, EMIN, MBITS, MAXN, RULE)


@triton.jit
def _mx_qdq_amax(x3, amax, AXIS: tl.constexpr, EMAX: tl.constexpr, EMIN: tl.constexpr, MBITS: tl.constexpr,
                 MAXN: tl.constexpr, RULE: tl.constexpr):
    """:func:`_mx_qdq` with each block's ``max |x|`` given (``amax``: ``x3`` reduced along ``AXIS``)."""
    e = mx_exponent(amax, RULE, EMAX, MBITS, MAXN)
    e = tl.expand_dims(e, AXIS)
    q = round_elem_f32(x3 * pow2_f32(-e), MAXN, EMIN, MBITS, False)
    return q * pow2_f32(e)


@triton.jit
def _mx_qdq_nonneg(x3, AXIS: tl.constexpr, EMAX: tl.constexpr, EMIN: tl.constexpr, MBITS: tl.constexpr,
                   MAXN: tl.constexpr, RULE: tl.constexpr):
    """:func:`_mx_qdq` of values ``>= +0`` (P), rounded where they lie instead of scaled by
    ``2**-e``, rounded and scaled back: the mantissa bits and the rounding of a value do not change
    under a power-of-two scaling, so the element grid's thresholds move instead (saturation at
    ``MAXN * 2**e``, the element's normal range from ``2**(EMIN + e)``, its subnormal quantum from
    ``C = 2**(23 + EMIN - MBITS + e)``): the same numbers, two multiplies an element fewer. Exact
    while the block's ``2**(EMIN + e)`` is a normal fp32 number, which holds for every block of amax
    at least ``2**-100`` of the elements P is quantized to here (E2M1, E4M3: ``EMIN + e >= -114``;
    not E5M2, whose blocks reach -129 there); below that the contract allows other roundings; zeros
    and NaN as before. Each
    element is rounded by ``(a + C) - C`` with its binade's ``C`` (:func:`quantum_c_f32`, from the
    block's ``2**(EMIN + e)`` by bits; 0 where that is below fp32's normal range): three integer
    operations and two adds an element, no compare or select (until 2026-12-05c: the mantissa
    rounded by integer ops in the normal range, and a select)."""
    return _mx_qdq_nonneg_amax(x3, tl.max(x3, axis=AXIS), AXIS, EMAX, EMIN, MBITS, MAXN, RULE)


@triton.jit
def _mx_qdq_nonneg_amax(x3, amax, AXIS: tl.constexpr, EMAX: tl.constexpr, EMIN: tl.constexpr,
                        MBITS: tl.constexpr, MAXN: tl.constexpr, RULE: tl.constexpr):
    """:func:`_mx_qdq_nonneg` with each block's maximum given (``amax``: ``x3`` reduced along ``AXIS``)."""
    e = mx_exponent(amax, RULE, EMAX, MBITS, MAXN)
    hi = pow2_f32(e + EMAX) * (MAXN / 2.0**EMAX)  # MAXN * 2**e, exact (e + EMAX >= -125)
    lo = e + EMIN
    t_bits = tl.where(lo >= -126, (lo + 127) << 23, 0)  # bits of 2**(EMIN + e), normal; else 0
    hi = tl.expand_dims(hi, AXIS)
    t_bits = tl.expand_dims(t_bits, AXIS)
    a = tl.minimum(x3, hi, propagate_nan=tl.PropagateNan.ALL)  # a NaN stays NaN
    c = quantum_c_f32(a, t_bits, MBITS)
    return (a + c) - c


@triton.jit
def _nvfp4_raw(x3, gs, inv_gs, AXIS: tl.constexpr, NONNEG: tl.constexpr = False):
    """NVFP4 of blocks along ``AXIS``: returns e2m1 * e4m3 block scale (without 1/gs).
    ``NONNEG``: every value is ``>= +0`` (P), the same numbers with fewer operations."""
    if NONNEG:
        a = x3
    else:
        a = tl.abs(x3)
    s = tl.minimum(gs * (tl.max(a, axis=AXIS) * 0.16666666666666666), 448.0)
    s8 = round_elem_nonneg_f32(s, 448.0, -6, 3)  # E4M3: emin -6, 3 mantissa bits (0 <= s <= 448 already)
    nz = s8 != 0
    inv = tl.where(nz, tl.math.div_rn(tl.full(s8.shape, 1.0, tl.float32), tl.where(nz, s8, 1.0) * inv_gs), 0.0)
    if NONNEG:
        q = round_elem_nonneg_f32(x3 * tl.expand_dims(inv, AXIS), 6.0, 0, 1)  # E2M1: emin 0, 1 mantissa bit
    else:
        q = round_elem_f32(x3 * tl.expand_dims(inv, AXIS), 6.0, 0, 1, False)
    return q * tl.expand_dims(s8, AXIS)


#: The table reads of the attention loop go through inline PTX on a CUDA GPU (``tl.load`` under the
#: interpreter and on ROCm, where the loop's pipelining has not been seen to fail)
_TABLE_ASM = tl.constexpr(not interpreting() and torch.version.hip is None)


@triton.jit
def _table_f32(ptrs):
    """The fp32 words at ``ptrs`` (a small read-only table, L1-resident): on the GPU by inline PTX
    (``ld.global.nc.f32``), which Triton 3.6's software pipeliner leaves alone (a ``tl.load`` in the
    attention loop made it try to pipeline the table read and fail on the loop's dots: "pipeliner
    doesn't know how to predicate this op"); ``tl.load`` under the interpreter."""
    if _TABLE_ASM:
        return tl.inline_asm_elementwise("ld.global.nc.f32 $0, [$1];", "=r,l", [ptrs], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.load(ptrs)


@triton.jit
def _nvfp4_p_raw(p3, tab_ptr, PAIRS: tl.constexpr = True):
    """:func:`_nvfp4_raw` of P (values ``>= +0``, blocks of 16 along axis 2, ``gs = 2688``): the same
    numbers, with each block's ``div_rn(1, s8 * fp32(1/gs))`` read from ``tab_ptr`` (one
    ``(quotient, s8)`` pair per E4M3 code of ``s8``: :func:`_nvfp4_p_scale_table`) instead of divided
    (a division a block, 8 a thread in each key tile), and with ``PAIRS`` ``s8`` read beside it
    instead of converted back (:func:`_nvfp4_p_scales`)."""
    return _nvfp4_p_raw_amax(p3, tl.max(p3, axis=2), tab_ptr, PAIRS)


#: :func:`_nvfp4_p_scales` on the GPU (compute capability 9.0+), two block scales at a time (``$4``,
#: ``$5``: fp32, ``>= +0`` or NaN; ``$6``, ``$7``: the table's address): their E4M3 codes by one
#: hardware conversion (round to nearest even, saturating at 448) into the two bytes of a word, each
#: byte taken out by a ``prmt``, then each code's ``(inv, s8)`` pair in one 8-byte read (``$0``,
#: ``$2`` and ``$1``, ``$3``). Per two blocks one conversion, two byte selects, two 64-bit addresses
#: and two reads, where a conversion, the codes' extraction, the addresses, two 4-byte reads and the
#: conversion of each ``s8`` back to fp32 (``F2FP`` unpack, ``HADD2.F32``) took more: the loop
#: 741 -> 713 SASS instructions an iteration (sm_90, D=128, BLOCK_M 128).
_P_SCALES_PTX = tl.constexpr("""{
.reg .b16 t16, z16;
.reg .b32 t32, c0, c1;
.reg .b64 a0, a1;
cvt.rn.satfinite.e4m3x2.f32 t16, $5, $4;
mov.b16 z16, 0;
mov.b32 t32, {t16, z16};
prmt.b32 c0, t32, 0, 0x4440;
prmt.b32 c1, t32, 0, 0x4441;
mad.wide.u32 a0, c0, 8, $6;
mad.wide.u32 a1, c1, 8, $7;
ld.global.nc.v2.f32 {$0, $2}, [a0];
ld.global.nc.v2.f32 {$1, $3}, [a1];
}""")


@triton.jit
def _nvfp4_p_scales(s, tab_ptr, PAIRS: tl.constexpr = True):
    """``(inv, s8)`` of P's NVFP4 blocks from their unclamped scales ``s = 2688 * (amax * fp32(1/6))``
    (fp32, ``amax`` a block's largest P in [0, 1]): ``s8 = e4m3(min(s, 448))`` (round to nearest
    even) and ``inv = div_rn(1, s8 * fp32(1/2688))`` (0 where ``s8 == 0``), both read from the table
    at ``s8``'s code (:func:`_nvfp4_p_scale_table`). On a GPU with the FP8 conversion
    (:func:`~vllm_qdq.numerics.triton_primitives.fp8_cvt_grid`) by :data:`_P_SCALES_PTX`, whose
    saturating conversion is the ``min`` (``s`` exceeds 448 only by rounding: 448.00003 at ``amax =
    1``). Elsewhere the code from the rounded ``s8``'s bits and the quotient read by
    :func:`_table_f32`. ``PAIRS`` False (:data:`P_SCALE_PAIRS`): the form before it, on a GPU too: the
    E4M3 conversion by Triton's cast, the code from its byte, the quotient alone read by
    :func:`_table_f32` and ``s8`` converted back from E4M3. The same numbers either way for every
    finite ``amax``; a NaN ``amax`` (a block whose P holds a NaN: its row's output is NaN either way)
    reads a NaN pair with ``PAIRS`` (code 127, or 255 for a negative NaN), as the reference's
    ``min`` keeps a NaN, and the other forms' ``tl.minimum`` makes it 448."""
    if _TABLE_ASM and fp8_cvt_grid(448.0, -6, 3):
        if PAIRS:
            # pack=2: each thread holds an even count of block scales (8 a key tile); an odd count
            # would hand the PTX an undefined address for its last, unpaired element
            inv, s8 = tl.inline_asm_elementwise(_P_SCALES_PTX, "=r,=r,=r,=r,r,r,l,l", [s, tab_ptr.to(tl.int64)],
                                                dtype=(tl.float32, tl.float32), is_pure=True, pack=2)
        else:
            s8b = tl.minimum(s, 448.0).to(tl.float8e4nv, fp_downcast_rounding="rtne")
            s8 = s8b.to(tl.float32)
            # the pair's first word, through a pointer to 8-byte entries: the address arithmetic of
            # the form before (one LEA pair), so that the A/B baseline is that loop (741 SASS
            # instructions; ``tab_ptr + 2 * code`` compiled to 753)
            pairs = tab_ptr.to(tl.pointer_type(tl.int64), bitcast=True)
            inv = _table_f32(pairs + s8b.to(tl.uint8, bitcast=True).to(tl.int32))
    else:
        s8 = round_elem_nonneg_f32(tl.minimum(s, 448.0), 448.0, -6, 3)  # E4M3: emin -6, 3 mantissa bits
        bits = s8.to(tl.int32, bitcast=True)
        # normal (>= 2**-6): exponent field (fp32's - 120) and 3 mantissa bits; subnormal: m * 2**-9
        code = tl.where(s8 >= 0.015625, (((bits >> 23) - 120) << 3) | ((bits >> 20) & 7), (s8 * 512.0).to(tl.int32))
        inv = _table_f32(tab_ptr + 2 * code)
    return inv, s8


@triton.jit
def _nvfp4_p_raw_amax(p3, amax, tab_ptr, PAIRS: tl.constexpr = True):
    """:func:`_nvfp4_p_raw` with each block's maximum given (``amax``: ``p3`` reduced along axis 2)."""
    inv, s8 = _nvfp4_p_scales(2688.0 * (amax * 0.16666666666666666), tab_ptr, PAIRS)
    q = round_elem_nonneg_f32(p3 * tl.expand_dims(inv, 2), 6.0, 0, 1)  # E2M1: emin 0, 1 mantissa bit
    return q * tl.expand_dims(s8, 2)


_P_TAB: dict[torch.device, torch.Tensor] = {}
#: fp32(1 / gs) of P's NVFP4 (gs = 2688), as the kernel holds it
_P_INV_GS = 0.00037202380952380953


def _nvfp4_p_scale_table(device: torch.device) -> torch.Tensor:
    """``[512]`` fp32, cached per device: for each E4M3 code ``c`` (0 to 255) of a block scale ``s8``,
    the pair at ``2c``, ``2c + 1``: ``div_rn(1, fp32(s8 * fp32(1/2688)))`` (0 for ``s8 = +-0``) and
    ``s8`` itself; E4M3's NaN codes (127, 255) hold two NaNs. The quotient is the one
    :func:`_nvfp4_raw` divides for P, computed once in IEEE fp32 (torch's CPU division is correctly
    rounded). P's scales are ``>= +0``: the codes above 127 (negative) are read only for a NaN of
    either sign, and are there so that no code reads past the table. Read only; 8-byte aligned (a
    fresh CUDA allocation), as the pair's one read needs."""
    t = _P_TAB.get(device)
    if t is None:
        s8 = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).to(torch.float32)
        prod = s8 * torch.tensor(_P_INV_GS, dtype=torch.float32)
        inv = torch.where(s8 != 0, torch.tensor(1.0, dtype=torch.float32) / torch.where(s8 != 0, prod, 1.0), 0.0)
        t = _P_TAB[device] = torch.stack([inv, s8], dim=1).reshape(512).to(device)
    return t


# ----------------------------------------------------------------------------- K mean


@triton.jit
def _pair_sum(x, N: tl.constexpr, D: tl.constexpr):
    """``[N, D]`` -> ``[N/2, D]``: row ``2i`` plus row ``2i + 1`` (fp32, left operand first)."""
    y = tl.permute(tl.reshape(x, (N // 2, 2, D)), (0, 2, 1))
    a, b = tl.split(y)
    return a + b


@triton.jit
def _k_mean_part_kernel(
    k_ptr, part_ptr, S, HKV, NPARTS, skb, sks, skh,
    D: tl.constexpr, ROWS: tl.constexpr, TILES: tl.constexpr,
):
    """One part's sum of ``k [B, S, HKV, D]`` (``TILES`` tiles of ``ROWS`` rows from part
    ``program_id(0)``, one (batch, KV head) a ``program_id(1)``) into ``part [B*HKV, NPARTS, D]``
    (fp32), in :func:`vllm_qdq.sage3.numerics.reference.k_mean`'s order: tiles added row by row,
    then the rows pairwise; rows past ``S`` load as ``-0.0``."""
    tl.static_assert(ROWS == 64)
    # -0.0 from its bits: Triton 3.6 folds a -0.0 literal (a load's ``other`` among them) to +0.0
    neg0 = tl.full((ROWS, D), -2147483648, tl.int32).to(tl.float32, bitcast=True)
    pid_p = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HKV
    h = bh % HKV
    offs_r = tl.arange(0, ROWS)
    offs_d = tl.arange(0, D)
    base = k_ptr + b.to(tl.int64) * skb + h * skh
    rows = pid_p * (TILES * ROWS) + offs_r
    ok = rows[:, None] < S
    acc = tl.load(base + rows[:, None].to(tl.int64) * sks + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
    acc = tl.where(ok, acc, neg0)  # rows past S: -0.0, the reference's padding
    for t in tl.static_range(1, TILES):
        rows = (pid_p * TILES + t) * ROWS + offs_r
        ok = rows[:, None] < S
        x = tl.load(base + rows[:, None].to(tl.int64) * sks + offs_d[None, :], mask=ok, other=0.0)
        acc = tl.where(ok, acc + x.to(tl.float32), acc)  # adding the padding's -0.0 leaves acc as it was
    acc = _pair_sum(acc, 64, D)
    acc = _pair_sum(acc, 32, D)
    acc = _pair_sum(acc, 16, D)
    acc = _pair_sum(acc, 8, D)
    acc = _pair_sum(acc, 4, D)
    acc = _pair_sum(acc, 2, D)  # [1, D]
    tl.store(part_ptr + (bh.to(tl.int64) * NPARTS + pid_p) * D + offs_d[None, :], acc)


@triton.jit
def _k_mean_final_kernel(part_ptr, mean_ptr, S, NPARTS, D: tl.constexpr, CHUNK: tl.constexpr):
    """``mean [B*HKV, D]`` (fp32) from the parts of one (batch, KV head) a program: added in
    order, the first part's first (``CHUNK`` parts' loads issued together), then divided by ``S``
    (correctly rounded)."""
    bh = tl.program_id(0)
    offs_d = tl.arange(0, D)
    src = part_ptr + bh.to(tl.int64) * NPARTS * D + offs_d
    total = tl.load(src)
    for c in range(0, NPARTS, CHUNK):
        for i in tl.static_range(CHUNK):
            j = c + i
            jj = tl.full((D,), 0, tl.int32) + j
            ok = (jj > 0) & (jj < NPARTS)  # part 0 is already in; none past NPARTS (kept out by select)
            x = tl.load(src + j * D, mask=ok, other=0.0)
            total = tl.where(ok, total + x, total)
    s_f = tl.zeros((), tl.float32) + S  # S as fp32 (exact below 2**24; S may arrive as a constexpr 1)
    tl.store(mean_ptr + bh * D + offs_d, tl.math.div_rn(total, s_f))


# ----------------------------------------------------------------------------- pre-pass


@triton.jit
def _load_tile(x_ptr, mean_ptr, pid_s, pid_bh, S, H, sxb, sxs, sxh,
               D: tl.constexpr, BLOCK_S: tl.constexpr, SMOOTH: tl.constexpr):
    """``[BLOCK_S, D]`` fp32 tile of ``x [B, S, H, D]`` (rows past S are 0), smoothed when SMOOTH."""
    b = pid_bh // H
    h = pid_bh % H
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, D)
    row_ok = offs_s[:, None] < S
    x = tl.load(x_ptr + b.to(tl.int64) * sxb + h * sxh + offs_s[:, None].to(tl.int64) * sxs + offs_d[None, :],
                mask=row_ok, other=0.0)
    x = x.to(tl.float32)
    if SMOOTH:
        mean = tl.load(mean_ptr + pid_bh * D + offs_d)
        x = tl.where(row_ok, x - mean[None, :], 0.0)
    return x, offs_s, offs_d, row_ok


@triton.jit
def _amax_tile(x_ptr, mean_ptr, amax_ptr, pid_s, pid_bh, S, H, sxb, sxs, sxh,
               D: tl.constexpr, BLOCK_S: tl.constexpr, SMOOTH: tl.constexpr):
    x, _, _, _ = _load_tile(x_ptr, mean_ptr, pid_s, pid_bh, S, H, sxb, sxs, sxh, D, BLOCK_S, SMOOTH)
    a = tl.abs(x)
    a = tl.where(a < float("inf"), a, 0.0)  # NaN and +-Inf do not count
    tl.atomic_max(amax_ptr, tl.max(tl.max(a, 1), 0).to(tl.int32, bitcast=True))


@triton.jit
def _nvfp4_amax_kernel(
    # pointers: q [B, S, HQ, D], k / v [B, S, HKV, D], mean [B, HKV, D] fp32, g [3, 3] int32
    q_ptr, k_ptr, v_ptr, mean_ptr, g_ptr,
    # sizes and strides (elements; the head dim is contiguous)
    S, HQ, HKV, BHQ, BHKV, sqb, sqs, sqh, skb, sks, skh, svb, svs, svh,
    D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """NVFP4 tensor amax of Q, smoothed K and V (finite values only) into ``g[i, 0]`` (int32, the fp32
    bits), all three in one launch (axis 1: Q's ``B*HQ`` programs, then K's and V's ``B*HKV``).

    Each tile's max goes through ``atomic_max`` on the bit pattern, which orders like the value for
    non-negative floats: the result is exact and independent of the order tiles finish in."""
    pid_s = tl.program_id(0)
    pid = tl.program_id(1)
    if pid < BHQ:
        _amax_tile(q_ptr, mean_ptr, g_ptr, pid_s, pid, S, HQ, sqb, sqs, sqh, D, BLOCK_S, False)
    elif pid < BHQ + BHKV:
        _amax_tile(k_ptr, mean_ptr, g_ptr + 3, pid_s, pid - BHQ, S, HKV, skb, sks, skh, D, BLOCK_S, True)
    else:
        _amax_tile(v_ptr, mean_ptr, g_ptr + 6, pid_s, pid - BHQ - BHKV, S, HKV, svb, svs, svh, D, BLOCK_S, False)


@triton.jit
def _nvfp4_global_scales(amax_ptr):
    """``(gs, 1/gs)`` from the tensor amax bits: ``gs = 2688 / amax`` (1 for amax 0), both divisions
    correctly rounded, as :func:`vllm_qdq.sage3.numerics.reference.nvfp4_global_scales` computes them."""
    a = tl.load(amax_ptr).to(tl.float32, bitcast=True)
    one = tl.full((), 1.0, tl.float32)
    gs = tl.where(a == 0.0, one, tl.math.div_rn(tl.full((), 2688.0, tl.float32), tl.where(a == 0.0, one, a)))
    return gs, tl.math.div_rn(one, gs)


@triton.jit
def _prepass_tile(
    x_ptr, mean_ptr, g_ptr, out_ptr, pid_s, pid_bh,
    S, H, sxb, sxs, sxh,
    D: tl.constexpr, BLOCK_S: tl.constexpr, BLK: tl.constexpr,
    SEQ_AXIS: tl.constexpr, SMOOTH: tl.constexpr, NVFP4: tl.constexpr,
    EMAX: tl.constexpr, EMIN: tl.constexpr, MBITS: tl.constexpr, MAXN: tl.constexpr, RULE: tl.constexpr,
):
    """QDQ one ``[BLOCK_S, D]`` tile of ``x [B, S, H, D]`` into ``out [B, H, S, D]`` (raw).

    NVFP4: ``g_ptr`` holds the tensor amax bits (int32, from :func:`_nvfp4_amax_kernel`); the
    global scales are computed here, and the operand's program (0, 0) writes ``[gs, 1/gs]`` (fp32
    bits) over ``g_ptr[1:3]`` for the attention kernel and the caller."""
    x, offs_s, offs_d, row_ok = _load_tile(x_ptr, mean_ptr, pid_s, pid_bh, S, H, sxb, sxs, sxh, D, BLOCK_S, SMOOTH)
    if NVFP4:
        gs, inv_gs = _nvfp4_global_scales(g_ptr)
        if (pid_s == 0) & (pid_bh == 0):
            tl.store(g_ptr + 1, gs.to(tl.int32, bitcast=True))
            tl.store(g_ptr + 2, inv_gs.to(tl.int32, bitcast=True))
    else:
        gs = 1.0
        inv_gs = 1.0
    if SEQ_AXIS:  # V: blocks of BLK tokens per channel
        x3 = tl.reshape(x, (BLOCK_S // BLK, BLK, D))
        if NVFP4:
            r3 = _nvfp4_raw(x3, gs, inv_gs, 1)
        else:
            r3 = _mx_qdq(x3, 1, EMAX, EMIN, MBITS, MAXN, RULE)
    else:  # Q, K: blocks of BLK channels per token
        x3 = tl.reshape(x, (BLOCK_S, D // BLK, BLK))
        if NVFP4:
            r3 = _nvfp4_raw(x3, gs, inv_gs, 2)
        else:
            r3 = _mx_qdq(x3, 2, EMAX, EMIN, MBITS, MAXN, RULE)
    r = tl.reshape(r3, (BLOCK_S, D))
    dst = out_ptr + pid_bh.to(tl.int64) * S * D + offs_s[:, None] * D + offs_d[None, :]
    tl.store(dst, r.to(out_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _qdq_prepass_kernel(
    # pointers: inputs q [B, S, HQ, D], k / v [B, S, HKV, D]; mean [B, HKV, D] fp32; NVFP4 g [3, 3]
    # int32 (MX: unused); outputs oq [B, HQ, S, D], ok / ov [B, HKV, S, D]
    q_ptr, k_ptr, v_ptr, mean_ptr, g_ptr, oq_ptr, ok_ptr, ov_ptr,
    # sizes and strides (elements; the head dim is contiguous)
    S, HQ, HKV, BHQ, BHKV, sqb, sqs, sqh, skb, sks, skh, svb, svs, svh,
    # meta-parameters
    D: tl.constexpr, BLOCK_S: tl.constexpr, BLK: tl.constexpr, NVFP4: tl.constexpr,
    EMAX: tl.constexpr, EMIN: tl.constexpr, MBITS: tl.constexpr, MAXN: tl.constexpr, RULE: tl.constexpr,
    WITH_Q: tl.constexpr = True,
):
    """The whole pre-pass in one launch: axis 1 runs Q's ``B*HQ`` programs (blocks along the head
    dim), then K's ``B*HKV`` (smoothed, blocks along the head dim), then V's (blocks along the tokens).
    ``WITH_Q`` False: no Q programs (axis 1 starts at K's; the attention kernel quantizes Q itself,
    :data:`FUSE_Q`)."""
    pid_s = tl.program_id(0)
    if WITH_Q:
        pid = tl.program_id(1)
    else:
        pid = tl.program_id(1) + BHQ
    if pid < BHQ:
        _prepass_tile(q_ptr, mean_ptr, g_ptr, oq_ptr, pid_s, pid, S, HQ, sqb, sqs, sqh,
                      D, BLOCK_S, BLK, False, False, NVFP4, EMAX, EMIN, MBITS, MAXN, RULE)
    elif pid < BHQ + BHKV:
        _prepass_tile(k_ptr, mean_ptr, g_ptr + 3, ok_ptr, pid_s, pid - BHQ, S, HKV, skb, sks, skh,
                      D, BLOCK_S, BLK, False, True, NVFP4, EMAX, EMIN, MBITS, MAXN, RULE)
    else:
        _prepass_tile(v_ptr, mean_ptr, g_ptr + 6, ov_ptr, pid_s, pid - BHQ - BHKV, S, HKV, svb, svs, svh,
                      D, BLOCK_S, BLK, True, False, NVFP4, EMAX, EMIN, MBITS, MAXN, RULE)


# ----------------------------------------------------------------------------- attention


@triton.jit
def _quant_p(p, p_tab_ptr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLK: tl.constexpr,
             P_NVFP4: tl.constexpr, P_FACTOR: tl.constexpr, EMAX: tl.constexpr,
             EMIN: tl.constexpr, MBITS: tl.constexpr, MAXN: tl.constexpr, RULE: tl.constexpr,
             P_PAIRS: tl.constexpr = True):
    """Raw quantized P (``[BLOCK_M, BLOCK_N]``, p in [0, 1]) per row block of ``BLK`` keys
    (``p_tab_ptr``: NVFP4's table of block-scale quotients and scales, :func:`_nvfp4_p_scale_table`)."""
    p3 = tl.reshape(p, (BLOCK_M, BLOCK_N // BLK, BLK))
    if not P_NVFP4 and P_FACTOR != 1.0:
        p3 = p3 * P_FACTOR  # scaled before the blocks' maxima are taken: P_FACTOR 1.0 below
    return _quant_p3(p3, tl.max(p3, axis=2), p_tab_ptr, BLOCK_M, BLOCK_N, P_NVFP4, 1.0, EMAX, EMIN, MBITS, MAXN,
                     RULE, P_PAIRS)


@triton.jit
def _quant_p3(p3, pmax, p_tab_ptr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, P_NVFP4: tl.constexpr,
              P_FACTOR: tl.constexpr, EMAX: tl.constexpr, EMIN: tl.constexpr, MBITS: tl.constexpr,
              MAXN: tl.constexpr, RULE: tl.constexpr, P_PAIRS: tl.constexpr = True):
    """:func:`_quant_p` of P in blocks (``p3``: ``[BLOCK_M, BLOCK_N // BLK, BLK]``) with each block's
    maximum given (``pmax``: ``p3`` reduced along axis 2, as ``tl.max`` gives it); returned
    ``[BLOCK_M, BLOCK_N]``. ``P_FACTOR`` scales the maximum as it scales the values: ``RN(max(p) *
    F)`` is ``max(RN(p * F))`` for ``F > 0`` (rounding is monotonic)."""
    if P_NVFP4:
        r3 = _nvfp4_p_raw_amax(p3, pmax, p_tab_ptr, P_PAIRS)  # _nvfp4_raw(p3, 2688, fp32(1/2688), 2, True)
    else:
        if P_FACTOR != 1.0:
            p3 = p3 * P_FACTOR
            pmax = pmax * P_FACTOR
        if fp8_cvt_grid(MAXN, EMIN, MBITS):  # the GPU's FP8 conversion: scaled, rounded, scaled back
            r3 = _mx_qdq_amax(p3, pmax, 2, EMAX, EMIN, MBITS, MAXN, RULE)
        else:
            r3 = _mx_qdq_nonneg_amax(p3, pmax, 2, EMAX, EMIN, MBITS, MAXN, RULE)
    return tl.reshape(r3, (BLOCK_M, BLOCK_N))


@triton.jit
def _attn_tile(q, k_base, v_base, p_tab_ptr, n0, offs_m, offs_n, offs_d, S, c, m_i, l_i, acc,
               D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
               BLK: tl.constexpr, P_NVFP4: tl.constexpr, P_FACTOR: tl.constexpr, EMAX: tl.constexpr,
               EMIN: tl.constexpr, MBITS: tl.constexpr, MAXN: tl.constexpr, RULE: tl.constexpr,
               BF16_QK: tl.constexpr, BF16_PV: tl.constexpr, OP_BF16: tl.constexpr, MASKED: tl.constexpr,
               P_MAX_EXP2: tl.constexpr, P_PAIRS: tl.constexpr):
    """One online-softmax step over the ``BLOCK_N`` keys from ``n0``: ``(m_i, l_i, acc)`` updated.
    ``MASKED``: keys past ``S`` (and, causal, after a row's query) are removed; without it every
    key of the tile must exist and be visible to every row. ``P_MAX_EXP2`` (:data:`P_MAX_EXP2`):
    the logits' maximum per block of ``BLK`` keys first, the row maximum from those, and each P
    block's maximum as ``exp2`` of its logits' maximum minus the row's, instead of a reduction of
    P: the same numbers."""
    cols = n0 + offs_n
    if MASKED:
        kv_ok = cols < S
        k = tl.load(k_base + cols[:, None] * D + offs_d[None, :], mask=kv_ok[:, None], other=0.0)
    else:
        k = tl.load(k_base + cols[:, None] * D + offs_d[None, :])
    if OP_BF16:
        s = tl.dot(q, tl.trans(k))
    else:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    if BF16_QK:
        s = bf16_rne_f32(s)
    s = s * c
    if MASKED:
        ok = kv_ok[None, :]
        if CAUSAL:
            ok = ok & (cols[None, :] <= offs_m[:, None])
        s = tl.where(ok, s, float("-inf"))
    if P_MAX_EXP2:
        s3 = tl.reshape(s, (BLOCK_M, BLOCK_N // BLK, BLK))
        smax = tl.max(s3, 2)
        m_new = tl.maximum(m_i, tl.max(smax, 1))
        alpha = tl.exp2(m_i - m_new)
        p3 = tl.exp2(s3 - m_new[:, None, None])
        praw = _quant_p3(p3, tl.exp2(smax - m_new[:, None]), p_tab_ptr, BLOCK_M, BLOCK_N, P_NVFP4, P_FACTOR, EMAX,
                         EMIN, MBITS, MAXN, RULE, P_PAIRS)
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        praw = _quant_p(p, p_tab_ptr, BLOCK_M, BLOCK_N, BLK, P_NVFP4, P_FACTOR, EMAX, EMIN, MBITS, MAXN, RULE,
                        P_PAIRS)
    l_i = l_i * alpha + tl.sum(praw, 1)
    if MASKED:
        v = tl.load(v_base + cols[:, None] * D + offs_d[None, :], mask=kv_ok[:, None], other=0.0)
    else:
        v = tl.load(v_base + cols[:, None] * D + offs_d[None, :])
    if OP_BF16:
        pv_in = praw.to(tl.bfloat16)
    else:
        pv_in = praw
    if BF16_PV:
        if OP_BF16:
            pv = tl.dot(pv_in, v)
        else:
            pv = tl.dot(pv_in, v, input_precision="ieee")
        acc = bf16_rne_f32(bf16_rne_f32(acc * alpha[:, None]) + bf16_rne_f32(pv))
    else:
        acc = acc * alpha[:, None]
        if OP_BF16:
            acc = tl.dot(pv_in, v, acc)
        else:
            acc = tl.dot(pv_in, v, acc, input_precision="ieee")
    return m_new, l_i, acc


@triton.jit
def _sage3_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, c_base, inv_gq_ptr, inv_gk_ptr, inv_gv_ptr, p_tab_ptr,
    S, H, HKV, GROUP, sob, sos, soh, S_KEY, sqb, sqs, sqh,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
    BLK: tl.constexpr, P_NVFP4: tl.constexpr, P_FACTOR: tl.constexpr, EMAX: tl.constexpr,
    EMIN: tl.constexpr, MBITS: tl.constexpr, MAXN: tl.constexpr, RULE: tl.constexpr,
    BF16_QK: tl.constexpr, BF16_PV: tl.constexpr, OP_BF16: tl.constexpr,
    FUSE_Q: tl.constexpr = False, Q_NVFP4: tl.constexpr = False, QEMAX: tl.constexpr = 0,
    QEMIN: tl.constexpr = 0, QMBITS: tl.constexpr = 0, QMAXN: tl.constexpr = 0.0,
    P_MAX_EXP2: tl.constexpr = False, P_PAIRS: tl.constexpr = True,
):
    """One ``BLOCK_M`` query tile of one (batch, head); raw K/V in ``[B, H, S, D]``.

    Q: raw in ``[B, H, S, D]`` (from the pre-pass; ``inv_gq_ptr``: its ``1/gs``), or with
    ``FUSE_Q`` the input ``q [B, S, H, D]`` (strides ``sqb, sqs, sqh``), quantized here once per
    program exactly as the pre-pass's Q programs do it (:func:`_prepass_tile`: blocks of ``BLK``
    along the head dim, element constants ``Q*``); ``inv_gq_ptr`` then points at Q's tensor amax
    bits (NVFP4: the global scales computed from it as the pre-pass computes them) or at 1 (MX)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    kv_bh = b * HKV + h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    if FUSE_Q:
        x = tl.load(q_ptr + b.to(tl.int64) * sqb + h * sqh + offs_m[:, None].to(tl.int64) * sqs + offs_d[None, :],
                    mask=offs_m[:, None] < S, other=0.0).to(tl.float32)
        x3 = tl.reshape(x, (BLOCK_M, D // BLK, BLK))
        if Q_NVFP4:
            gs_q, inv_gq = _nvfp4_global_scales(inv_gq_ptr)
            r3 = _nvfp4_raw(x3, gs_q, inv_gq, 2)
        else:
            inv_gq = tl.load(inv_gq_ptr)
            r3 = _mx_qdq(x3, 2, QEMAX, QEMIN, QMBITS, QMAXN, RULE)
        q = tl.reshape(r3, (BLOCK_M, D))
        if OP_BF16:
            q = q.to(tl.bfloat16)  # the pre-pass's store of raw Q in bf16: the same conversion
    else:
        q = tl.load(q_ptr + pid_bh.to(tl.int64) * S * D + offs_m[:, None] * D + offs_d[None, :],
                    mask=offs_m[:, None] < S, other=0.0)
        inv_gq = tl.load(inv_gq_ptr)
    k_base = k_ptr + kv_bh.to(tl.int64) * S * D
    v_base = v_ptr + kv_bh.to(tl.int64) * S * D
    c = (c_base * inv_gq) * tl.load(inv_gk_ptr)  # fp32(sm_scale log2 e) / gs_q / gs_k, fp32 products
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    # key tiles in order; those whose every key exists and is visible to every row of the tile
    # first, without masks (the same numbers: masks only ever remove keys), then the rest masked
    if CAUSAL:
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M)
        full = tl.minimum((pid_m * BLOCK_M + 1) // BLOCK_N, S // BLOCK_N) * BLOCK_N
    else:
        hi = S
        full = (S // BLOCK_N) * BLOCK_N
    for n0 in range(0, full, BLOCK_N):
        m_i, l_i, acc = _attn_tile(q, k_base, v_base, p_tab_ptr, n0, offs_m, offs_n, offs_d, S, c, m_i, l_i, acc, D,
                                   BLOCK_M, BLOCK_N, CAUSAL, BLK, P_NVFP4, P_FACTOR, EMAX, EMIN, MBITS, MAXN, RULE,
                                   BF16_QK, BF16_PV, OP_BF16, False, P_MAX_EXP2, P_PAIRS)
    for n0 in range(full, hi, BLOCK_N):
        m_i, l_i, acc = _attn_tile(q, k_base, v_base, p_tab_ptr, n0, offs_m, offs_n, offs_d, S, c, m_i, l_i, acc, D,
                                   BLOCK_M, BLOCK_N, CAUSAL, BLK, P_NVFP4, P_FACTOR, EMAX, EMIN, MBITS, MAXN, RULE,
                                   BF16_QK, BF16_PV, OP_BF16, True, P_MAX_EXP2, P_PAIRS)
    inv_gv = tl.load(inv_gv_ptr)
    o = acc / l_i[:, None] * inv_gv
    dst = o_ptr + b.to(tl.int64) * sob + h * soh + offs_m[:, None].to(tl.int64) * sos + offs_d[None, :]
    tl.store(dst, o.to(o_ptr.dtype.element_ty), mask=offs_m[:, None] < S)


_FWD_CONFIGS = [
    triton.Config({"BLOCK_M": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 128}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=2),
]

_sage3_fwd_tuned = triton.autotune(
    configs=_FWD_CONFIGS,
    key=["S_KEY", "H", "D", "CAUSAL", "P_NVFP4", "BF16_QK", "BF16_PV", "RULE", "FUSE_Q", "P_MAX_EXP2", "P_PAIRS"],
)(_sage3_fwd_kernel)


# ----------------------------------------------------------------------------- host side

#: Q quantized inside the attention kernel (issue 17): each query tile is quantized once by the
#: program that holds it, as the pre-pass's Q programs would (the same functions on the same
#: values: the same raw bits), and the pre-pass runs K and V only: Q's ``[B, H, S, D]`` raw copy is
#: neither written nor read back (at S = 4096, H = 24, D = 128: 2 x 25 MB of the pre-pass's ~150 MB).
#: Off: Q through the pre-pass (``tests/gpu/test_sage3_gpu.py::test_fused_q_bit_for_bit`` runs both).
FUSE_Q = False

#: Each P block's maximum (what its MX exponent or NVFP4 scale comes from) as ``exp2`` of the
#: block's logits' maximum minus the row maximum, and the row maximum from the blocks' logit maxima
#: (issue 17): one reduction of the logits a key tile instead of one of the logits for the row and one
#: of P for the blocks. The same numbers: ``RN(s - m)`` is monotonic in ``s`` and ``tl.exp2``
#: (``ex2.approx.ftz.f32`` on the GPU) is non-decreasing on ``[-inf, -0.0]``, where every
#: ``s - m`` lies (``scripts/bench_sage3.py``'s probe, over every fp32 there on the H200 of
#: 2026-12-06, counted 0 steps where it goes up as its argument goes down; numpy's ``exp2``, the
#: interpreter's, likewise: ``tests/test_sage3.py``), so
#: ``max(exp2(RN(s - m)))`` is ``exp2(RN(max(s) - m))``. (A key tile with a ``+inf`` logit, whose
#: row's output is NaN either way, may take a NaN block scale instead of 0.) The interpreter runs
#: every kernel case both ways, bit for bit, and the sm_90 compile of both passes;
#: ``tests/gpu/test_sage3_gpu.py::test_p_max_exp2_bit_for_bit`` checks it on the GPU (the H100
#: lease of 2026-12-06b cut the kernel tests at 99%, none failed). Timed there, on / off: 0.89-0.98
#: at 4k and 16k (mxfp4 0.888 at 16k), 0.96-1.08 at 1k (``results/lease-2026-12-06b``).
P_MAX_EXP2 = True

#: NVFP4's P block scales by :data:`_P_SCALES_PTX` (issue 17): two blocks' E4M3 codes by one
#: conversion, each code's quotient and ``s8`` by one 8-byte read of :func:`_nvfp4_p_scale_table`,
#: no ``min`` (the conversion saturates) and no conversion of ``s8`` back: the loop 741 -> 713 SASS
#: instructions an iteration (sm_90, D=128). Off: the quotient alone read and ``s8`` converted
#: back, as before. The same numbers for every finite block maximum (``tests/gpu/test_sage3_gpu.py::
#: test_nvfp4_p_quantizer_every_scale_code`` and ``test_p_scale_pairs_bit_for_bit`` run both, and
#: passed on the H100 of 2026-12-07d; the interpreter takes neither: its FP8 casts are not the
#: hardware's). Timed there (``scripts/bench_sage3.py --switches P_SCALE_PAIRS``, 5 interleaved
#: rounds at 16k): on / off 0.992 (``results/lease-2026-12-07d``).
P_SCALE_PAIRS = True


def _elem_consts(spec) -> dict:
    e = spec.elem
    return {"EMAX": e.emax, "EMIN": e.emin, "MBITS": e.mbits, "MAXN": float(e.max_normal)}


_ONES: dict[torch.device, torch.Tensor] = {}


def _ones2(device: torch.device) -> torch.Tensor:
    """A cached ``[1, 1]`` fp32 buffer per device: the MX formats' ``[gs, 1/gs]`` (read only)."""
    t = _ONES.get(device)
    if t is None:
        t = _ONES[device] = torch.ones(2, dtype=torch.float32, device=device)
    return t


def sage3_k_mean(k: torch.Tensor, rec: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 1's mean on the device: ``(mean [B, HKV, D], parts [B*HKV, NPARTS, D])`` (fp32), the
    mean bit for bit :func:`vllm_qdq.sage3.numerics.reference.k_mean` (its order), in two launches:
    :func:`_k_mean_part_kernel` (one program a part and KV head), :func:`_k_mean_final_kernel`.
    ``rec``: the launches appended as :func:`sage3_prepass` appends its own."""
    b, s, hkv, d = k.shape
    if k.stride(-1) != 1:
        raise ValueError(f"sage3_k_mean needs the head dim contiguous; got k strides {tuple(k.stride())}")
    nparts = max(1, triton.cdiv(s, KMEAN_ROWS * KMEAN_TILES))
    parts = torch.empty((b * hkv, nparts, d), dtype=torch.float32, device=k.device)
    mean = torch.empty((b, hkv, d), dtype=torch.float32, device=k.device)
    grid1 = (nparts, b * hkv)
    args1 = (k, parts, s, hkv, nparts, *k.stride()[:3])
    kw1 = {"D": d, "ROWS": KMEAN_ROWS, "TILES": KMEAN_TILES, "num_warps": 4, "enable_fp_fusion": False}
    c1 = _k_mean_part_kernel[grid1](*args1, **kw1)
    grid2 = (b * hkv,)
    args2 = (parts, mean, s, nparts)
    kw2 = {"D": d, "CHUNK": 32, "num_warps": 1, "enable_fp_fusion": False}  # 32 parts' loads at once
    c2 = _k_mean_final_kernel[grid2](*args2, **kw2)
    if rec is not None:
        rec.append((_k_mean_part_kernel, grid1, args1, kw1, c1))
        rec.append((_k_mean_final_kernel, grid2, args2, kw2, c2))
    return mean, parts


def sage3_prepass(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, quant_format: str, scale_rule: str = "floor",
    rec: list | None = None, with_q: bool = True,
):
    """Step 1-2 on the device: raw Q, Ks, V as ``[B, H, S, D]`` plus ``(gq, gk, gv)`` buffers.

    Each ``g`` buffer holds ``[gs, 1/gs]`` (fp32) for NVFP4 and ``[1, 1]`` for MX (one cached,
    read-only buffer). Launches: the K mean (:func:`sage3_k_mean`, two), then for NVFP4 :func:`_nvfp4_amax_kernel`
    (the tensor amax of Q, smoothed K and V on the device: no host-side passes over the operands),
    then :func:`_qdq_prepass_kernel` for all three operands (the global scales computed there).
    ``with_q`` False: Q is left to the attention kernel (:data:`FUSE_Q`): the raw Q returned is
    ``None`` and ``gq`` is Q's ``[amax, -, -]`` row (fp32 view of the amax bits first; NVFP4) or
    ``[1, 1]`` (MX), what that kernel reads.
    ``rec``: each Triton launch appended as ``(jit function, grid, args, kwargs, compiled kernel)``,
    and the call's buffers as ``("buffers", mean, parts, g, outs)`` (what :class:`_Replay` records).
    """
    fmt = get_sage3_format(quant_format)
    spec = fmt.qkv
    nv = spec.family is Family.NVFP4
    op_dtype = torch.float32 if interpreting() else torch.bfloat16
    b, s, hq, d = q.shape
    hkv = k.shape[2]
    mean, parts = sage3_k_mean(k, rec)  # [B, Hkv, D] fp32
    block_s = 64
    grid = (triton.cdiv(s, block_s), b * (hq + 2 * hkv))  # the amax pass always covers Q
    sizes = (s, hq, hkv, b * hq, b * hkv, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3])
    if nv:  # per operand [amax bits, gs bits, 1/gs bits] (int32)
        g = torch.zeros((3, 3), dtype=torch.int32, device=q.device)
        a_args = (q, k, v, mean, g, *sizes)
        a_kw = {"D": d, "BLOCK_S": block_s, "num_warps": 4, "enable_fp_fusion": False}
        c = _nvfp4_amax_kernel[grid](*a_args, **a_kw)
        if rec is not None:
            rec.append((_nvfp4_amax_kernel, grid, a_args, a_kw, c))
    else:
        g = _ones2(q.device)
    outs = [torch.empty((b, heads, s, d), dtype=op_dtype, device=q.device) if with_q or i else None
            for i, heads in enumerate((hq, hkv, hkv))]
    # without Q: no Q output, and a pointer the kernel never reads in its place (K's)
    p_args = (q, k, v, mean, g, outs[0] if with_q else outs[1], outs[1], outs[2], *sizes)
    p_kw = {"D": d, "BLOCK_S": block_s, "BLK": fmt.block, "NVFP4": nv, **_elem_consts(spec), "RULE": rule_code(scale_rule),
            "WITH_Q": bool(with_q), "num_warps": 4, "enable_fp_fusion": False}
    p_grid = grid if with_q else (grid[0], b * 2 * hkv)
    c = _qdq_prepass_kernel[p_grid](*p_args, **p_kw)
    if rec is not None:
        rec.append((_qdq_prepass_kernel, p_grid, p_args, p_kw, c))
        rec.append(("buffers", mean, parts, g if nv else None, outs))
    gs = [g.view(torch.float32)[i, 1:3] for i in range(3)] if nv else [g] * 3
    if not with_q and nv:
        gs[0] = g.view(torch.float32)[0]
    return outs, gs


def sage3_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    quant_format: str = "mxfp4",
    acc_dtype: str = "fp32",
    causal: bool = False,
    sm_scale: float | None = None,
    block_m: int | None = None,
    scale_rule: str = "floor",
) -> torch.Tensor:
    """sage3 attention on the Triton kernels; ``q [B, S, Hq, D]``, ``k, v [B, S, Hkv, D]``.

    Returns ``[B, S, Hq, D]`` in ``q.dtype``. Raises ``ValueError`` for inputs the kernel does
    not run (the backend checks these first and falls back to SDPA). ``block_m`` pins the
    query tile (default: autotuned on CUDA, 64 under the interpreter). A call like an earlier one
    (:func:`_fast_key`) replays that call's launches (:data:`FAST_LAUNCH`).
    """
    key = _fast_key(q, k, v, quant_format, acc_dtype, causal, sm_scale, block_m, scale_rule)
    if key is not None:
        fast = _FAST.get(key)
        if fast is not None:
            out = fast(q, k, v)
            if out is not None:
                return out
    rec: list | None = [] if key is not None and key not in _REFUSED else None
    out = _sage3_full(q, k, v, quant_format, acc_dtype, causal, sm_scale, block_m, scale_rule, rec)
    if rec:
        _record(key, q, k, v, out, rec)
    return out


def _sage3_full(q, k, v, quant_format, acc_dtype, causal, sm_scale, block_m, scale_rule, rec) -> torch.Tensor:
    """:func:`sage3_attention`'s checks and launches (``rec``: as :func:`sage3_prepass`'s)."""
    fmt = get_sage3_format(quant_format)
    check_acc_dtype(acc_dtype)
    check_scale_rule(fmt.qkv, scale_rule)
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        raise ValueError(f"expected q [B,S,Hq,D], k/v [B,S,Hkv,D]; got {tuple(q.shape)}, {tuple(k.shape)}")
    b, s, hq, d = q.shape
    if k.shape[0] != b or k.shape[1] != s or k.shape[3] != d:
        raise ValueError(f"sage3 needs self-attention shapes; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    hkv = k.shape[2]
    if hq % hkv:
        raise ValueError(f"query heads {hq} are not a multiple of key/value heads {hkv}")
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {d} unsupported; accepted: {SUPPORTED_HEAD_DIMS}")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"dtypes {q.dtype}/{k.dtype}/{v.dtype} unsupported; accepted: {SUPPORTED_DTYPES}")
    if s == 0:
        return torch.empty_like(q)
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    fuse_q = FUSE_Q
    (qr, kr, vr), (gq, gk, gv) = sage3_prepass(q, k, v, quant_format, scale_rule, rec, with_q=not fuse_q)
    scale = 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
    # sm_scale * log2 e goes in as a Triton fp32 scalar: the launcher rounds it to fp32 (RNE), the value
    # torch.full(..., dtype=float32) held before; plain Python, so Dynamo can trace this call.
    base = scale * LOG2E
    out = torch.empty_like(q)
    p_elem = fmt.p.elem
    consts = dict(
        D=d, BLOCK_N=BLOCK_N, CAUSAL=bool(causal), BLK=fmt.block,
        P_NVFP4=fmt.p.family is Family.NVFP4, P_FACTOR=float(fmt.p_factor),
        EMAX=p_elem.emax, EMIN=p_elem.emin, MBITS=p_elem.mbits, MAXN=float(p_elem.max_normal),
        RULE=rule_code(scale_rule),
        BF16_QK=acc_dtype == "bf16_both_dot", BF16_PV=acc_dtype in ("bf16_both_dot", "bf16_pv_only"),
        OP_BF16=kr.dtype == torch.bfloat16, P_MAX_EXP2=bool(P_MAX_EXP2),
        P_PAIRS=bool(P_SCALE_PAIRS) or fmt.p.family is not Family.NVFP4,  # MX: one kernel either way
        enable_fp_fusion=False,  # each product rounded before its sum, as in the reference (module docstring)
    )
    if fuse_q:  # Q quantized in the attention kernel (its element constants; blocks of fmt.block)
        q_elem = fmt.qkv.elem
        consts.update(FUSE_Q=True, Q_NVFP4=fmt.qkv.family is Family.NVFP4, QEMAX=q_elem.emax, QEMIN=q_elem.emin,
                      QMBITS=q_elem.mbits, QMAXN=float(q_elem.max_normal))
    # P's NVFP4 table (read only by an NVFP4 P; other formats pass a pointer the kernel never reads)
    p_tab = _nvfp4_p_scale_table(q.device) if fmt.p.family is Family.NVFP4 else gv[1:2]
    args = (q if fuse_q else qr, kr, vr, out, base, gq[0:1] if fuse_q else gq[1:2], gk[1:2], gv[1:2], p_tab,
            s, hq, hkv, hq // hkv, out.stride(0), out.stride(1), out.stride(2), triton.next_power_of_2(s),
            *q.stride()[:3])
    if block_m is None and not interpreting():
        launched = []  # BLOCK_M of each launch the autotuner makes (benchmarks first): the last is the call's

        def grid(meta):
            launched.append(meta["BLOCK_M"])
            return (triton.cdiv(s, meta["BLOCK_M"]), b * hq)

        c = _sage3_fwd_tuned[grid](*args, **consts)
        if rec is not None:  # this call's configuration (not the autotuner's shared best_config)
            bm = launched[-1]
            rec.append((_sage3_fwd_kernel, (triton.cdiv(s, bm), b * hq), args, {**consts, "BLOCK_M": bm}, c))
    else:
        bm = block_m or 64
        nw = 8 if bm >= 128 else 4
        kw = {"BLOCK_M": bm, **consts, "num_warps": nw, "num_stages": 2}
        grid2 = (triton.cdiv(s, bm), b * hq)
        c = _sage3_fwd_kernel[grid2](*args, **kw)
        if rec is not None:
            rec.append((_sage3_fwd_kernel, grid2, args, kw, c))
    return out


# ----------------------------------------------------------------------------- eager fast path

#: The eager fast path (issue 17, short sequences): a call with the same shapes, strides, dtypes,
#: options, devices and alignment classes as an earlier one replays that call's launches (the
#: compiled kernels, the same grids and scalar arguments) with this call's tensors, through
#: Triton's generated C launchers where :func:`vllm_qdq.numerics.triton_qdq._direct_launcher`
#: knows them (Triton 3.6), else through ``CompiledKernel[grid]``: no per-call argument binding
#: (on the H200's host a one-launch QDQ call took 37-75 us with Triton's binding against 10-17
#: replayed, the QDQ bench's "bind" and "eager" columns; a sage3 call makes 4 Triton launches, 5
#: with NVFP4, the K mean's two among them; ``scripts/bench_sage3.py``'s "host" columns time both). The same kernels on the same values: the same bits
#: (``tests/gpu/test_sage3_gpu.py::test_fast_path_replays_bit_for_bit``). Off: every call takes
#: the full path. Under the interpreter and for CPU tensors there is nothing to replay.
FAST_LAUNCH = True
#: Most entries kept (cleared whole when full: a diffusion model sees a few shapes).
_FAST_MAX = 256
_FAST: dict[tuple, _Replay] = {}
_REFUSED: set[tuple] = set()  # keys whose call could not be recorded: not tried again (cleared when full)


def _fast_key(q, k, v, quant_format, acc_dtype, causal, sm_scale, block_m, scale_rule) -> tuple | None:
    """The :data:`_FAST` key of a call, or None when it cannot be replayed (fast path off, the
    interpreter, not three plain CUDA tensors, an argument of a type the key cannot hold: the full
    path then checks it and names it, or one tensor passed twice)."""
    if not FAST_LAUNCH or interpreting():
        return None
    if type(q) is not torch.Tensor or type(k) is not torch.Tensor or type(v) is not torch.Tensor or not q.is_cuda:
        return None
    if q is k or k is v or q is v:  # the recording places tensors by identity: one object in two roles
        return None
    if (type(quant_format) is not str or type(acc_dtype) is not str or type(scale_rule) is not str
            or type(causal) is not bool or not (sm_scale is None or type(sm_scale) is float)
            or not (block_m is None or type(block_m) is int)):
        return None
    return (FUSE_Q, P_MAX_EXP2, P_SCALE_PAIRS, quant_format, acc_dtype, causal, sm_scale, block_m, scale_rule,
            q.dtype, k.dtype, v.dtype, q.shape, k.shape, v.shape, q.stride(), k.stride(), v.stride(),
            q.get_device(), k.get_device(), v.get_device(), torch._C._cuda_getDevice(), q.data_ptr() & _ALIGN, k.data_ptr() & _ALIGN,
            v.data_ptr() & _ALIGN)


def _record(key: tuple, q, k, v, out, rec: list) -> None:
    """Store a :class:`_Replay` of the call just made under ``key``, or refuse the key for good (a
    tensor argument the replay cannot place, e.g. an input the full path made contiguous; a launch
    with no compiled kernel to hold): the call's result stands either way."""
    try:
        if any(r[0] != "buffers" and r[4] is None for r in rec):
            raise AssertionError("a launch returned no compiled kernel")
        fast = _Replay(q, k, v, out, rec)
    except Exception:  # the call already succeeded: never fail it here
        if len(_REFUSED) >= _FAST_MAX:
            _REFUSED.clear()
        _REFUSED.add(key)
        return
    if len(_FAST) >= _FAST_MAX:
        _FAST.clear()
    _FAST[key] = fast


class _Replay:
    """A recorded :func:`sage3_attention` call. Each call allocates the buffers the full path
    would (K's mean and its parts, NVFP4's ``g``, the raw operands, the output) and launches the recorded
    kernels with their addresses: a tensor argument of a recorded launch is one of the call's
    inputs or buffers (by identity), a view into NVFP4's ``g`` (by its byte offset), or a held
    constant (the MX formats' cached ``[1, 1]``, P's NVFP4 table). A buffer allocated at another alignment class
    than recorded sends the call back to the full path (Triton specializes pointers on it)."""

    __slots__ = ("aligns", "device", "direct", "held", "launches", "nv", "outs", "parts")

    def __init__(self, q, k, v, out, rec: list) -> None:
        (_, mean, parts, g, outs), = [r for r in rec if r[0] == "buffers"]
        # the current device when recorded (part of the key): the one whose context and stream Triton
        # launched on, and loaded the kernels for
        self.device = torch._C._cuda_getDevice() if q.is_cuda else -1
        held = [_ones2(q.device)] if g is None else []
        if any(t is _P_TAB.get(q.device) for r in rec if r[0] != "buffers" for t in r[2]):
            held.append(_P_TAB[q.device])
        self.held = tuple(held)  # the constants the launches read by address: alive while this is
        self.nv = g is not None
        self.outs = [None if o is None else (tuple(o.shape), o.dtype) for o in outs]
        self.parts = tuple(parts.shape)
        bases = {"q": q, "k": k, "v": v, "mean": mean, "parts": parts, "oq": outs[0], "ok": outs[1], "ov": outs[2], "out": out}
        bases = {n: t for n, t in bases.items() if t is not None}  # no "oq" when Q is fused
        if g is not None:
            bases["g"] = g
        self.aligns = {n: t.data_ptr() & _ALIGN for n, t in bases.items() if n not in ("q", "k", "v")}
        self.launches = []
        directs = []
        for fn, grid, args, kwargs, compiled in (r for r in rec if r[0] != "buffers"):
            template, slots = [], []
            for i, a in enumerate(_full_args(fn, args, kwargs)):
                if not isinstance(a, torch.Tensor):
                    template.append(a)
                    continue
                role = next((n for n, t in bases.items() if a is t), None)
                off = 0
                if role is None and g is not None and a.untyped_storage().data_ptr() == g.untyped_storage().data_ptr():
                    role, off = "g", a.data_ptr() - g.data_ptr()
                if role is None:
                    if not any(a.untyped_storage().data_ptr() == h.untyped_storage().data_ptr() for h in self.held):
                        raise AssertionError(f"{fn.__name__}: tensor argument {i} is none of the call's")
                    template.append(a.data_ptr())  # held: P's NVFP4 table, the MX formats' [1, 1]
                    continue
                slots.append((i, role, off))
                template.append(None)
            run, grid3, direct = _replay_entry(compiled, grid)
            directs.append(direct is not None)
            self.launches.append((run, grid3, direct, tuple(template), tuple(slots)))
        self.direct = all(directs)

    def __call__(self, q, k, v) -> torch.Tensor | None:
        dev = q.device
        b, _, hkv, d = k.shape
        bufs = {"q": q, "k": k, "v": v,
                "mean": torch.empty((b, hkv, d), dtype=torch.float32, device=dev),
                "parts": torch.empty(self.parts, dtype=torch.float32, device=dev)}
        if self.nv:
            bufs["g"] = torch.zeros((3, 3), dtype=torch.int32, device=dev)
        for name, o in zip(("oq", "ok", "ov"), self.outs, strict=True):
            if o is not None:
                bufs[name] = torch.empty(o[0], dtype=o[1], device=dev)
        bufs["out"] = torch.empty_like(q)
        ptrs = {n: t.data_ptr() for n, t in bufs.items()}
        for n, a in self.aligns.items():
            if ptrs[n] & _ALIGN != a:
                return None
        direct = self.direct and _hooks_idle()
        stream = torch._C._cuda_getCurrentRawStream(self.device) if direct else None
        for run, grid3, launcher, template, slots in self.launches:
            args = list(template)
            for i, role, off in slots:
                args[i] = ptrs[role] + off
            if direct:
                launcher[0](*grid3, stream, *launcher[1], *args)
            else:
                run(*args)
        return bufs["out"]
