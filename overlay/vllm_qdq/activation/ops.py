"""``torch.ops.vllm_qdq.qdq``: quantize-dequantize as one torch custom op.

Schema: ``qdq(Tensor x, str fmt, str scale_rule, int axis, float? global_amax,
int? block_size, str rounding="nearest", int? seed=None, str? rotate=None) -> Tensor``
(``rotate``: :meth:`vllm_qdq.numerics.rotation.Rotation.encode`, e.g. ``"hadamard:128:-:0"``).
It returns :func:`vllm_qdq.numerics.qdq.quantize_dequantize` of ``x``
(same shape, dtype and strides as ``x``, never an alias of it); numerics are those of
:mod:`vllm_qdq.numerics.reference` (the Triton kernels on CUDA, bit-exact with it).

Being a custom op with a fake implementation, it traces under Dynamo / AOT autograd /
Inductor as a single opaque node and runs inside compiled graphs and CUDA-graph captures.
The activation plugin (:mod:`vllm_qdq.activation.vllm_patch`) and the ``qdq`` method
(:mod:`vllm_qdq.method`) both call it. Importing this module registers the ops once per
process.

``torch.ops.vllm_qdq.qdq_stats(Tensor x, str fmt, str scale_rule, int axis, str name,
str rounding="nearest", int? seed=None, str? rotate=None) -> Tensor``: the same QDQ (no global amax, the format's block), and the call recorded under
``name`` in the per-layer statistics (:func:`vllm_qdq.stats.record_call`) by the op's real
implementation. A compiled graph calls that implementation at run time like any other
opaque op, so statistics are recorded eagerly and under ``torch.compile`` alike; a CUDA
graph replays the captured kernels without running Python, so calls replayed from CUDA
graphs are not recorded (and the capture itself records nothing). Callers use it instead of
``qdq`` only while ``VLLM_QDQ_STATS`` is set, decided when they are built.
"""

from __future__ import annotations

import torch

from ..numerics.qdq import quantize_dequantize
from ..numerics.rotation import Rotation

__all__ = ["qdq", "qdq_stats"]


@torch.library.custom_op("vllm_qdq::qdq", mutates_args=())
def qdq(
    x: torch.Tensor,
    fmt: str,
    scale_rule: str = "floor",
    axis: int = -1,
    global_amax: float | None = None,
    block_size: int | None = None,
    rounding: str = "nearest",
    seed: int | None = None,
    rotate: str | None = None,
) -> torch.Tensor:
    """Quantize ``x`` to ``fmt`` and back (see :func:`vllm_qdq.numerics.qdq.quantize_dequantize`)."""
    return _qdq_impl(x, fmt, scale_rule, axis, global_amax, block_size, rounding, seed, rotate)


def _qdq_impl(
    x: torch.Tensor,
    fmt: str,
    scale_rule: str,
    axis: int,
    global_amax: float | None,
    block_size: int | None,
    rounding: str = "nearest",
    seed: int | None = None,
    rotate: str | None = None,
) -> torch.Tensor:
    y = quantize_dequantize(
        x, fmt, scale_rule=scale_rule, axis=axis, global_amax=global_amax, block_size=block_size,
        rounding=rounding, seed=seed, rotate=Rotation.decode(rotate) if rotate else None,
    )  # backend: the process default (vllm_qdq.numerics.qdq.set_default_backend)
    out = torch.empty_like(x)
    if y.stride() == out.stride() and (y.data_ptr() != x.data_ptr() or not x.numel()):
        return y
    return out.copy_(y)  # the layout the fake implementation promises


@qdq.register_fake
def _qdq_fake(
    x: torch.Tensor,
    fmt: str,
    scale_rule: str = "floor",
    axis: int = -1,
    global_amax: float | None = None,
    block_size: int | None = None,
    rounding: str = "nearest",
    seed: int | None = None,
    rotate: str | None = None,
) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("vllm_qdq::qdq_stats", mutates_args=())
def qdq_stats(
    x: torch.Tensor,
    fmt: str,
    scale_rule: str,
    axis: int,
    name: str,
    rounding: str = "nearest",
    seed: int | None = None,
    rotate: str | None = None,
) -> torch.Tensor:
    """:func:`qdq` of ``x``, with the call recorded under ``name`` (see the module docstring).

    Recording never raises into the forward pass (:func:`vllm_qdq.stats.record_call`).
    """
    from ..stats import record_call

    y = _qdq_impl(x, fmt, scale_rule, axis, None, None, rounding, seed, rotate)
    record_call(name, fmt, x, y, scale_rule=scale_rule, axis=axis)
    return y


@qdq_stats.register_fake
def _qdq_stats_fake(
    x: torch.Tensor,
    fmt: str,
    scale_rule: str,
    axis: int,
    name: str,
    rounding: str = "nearest",
    seed: int | None = None,
    rotate: str | None = None,
) -> torch.Tensor:
    return torch.empty_like(x)
