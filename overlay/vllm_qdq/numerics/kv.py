"""KV-cache QDQ: the keys or values one attention layer writes to the paged cache in one step.

The tensor is vLLM's ``[num_tokens, num_kv_heads, head_size]`` (what the attention backends'
``do_kv_cache_update`` receives). Every recipe of the format table applies along the head
dimension (``axis=-1``), so for each format the scaling group is:

=============================  ==========================================================
MX formats (``mx*``)           ``block`` consecutive elements of one token's head vector
                               (32 by default; a head size that is not a multiple is
                               zero-padded, which never changes a scale)
``nvfp4*``                     16 elements of one head vector (E4M3 / UE5M3 scale), FP32
                               global scale from the amax of the whole write (all tokens,
                               all heads)
``fp8_e4m3_per_tensor``        the whole write: one scale ``amax / 448``
``fp8_e4m3_per_head``          (KV only) one scale ``amax / 448`` per KV head over the
                               tokens of the write (vLLM's per-channel FP8 recipe applied to
                               each head's ``[num_tokens * head_size]`` values)
``fp8_e4m3_per_token``,        one scale per token and head (the head vector): vLLM's
``int8_per_token``             per-token-head KV recipes
``*_per_group128*``            128 elements of one head vector (the whole vector for heads
                               of 64 or 128)
=============================  ==========================================================

The ``*_per_channel`` recipes are weight recipes and are refused (:func:`kv_format_problem`);
for keys and values their per-row counterpart is ``*_per_token``.

Options of the format table (issue 18), along the head dimension too: ``rotate`` (a block
Hadamard rotation :class:`~vllm_qdq.numerics.rotation.Rotation`: the cache holds
``R^T QDQ(R k)``, so ``q . k_sim = (R q) . QDQ(R k)`` and ``p . v_sim = (p . QDQ(R v)) R^T``:
what a rotated low-precision cache computes, with the inverse rotation folded into the reader;
the block must divide the head size unless ``pad``), ``rounding="stochastic"`` with its
``seed``. ``fp8_e4m3_per_head`` takes neither (its scale spans the head's tokens; rotations are
for block formats).

Scopes that span tokens (``fp8_e4m3_per_tensor``, ``fp8_e4m3_per_head``, the NVFP4 family's global scale)
are *dynamic per write*: a prefill's keys share one scale, a decode step's keys (one token per
running sequence) another, so these depend on how the scheduler batches tokens, as a dynamic
per-write scale on real hardware would. Rows that carry no token (``valid`` false: vLLM pads the
key/value tensors for CUDA graphs, with slot ``-1``) are set to zero before the QDQ, so they
never enter an amax; their output is the QDQ of zeros (signed zeros) and is never written.

Numeric contract: exactly :func:`vllm_qdq.numerics.qdq.quantize_dequantize` with the recipe and
axis above (round half to even on the element grid, saturation, NaN/Inf rules, dequantized
value rounded once to the input dtype); the output has the input's shape and dtype. This module
reads no environment variable and imports no vLLM.
"""

from __future__ import annotations

import torch

from .formats import FORMATS, Family, Granularity, check_rounding, check_scale_rule, get_format
from .qdq import quantize_dequantize
from .rotation import Rotation

__all__ = ["KV_FORMATS", "KV_ONLY_FORMATS", "check_kv_format", "kv_format_problem", "qdq_kv", "spans_tokens"]

#: Recipes defined for the KV cache only (not in the format table).
KV_ONLY_FORMATS: tuple[str, ...] = ("fp8_e4m3_per_head",)
#: Every format name a ``kv_cache`` spec accepts (besides ``"off"``).
KV_FORMATS: tuple[str, ...] = tuple(n for n in FORMATS if not n.endswith("_per_channel")) + KV_ONLY_FORMATS


def kv_format_problem(fmt: str) -> str | None:
    """Why ``fmt`` cannot be a KV-cache format (``None``: it can; ``"off"`` can)."""
    if fmt == "off" or fmt in KV_FORMATS:
        return None
    if fmt.endswith("_per_channel") and fmt in FORMATS:
        return (f"{fmt!r} is a per-output-channel weight recipe; for keys and values use "
                f"{fmt[: -len('_per_channel')]}_per_token (per token and head) or fp8_e4m3_per_head")
    return f"{fmt!r} is not a KV-cache format; accepted: off, {', '.join(KV_FORMATS)}"


def check_kv_format(fmt: str, scale_rule: str, rounding: str = "nearest", rotate: Rotation | None = None) -> None:
    """Validate a KV spec; raises ``ValueError`` naming the value and the accepted ones."""
    p = kv_format_problem(fmt)
    if p is not None:
        raise ValueError(p)
    if fmt == "off":
        return
    spec = get_format("fp8_e4m3_per_channel" if fmt == "fp8_e4m3_per_head" else fmt)
    check_scale_rule(spec, scale_rule)
    if fmt in KV_ONLY_FORMATS and (rotate is not None or rounding != "nearest"):
        raise ValueError(f"{fmt!r} takes no rotate / rounding options; they apply to the table formats: "
                         f"{', '.join(f for f in KV_FORMATS if f not in KV_ONLY_FORMATS)}")
    check_rounding(spec, rounding)


def spans_tokens(fmt: str) -> bool:
    """Whether one scale of ``fmt`` is shared by several tokens of a write (then padded rows
    must be masked: see the module text)."""
    if fmt in KV_ONLY_FORMATS:
        return True
    spec = FORMATS[fmt]
    return spec.family is Family.NVFP4 or spec.granularity is Granularity.TENSOR


def qdq_kv(
    x: torch.Tensor,
    fmt: str,
    scale_rule: str = "floor",
    *,
    valid: torch.Tensor | None = None,
    backend: str | None = None,
    rounding: str = "nearest",
    seed: int | None = None,
    rotate: Rotation | None = None,
) -> torch.Tensor:
    """QDQ of one write of keys or values, ``x`` of shape ``[num_tokens, num_kv_heads, head_size]``.

    Args:
        x: bf16 / fp16 / fp32 keys or values.
        fmt: a name in :data:`KV_FORMATS`.
        scale_rule: MX formats' shared-scale rule (others accept only ``floor``).
        valid: optional bool ``[num_tokens]``: rows that hold a token. For the formats whose
            scale spans tokens (:func:`spans_tokens`) the other rows are zeroed first.
        backend: as for :func:`vllm_qdq.numerics.qdq.quantize_dequantize`.
        rounding, seed, rotate: the table formats' options (module text), along the head
            dimension.

    Returns:
        A new tensor, same shape and dtype (see the module text for the scaling groups).

    Raises:
        ValueError: a format, rule or option the KV cache does not take, a rotation block that
            does not divide the head size, or ``x`` not 3-D.
    """
    check_kv_format(fmt, scale_rule, rounding, rotate)
    if fmt == "off":
        return x
    if x.ndim != 3:
        raise ValueError(f"KV QDQ takes [num_tokens, num_kv_heads, head_size], got shape {tuple(x.shape)}")
    if valid is not None and spans_tokens(fmt):
        x = torch.where(valid.view(-1, 1, 1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    if fmt == "fp8_e4m3_per_head":
        t, h, d = x.shape
        rows = x.transpose(0, 1).reshape(h, t * d)
        y = quantize_dequantize(rows, "fp8_e4m3_per_channel", axis=-1, backend=backend)
        return y.view(h, t, d).transpose(0, 1).contiguous()
    return quantize_dequantize(x, fmt, scale_rule=scale_rule, axis=-1, backend=backend, rounding=rounding,
                               seed=seed, rotate=rotate)
