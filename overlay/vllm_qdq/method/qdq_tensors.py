"""QDQ of the ``qdq`` method's tensors: weights once at load, activations on every forward.

Numeric contract: :mod:`vllm_qdq.numerics.reference` (through the public API for weights and
the ``vllm_qdq::qdq`` custom op for activations, :mod:`vllm_qdq.activation.ops`). Blocks and
rows run along the last dimension (K, the GEMM's reduction dimension). Weights whose recipe
has a per-tensor scale (NVFP4's global scale, ``*_per_tensor``) get one per logical shard of
a fused layer and per expert. A spec's ``rotate`` makes weights ``QDQ(W R^T) R`` (every row
``R^T QDQ(R w)``) and activations ``R^T QDQ(R x)``, so the GEMM sees ``QDQ(R x) . QDQ(R w)``; its
``rounding`` / ``seed`` select stochastic rounding (draws indexed within the tensor QDQ'd: a
weight shard, an expert, an activation). No vLLM import.
"""

from __future__ import annotations

import torch

from ..activation import ops  # noqa: F401  (registers torch.ops.vllm_qdq.qdq / qdq_stats)
from ..config import ConfigError, QuantSpec
from ..numerics.formats import FORMATS, Family, Granularity
from ..numerics.qdq import quantize_dequantize

__all__ = ["check_rotation", "qdq_act", "qdq_weight", "shard_amax"]


def _spec_args(spec: QuantSpec) -> dict:
    args: dict = {"scale_rule": spec.scale_rule} if len(FORMATS[spec.format].scale_rules) > 1 else {}
    if spec.rounding != "nearest":
        args.update(rounding=spec.rounding, seed=spec.seed)
    if spec.rotate is not None:
        args["rotate"] = spec.rotate
    return args


def _has_global_scale(fmt: str) -> bool:
    f = FORMATS[fmt]
    return f.family is Family.NVFP4 or f.granularity is Granularity.TENSOR


def check_rotation(spec: QuantSpec | None, k: int, where: str) -> None:
    """Refuse, at start-up, a rotation whose block does not divide ``k`` (the layer's K) unless
    the spec pads; the :class:`~vllm_qdq.config.ConfigError` names ``where`` (layer and role)."""
    if spec is None or not spec.enabled or spec.rotate is None:
        return
    rot = spec.rotate
    if k % rot.block and not rot.pad:
        dividing = [b for b in (16, 32, 64, 128, 256) if k % b == 0]
        raise ConfigError(
            f"{where}: rotate.block={rot.block} does not divide K={k}; accepted: a block dividing K "
            f"({', '.join(map(str, dividing)) or 'none'}), or \"pad\": true"
        )


def shard_amax(w: torch.Tensor, shards: list[int] | None = None) -> torch.Tensor:
    """``max |w|`` per leading index (expert) and logical shard of N: fp32 ``[E, len(shards)]``
    (``E`` = 1 for a 2-D weight); what a per-tensor scale is computed from."""
    lead = w.reshape(-1, w.shape[-2], w.shape[-1])
    sizes = shards if shards and sum(shards) == w.shape[-2] else [w.shape[-2]]
    parts = torch.split(lead, sizes, dim=1)
    return torch.stack([p.abs().amax(dim=(1, 2)).to(torch.float32) for p in parts], dim=1)


def _qdq_given_amax(t: torch.Tensor, spec: QuantSpec, amax: torch.Tensor) -> torch.Tensor:
    """QDQ ``t`` with its per-tensor scale taken from ``amax`` (>= ``t``'s own) instead of ``t``.

    NVFP4 family: the public API's ``global_amax``. Per-tensor FP8: ``t`` flattened with one
    extra element equal to ``amax`` appended (exact: ``amax`` is a value of the unsharded weight,
    so representable in its dtype) and dropped after, so the scale is ``amax / 448``.
    """
    if FORMATS[spec.format].family is Family.NVFP4:
        return quantize_dequantize(t, spec.format, axis=-1, global_amax=amax, **_spec_args(spec))
    flat = torch.cat([t.reshape(-1), amax.reshape(1).to(t.dtype)])
    return quantize_dequantize(flat, spec.format, axis=-1, **_spec_args(spec))[:-1].reshape(t.shape)


@torch.no_grad()
def qdq_weight(
    w: torch.Tensor, spec: QuantSpec, shards: list[int] | None = None, amax: torch.Tensor | None = None
) -> torch.Tensor:
    """QDQ a weight ``[..., N, K]`` along K; tensors with a global scale per shard of N.

    ``shards`` splits the N dimension into the logical layers of a fused layer (q/k/v,
    gate/up); leading dimensions (MoE experts) are separate tensors too. ``amax`` (formats with
    a per-tensor scale only; fp32 ``[E, len(shards)]`` as :func:`shard_amax` gives): the amax
    each per-tensor scale is computed from, instead of the tensor's own (tensor parallelism with
    ``VLLM_QDQ_TP_AMAX=layer``: the unsharded layer's, all-reduced over the ranks).
    """
    if not spec.enabled:
        return w
    if not _has_global_scale(spec.format):
        return quantize_dequantize(w, spec.format, axis=-1, **_spec_args(spec))
    out = torch.empty_like(w)
    lead = w.reshape(-1, w.shape[-2], w.shape[-1])
    dst = out.view(-1, w.shape[-2], w.shape[-1])
    sizes = shards if shards and sum(shards) == w.shape[-2] else [w.shape[-2]]
    for e in range(lead.shape[0]):
        start = 0
        for i, n in enumerate(sizes):
            part = lead[e, start : start + n]
            if amax is None:
                dst[e, start : start + n] = quantize_dequantize(part, spec.format, axis=-1, **_spec_args(spec))
            else:
                dst[e, start : start + n] = _qdq_given_amax(part, spec, amax[e, i])
            start += n
    return out


def qdq_act(x: torch.Tensor, spec: QuantSpec, name: str | None = None) -> torch.Tensor:
    """QDQ an activation ``[..., K]`` along K (a new tensor; ``x`` is left as it is).

    ``name`` (the layer prefix): record this call in the per-layer statistics under that name
    (through the ``vllm_qdq::qdq_stats`` op, which records at run time, eagerly and in compiled
    graphs). Callers pass it only while ``VLLM_QDQ_STATS`` is set, a setting they resolved when
    the layer's method was built: this function reads no setting, so it traces under
    ``torch.compile`` (vLLM's default mode) as one op node with constant arguments.
    """
    if not spec.enabled or x.numel() == 0:
        return x
    if name is not None:
        return torch.ops.vllm_qdq.qdq_stats(
            x, spec.format, spec.scale_rule, -1, name, spec.rounding, spec.seed, spec.rotate_arg
        )
    return torch.ops.vllm_qdq.qdq(x, spec.format, spec.scale_rule, -1, None, None, spec.rounding, spec.seed,
                                  spec.rotate_arg)
