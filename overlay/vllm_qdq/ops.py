"""``torch.ops.vllm_qdq.qdq``: quantize-dequantize as a torch custom op.

Usable inside ``torch.compile`` graphs (``fullgraph=True``): the op is opaque to Dynamo and
Inductor, and its fake implementation gives an output like ``x`` (same shape, dtype and
strides). The real implementation is :func:`vllm_qdq.qdq.quantize_dequantize` with the
backend picked as usual (``VLLM_QDQ_BACKEND``; Triton for CUDA tensors by default).

Schema: ``qdq(Tensor x, str fmt, str scale_rule, int axis, float? global_amax,
int? block_size) -> Tensor``. Importing this module registers the op (once per process).
"""

from __future__ import annotations

import torch

from .qdq import quantize_dequantize

__all__ = ["qdq"]


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
        x, fmt, scale_rule=scale_rule, axis=axis, global_amax=global_amax, block_size=block_size
    )
    out = torch.empty_like(x)
    if y.stride() == out.stride() and y.data_ptr() != x.data_ptr():
        return y
    return out.copy_(y)  # same layout as the fake implementation promises


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
