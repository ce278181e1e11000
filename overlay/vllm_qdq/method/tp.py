"""Tensor parallelism: what QDQ of one rank's shard equals, against the unsharded layer's QDQ.

vLLM shards a linear layer one of two ways (``vllm.model_executor.layers.linear``):

* column-parallel (``ColumnParallelLinear``, ``MergedColumnParallelLinear``, ``QKVParallelLinear``,
  the fused-MoE ``w13``): the weight ``[N, K]`` keeps whole rows, each rank holds ``N/tp`` of
  them (per logical shard of a fused layer); the input ``x [T, K]`` is the whole activation,
  replicated on every rank.
* row-parallel (``RowParallelLinear``, the fused-MoE ``w2``): each rank holds the K-slice
  ``W[:, r*K/tp : (r+1)*K/tp]`` and receives the matching slice of ``x``; the partial GEMMs are
  summed by an all-reduce.

The ``qdq`` method QDQs each rank's shard (weights at load, activations per forward) along K.
Numeric contract of the comparison (:func:`shard_effect`), format by format:

========================  =====================  ============================================
format (granularity)      column-parallel         row-parallel (K split, ``k_part = K/tp``)
========================  =====================  ============================================
MX, block b (32)          exact                   exact iff ``k_part % b == 0``; else the
                                                  blocks straddling a rank boundary are
                                                  cut in two, each part with its own scale
NVFP4 (16 + global)       blocks exact; weight    blocks as MX (b = 16); the global amax is
                          global amax is the      the rank's slice's (weights: the layer's
                          shard's unless          with ``VLLM_QDQ_TP_AMAX=layer``; activations:
                          ``VLLM_QDQ_TP_AMAX=     always the slice's)
                          layer``; act exact
per-group128              exact                   exact iff ``k_part % 128 == 0``
per-token / per-channel   exact                   one scale per row *per rank* (finer than
                                                  the unsharded layer's row scale)
per-tensor FP8            weight: the shard's     the slice's amax (weights: the layer's
                          amax unless ``layer``;  with ``VLLM_QDQ_TP_AMAX=layer``)
                          act exact
========================  =====================  ============================================

"Exact" means bit for bit the corresponding slice of the unsharded QDQ. Where it is not, the
simulation is that of a TP deployment that quantizes each rank's shard on its own (which is what
a real low-precision TP kernel does: scales are computed on the data each GPU holds), not of
the single-GPU model. No vLLM import.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..numerics.formats import FORMATS, Family, Granularity

__all__ = ["ShardEffect", "Style", "shard_effect"]


class Style(str, enum.Enum):
    """How vLLM splits a layer across tensor-parallel ranks."""

    COLUMN = "column"  # output rows split, input replicated
    ROW = "row"  # K split: weight columns and the input's last dimension


@dataclass(frozen=True)
class ShardEffect:
    """The outcome of QDQ on one rank's shard.

    ``exact``: equal, bit for bit, to the matching slice of the unsharded layer's QDQ.
    ``reason``: why not (empty when exact), one clause for a log line or an error.
    ``layer_amax_fixes``: ``VLLM_QDQ_TP_AMAX=layer`` (weights only) makes it exact.
    """

    exact: bool
    reason: str = ""
    layer_amax_fixes: bool = False


def shard_effect(fmt: str, style: Style, k: int, tp: int, role: str, block_size: int | None = None) -> ShardEffect:
    """QDQ of a ``tp``-way shard of a layer with reduction size ``k`` (the whole layer's K),
    ``role`` ``"weight"`` or ``"act"``, compared to the unsharded layer's QDQ (module docstring).

    A layer that vLLM does not split (``tp == 1``, replicated layers) is exact.
    """
    spec = FORMATS[fmt]
    if tp <= 1:
        return ShardEffect(True)
    has_global = spec.family is Family.NVFP4 or spec.granularity is Granularity.TENSOR
    what = "NVFP4 global scale" if spec.family is Family.NVFP4 else "per-tensor scale"
    if style is Style.COLUMN:
        if has_global and role == "weight":
            return ShardEffect(
                False, f"{fmt}: the {what} comes from this rank's 1/{tp} of the output rows", True
            )
        return ShardEffect(True)
    k_part = k // tp
    if spec.granularity is Granularity.ROW:
        unit = "token" if role == "act" else "output channel"
        return ShardEffect(False, f"{fmt}: one scale per {unit} per rank (over K/tp={k_part}, not K={k})")
    problems = []
    if spec.granularity is Granularity.BLOCK:
        b = block_size or spec.block_size
        if k_part % b:
            problems.append(f"blocks of {b} straddle the rank boundary (K/tp={k_part} is not a multiple of {b})")
    if has_global:
        problems.append(f"the {what} comes from this rank's K-slice")
    if not problems:
        return ShardEffect(True)
    straddles = any("straddle" in p for p in problems)
    fixes = role == "weight" and not straddles
    return ShardEffect(False, f"{fmt}: " + "; ".join(problems), fixes)
