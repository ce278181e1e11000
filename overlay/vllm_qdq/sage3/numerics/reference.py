"""Pure-PyTorch reference of sage3 quantized attention (no Triton): the numeric contract.

The Triton kernel (:mod:`vllm_qdq.sage3.numerics.kernel`) computes the same numbers; the tests compare
the two on small shapes. Every per-block quantize-dequantize (QDQ) here goes through the
project oracle :mod:`vllm_qdq.numerics.reference` (element rounding RNE on the true E2M1 / E4M3 grids,
OCP MX scale rule ``floor``, NVFP4 fp32 operation order), read from :mod:`vllm_qdq.numerics.formats`.

Layout: ``q [B, Sq, Hq, D]``, ``k, v [B, Sk, Hkv, D]`` (vllm-omni's NHD), ``Hq % Hkv == 0``
(GQA/MQA: query head ``h`` reads key/value head ``h // (Hq // Hkv)``). Self-attention only
(``Sq == Sk``); causal masks key ``j > i``.

Algorithm
---------
Formats (``SAGE3_QUANT_FORMAT``), each naming the Q/K/V recipe, the P recipe and P's first level:

=========  ==============  =============================  =================================
name       Q, K, V         P (per 32 or 16 keys, per row)  P first level (the global factor)
=========  ==============  =============================  =================================
mxfp4      MXFP4 (E2M1,    MXFP4                           x 6 (E2M1 max): P in [0, 1] is
           E8M0 per 32)                                    scaled so 1 maps to 6, then MX
nvfp4      NVFP4 (E2M1,    NVFP4 with the fixed tensor    ``gs = 448*6 / 1`` (P's amax is
           E4M3 per 16,    amax 1                          at most 1), then E4M3 per 16
           fp32 per tensor)
mxfp8_s1   MXFP8 E4M3      MXFP8 E4M3, single level        none
mxfp4_s1   MXFP4           MXFP4, single level             none
=========  ==============  =============================  =================================

1. K smoothing: ``Ks = K - mean_s(K)``, the mean over the whole key sequence per batch, KV
   head and channel, taken in fp32 in a fixed order (:func:`k_mean`: the kernel's). Exact for
   softmax whatever the mean's rounding: it shifts every logit of a query row by the same
   ``q . mean``.
2. Q and Ks are QDQ'd per block along the head dim; V per block along the token (sequence)
   dim, one block = 32 (16 for NVFP4) consecutive tokens of one channel, zero-padded at the
   sequence end. Token-dim blocks for V are what a block-scaled MMA needs for ``P @ V``
   (scales run along the reduction axis, as in SageAttention3), and they match P's blocks.
   NVFP4's per-tensor amax is each whole tensor's (Q; smoothed K; V).
3. Each operand is kept as ``element * block scale`` ("raw", exact in bf16) and its
   non-power-of-two global factor apart: ``S = (Qraw @ Ksraw^T) * c`` with
   ``c = sm_scale * log2(e) / (gs_q * gs_k)`` (``gs = 1`` for MX), in fp32.
4. Online softmax over key tiles of ``BLOCK_N = 64`` keys, in order: ``m' = max(m, rowmax S)``,
   ``alpha = exp2(m - m')``, ``p = exp2(S - m')`` (so p in [0, 1]; masked or missing keys give
   exactly 0 and never change a block scale), then ``P`` is QDQ'd per block of 32 (16) keys
   of a row: ``Praw = qdq(p * f)`` with ``f = 6`` for ``mxfp4``, ``1`` for ``_s1``; for
   ``nvfp4`` ``Praw = e2m1 * e4m3 scale`` of NVFP4 with tensor amax 1. The global factor is
   applied to numerator and denominator alike, so it cancels and is never multiplied back.
   ``l = l * alpha + rowsum(Praw)`` (the quantized weights, so each output row is a convex
   combination of the Vraw rows), ``acc = acc * alpha + Praw @ Vraw``.
5. ``O = acc / l / gs_v`` cast to the input dtype.

Accumulator (``SAGE3_ACC_DTYPE``): ``fp32`` keeps S and acc in fp32 (the products of the exact
raw operands are summed in fp32, as on an FP4/FP8 tensor core). ``bf16_pv_only``: the tile
product ``Praw @ Vraw`` is rounded to bf16 and the running ``acc`` is held in bf16:
``acc = bf16(bf16(acc * alpha) + bf16(Praw @ Vraw))``. ``bf16_both_dot``: additionally each
``Qraw @ Ksraw^T`` tile is rounded to bf16 before ``* c``. ``m``, ``l`` stay fp32.

MX scale rule (``SAGE3_SCALE_RULE``): ``floor`` (OCP v1.0, the default) for every MX QDQ (Q, K,
V and P); ``ceil``, ``even`` and ``rceil`` as defined in :mod:`vllm_qdq.numerics.reference`. With
``floor`` a block whose amax mantissa is at least ``max_normal / 2**emax`` (1.5 for E2M1, 1.75
for E4M3) saturates its largest elements; ``rceil`` never saturates. NVFP4 has no scale rule.

Inputs bf16, fp16 or fp32 (computed from their fp32 values). Non-finite inputs give NaN
rows (not matched bit for bit). An MX block whose amax is below ``2**-100`` may round
differently in the kernel (its quantum would be an fp32 subnormal); such values are below
the resolution of any row that holds a normal one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...numerics.formats import FORMATS, Family, FormatSpec, check_scale_rule
from ...numerics.reference import _decode, qdq_reference, quantize_reference

__all__ = [
    "ACC_DTYPES",
    "BLOCK_N",
    "KMEAN_ROWS",
    "KMEAN_TILES",
    "SAGE3_FORMATS",
    "Sage3Format",
    "get_sage3_format",
    "k_mean",
    "nvfp4_global_amax",
    "nvfp4_global_scales",
    "quantize_operand_reference",
    "sage3_attention_reference",
]

#: Keys per online-softmax tile. Part of the contract: P's quantization is relative to the
#: running max after each tile, so the tile size changes the numbers.
BLOCK_N = 64

ACC_DTYPES: tuple[str, ...] = ("fp32", "bf16_both_dot", "bf16_pv_only")

LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class Sage3Format:
    """One ``SAGE3_QUANT_FORMAT``: the Q/K/V recipe, the P recipe and P's first level."""

    name: str
    qkv: FormatSpec
    p: FormatSpec
    p_factor: float  # MX: P is multiplied by this before MX QDQ (1 = single level)

    @property
    def block(self) -> int:
        """Elements per scaling block (the same for Q/K/V and P)."""
        return int(self.qkv.block_size)


SAGE3_FORMATS: dict[str, Sage3Format] = {
    "mxfp4": Sage3Format("mxfp4", FORMATS["mxfp4"], FORMATS["mxfp4"], 6.0),
    "nvfp4": Sage3Format("nvfp4", FORMATS["nvfp4"], FORMATS["nvfp4"], 1.0),
    "mxfp8_s1": Sage3Format("mxfp8_s1", FORMATS["mxfp8_e4m3"], FORMATS["mxfp8_e4m3"], 1.0),
    "mxfp4_s1": Sage3Format("mxfp4_s1", FORMATS["mxfp4"], FORMATS["mxfp4"], 1.0),
}


def get_sage3_format(name: str) -> Sage3Format:
    """Look up a sage3 format; ``ValueError`` naming the accepted ones."""
    if name not in SAGE3_FORMATS:
        raise ValueError(f"unknown sage3 format {name!r}; accepted: {', '.join(SAGE3_FORMATS)}")
    return SAGE3_FORMATS[name]


def check_acc_dtype(acc: str) -> str:
    """Validate an accumulator name; ``ValueError`` naming the accepted ones."""
    if acc not in ACC_DTYPES:
        raise ValueError(f"unknown sage3 accumulator {acc!r}; accepted: {', '.join(ACC_DTYPES)}")
    return acc


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(torch.float32)


def quantize_operand_reference(
    x: torch.Tensor,
    spec: FormatSpec,
    axis: int,
    global_amax: float | torch.Tensor | None = None,
    scale_rule: str = "floor",
) -> tuple[torch.Tensor, torch.Tensor]:
    """QDQ ``x`` (fp32 values) per block along ``axis``; returns ``(raw, inv_global)``.

    ``raw`` = element * block scale in fp32 (exact in bf16); the dequantized value is
    ``raw * inv_global``. MX: ``raw`` is the oracle's QDQ and ``inv_global = 1``. NVFP4:
    ``raw = e2m1 * e4m3`` from the oracle's codes and scales, ``inv_global = fp32(1 / gs)``.
    """
    x = x.to(torch.float32)
    if spec.family is Family.MX:
        return qdq_reference(x, spec, scale_rule, axis=axis), torch.ones((), dtype=torch.float32, device=x.device)
    if spec.family is not Family.NVFP4:
        raise ValueError(f"sage3 quantizes with MX or NVFP4 recipes, not {spec.name!r}")
    qt = quantize_reference(x, spec, axis=axis, global_amax=global_amax)
    rows = qt.codes.shape[0]
    elems = _decode(qt.codes, spec.elem).to(torch.float32).reshape(rows, -1, spec.block_size)
    raw = (elems * qt.scales.to(torch.float32).unsqueeze(-1)).reshape(rows, -1)
    ax = qt.axis
    moved = list(x.shape)
    moved.append(moved.pop(ax))
    raw = raw[:, : qt.k].reshape(moved).movedim(-1, ax)
    inv_gs = (1.0 / qt.global_scale.to(torch.float32)).to(torch.float32)
    return raw.contiguous(), inv_gs


def nvfp4_global_amax(x: torch.Tensor) -> torch.Tensor:
    """The NVFP4 per-tensor amax used for Q/K/V: ``max |x|`` over finite values, fp32."""
    xf = x.to(torch.float32)
    return torch.where(torch.isfinite(xf), xf.abs(), torch.zeros_like(xf)).amax()


def nvfp4_global_scales(global_amax: torch.Tensor) -> torch.Tensor:
    """``[gs, 1/gs]`` (fp32) for an NVFP4 tensor amax, as the oracle computes them.

    ``gs = 2688 / amax`` (1 when amax is 0: the tensor quantizes to zeros either way).
    """
    a = global_amax.to(torch.float32).reshape(())
    gs = torch.where(a == 0, torch.ones_like(a), torch.tensor(448.0 * 6.0, device=a.device) / a)
    return torch.stack([gs, 1.0 / gs]).to(torch.float32)


#: The K mean's order (:func:`k_mean`): rows a tile, and tiles a part
KMEAN_ROWS = 64
KMEAN_TILES = 4


def k_mean(k: torch.Tensor) -> torch.Tensor:
    """Mean of ``k [B, S, H, D]`` over the sequence, fp32, as ``[B, H, D]``, summed in this order
    (every add an fp32 add of two values, so the bits are defined; the kernel's
    ``_k_mean_part_kernel`` / ``_k_mean_final_kernel`` add the same pairs):

    1. The sequence is cut into parts of ``KMEAN_TILES`` tiles of ``KMEAN_ROWS`` rows (the last
       padded with ``-0.0``, which leaves every sum as it was).
    2. In a part, row ``r`` of each tile is added to row ``r`` of the tiles before it, tile by tile
       in order; the resulting ``KMEAN_ROWS`` rows are summed pairwise: rows ``2i`` and ``2i + 1``,
       then again, down to one row (a binary tree, left operand first).
    3. The parts' sums are added in sequence order, the first part's first.
    4. The total is divided by ``S`` (IEEE fp32 division, correctly rounded).
    """
    b, s, h, d = k.shape
    per_part = KMEAN_ROWS * KMEAN_TILES
    parts = max(1, -(-s // per_part))
    x = k.to(torch.float32)
    if parts * per_part != s:
        pad = torch.full((b, parts * per_part - s, h, d), -0.0, dtype=torch.float32, device=k.device)
        x = torch.cat([x, pad], dim=1)
    x = x.view(b, parts, KMEAN_TILES, KMEAN_ROWS, h, d)
    acc = x[:, :, 0]
    for t in range(1, KMEAN_TILES):
        acc = acc + x[:, :, t]
    while acc.shape[2] > 1:  # [B, parts, rows, H, D]: rows 2i and 2i + 1
        acc = acc[:, :, 0::2] + acc[:, :, 1::2]
    part = acc[:, :, 0]  # [B, parts, H, D]
    total = part[:, 0]
    for j in range(1, parts):
        total = total + part[:, j]
    # a tensor divisor: PyTorch's CUDA division by a Python scalar multiplies by its reciprocal
    return total / torch.full_like(total, float(s))


def smooth_k(k: torch.Tensor) -> torch.Tensor:
    """``k - mean over the sequence`` in fp32 (``k [B, S, H, D]``)."""
    return k.to(torch.float32) - k_mean(k).unsqueeze(1)


def quantize_qkv_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fmt: Sage3Format, scale_rule: str = "floor"
):
    """Steps 1-2: raw Q, smoothed K, V (``[B, S, H, D]`` fp32) and their ``1/gs`` factors."""
    spec = fmt.qkv
    ks = smooth_k(k)
    out = []
    for x, axis in ((q.to(torch.float32), -1), (ks, -1), (v.to(torch.float32), 1)):
        gamax = nvfp4_global_amax(x) if spec.family is Family.NVFP4 else None
        out.append(quantize_operand_reference(x, spec, axis, gamax, scale_rule))
    return out


def logit_factor(sm_scale: float, inv_gq: torch.Tensor, inv_gk: torch.Tensor) -> torch.Tensor:
    """``c = fp32(sm_scale * log2 e) * (1/gs_q) * (1/gs_k)``, each product rounded to fp32."""
    base = torch.tensor(sm_scale * LOG2E, dtype=torch.float32, device=inv_gq.device)
    return (base * inv_gq * inv_gk).reshape(1)


def quantize_p_reference(p: torch.Tensor, fmt: Sage3Format, scale_rule: str = "floor") -> torch.Tensor:
    """Raw quantized P (``[..., keys]``, fp32 in [0, 1]) per block along the last axis."""
    if fmt.p.family is Family.NVFP4:
        raw, _ = quantize_operand_reference(p, fmt.p, -1, global_amax=1.0)
        return raw
    x = p * fmt.p_factor if fmt.p_factor != 1.0 else p
    return qdq_reference(x, fmt.p, scale_rule, axis=-1)


def sage3_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    quant_format: str = "mxfp4",
    acc_dtype: str = "fp32",
    causal: bool = False,
    sm_scale: float | None = None,
    scale_rule: str = "floor",
) -> torch.Tensor:
    """sage3 attention of ``q [B, S, Hq, D]``, ``k, v [B, S, Hkv, D]``; see the module docstring.

    Returns ``[B, S, Hq, D]`` in ``q.dtype``.
    """
    fmt = get_sage3_format(quant_format)
    check_acc_dtype(acc_dtype)
    check_scale_rule(fmt.qkv, scale_rule)
    if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"expected q [B,S,Hq,D], k/v [B,S,Hkv,D]; got {tuple(q.shape)}, {tuple(k.shape)}")
    if q.shape[1] != k.shape[1]:
        raise ValueError("sage3 is self-attention only (query and key lengths must match)")
    b, s, hq, d = q.shape
    hkv = k.shape[2]
    if hq % hkv:
        raise ValueError(f"query heads {hq} are not a multiple of key/value heads {hkv}")
    scale = 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
    (qr, iq), (kr, ik), (vr, iv) = quantize_qkv_reference(q, k, v, fmt, scale_rule)
    c = logit_factor(scale, iq, ik)
    # [B, H, S, D], KV heads expanded for GQA.
    rep = hq // hkv
    qh = qr.permute(0, 2, 1, 3)
    kh = kr.permute(0, 2, 1, 3).repeat_interleave(rep, dim=1)
    vh = vr.permute(0, 2, 1, 3).repeat_interleave(rep, dim=1)
    bf_qk = acc_dtype == "bf16_both_dot"
    bf_pv = acc_dtype in ("bf16_both_dot", "bf16_pv_only")
    m = torch.full((b, hq, s), -math.inf, dtype=torch.float32, device=q.device)
    lsum = torch.zeros((b, hq, s), dtype=torch.float32, device=q.device)
    acc = torch.zeros((b, hq, s, d), dtype=torch.float32, device=q.device)
    rows = torch.arange(s, device=q.device)
    for n0 in range(0, s, BLOCK_N):
        n1 = min(n0 + BLOCK_N, s)
        st = qh @ kh[:, :, n0:n1].transpose(-1, -2)
        if bf_qk:
            st = _bf16(st)
        st = st * c
        if causal:
            cols = torch.arange(n0, n1, device=q.device)
            st = st.masked_fill(cols[None, :] > rows[:, None], -math.inf)
        m_new = torch.maximum(m, st.amax(dim=-1))
        alpha = torch.exp2(m - m_new)
        p = torch.exp2(st - m_new.unsqueeze(-1))
        praw = quantize_p_reference(p, fmt, scale_rule)
        lsum = lsum * alpha + praw.sum(dim=-1)
        pv = praw @ vh[:, :, n0:n1]
        if bf_pv:
            acc = _bf16(_bf16(acc * alpha.unsqueeze(-1)) + _bf16(pv))
        else:
            acc = acc * alpha.unsqueeze(-1) + pv
        m = m_new
    out = acc / lsum.unsqueeze(-1) * iv
    return out.permute(0, 2, 1, 3).to(q.dtype)
