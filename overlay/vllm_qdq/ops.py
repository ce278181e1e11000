"""``torch.ops.vllm_qdq.qdq``: quantize-dequantize as one torch custom op.

Schema: ``qdq(Tensor x, str fmt, str scale_rule, int axis, float? global_amax,
int? block_size) -> Tensor``. It returns :func:`vllm_qdq.qdq.quantize_dequantize` of ``x``
(same shape, dtype and strides as ``x``, never an alias of it); numerics are those of
:mod:`vllm_qdq.reference` (the Triton kernels on CUDA, bit-exact with it).

Being a custom op with a fake implementation, it traces under Dynamo / AOT autograd /
Inductor as a single opaque node and runs inside compiled graphs and CUDA-graph captures.
The activation plugin (:mod:`vllm_qdq.vllm_patch`) and the ``qdq`` method
(:mod:`vllm_qdq.qdq_method`) both call it. Importing this module registers the op once per
process.
"""

from __future__ import annotations

import torch

from .qdq import quantize_dequantize

__all__ = ["qdq", "set_backend"]

#: Backend the op uses (``None``: ``VLLM_QDQ_BACKEND`` / automatic, see :mod:`vllm_qdq.qdq`).
_BACKEND: str | None = None


def set_backend(backend: str | None) -> None:
    """Pin the backend the op uses (``"auto"`` or ``None``: the automatic choice)."""
    global _BACKEND
    _BACKEND = None if backend in (None, "auto") else backend


@torch.library.custom_op("vllm_qdq::qdq", mutates_args=())
def qdq(
    x: torch.Tensor,
    fmt: str,
    scale_rule: str = "floor",
    axis: int = -1,
    global_amax: float | None = None,
    block_size: int | None = None,
) -> torch.Tensor:
    """Quantize ``x`` to ``fmt`` and back (see :func:`vllm_qdq.qdq.quantize_dequantize`)."""
    y = quantize_dequantize(
        x, fmt, scale_rule=scale_rule, axis=axis, global_amax=global_amax, block_size=block_size,
        backend=_BACKEND,
    )
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
) -> torch.Tensor:
    return torch.empty_like(x)
