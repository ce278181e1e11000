"""The torch custom op ``torch.ops.vllm_qdq.qdq``: QDQ as one opaque graph node.

``qdq(x, fmt, scale_rule, axis, global_amax) -> Tensor`` returns
``vllm_qdq.qdq.quantize_dequantize(x, fmt, scale_rule=scale_rule, axis=axis,
global_amax=None if global_amax <= 0 else global_amax)``: same shape and dtype as ``x``, a new
tensor (never an alias of ``x``). Numerics are those of :mod:`vllm_qdq.reference` (the Triton
kernels on CUDA when available, bit-exact with it; see :mod:`vllm_qdq.qdq`).

Being a custom op with a fake (meta) implementation, it traces under Dynamo / AOT autograd /
Inductor as a single node and runs inside compiled graphs and CUDA-graph captures.

Importing this module registers the op once per process (re-import is harmless).
"""

from __future__ import annotations

import torch

from .qdq import quantize_dequantize

__all__ = ["qdq", "set_backend"]

#: QDQ backend the op uses (``None``: ``VLLM_QDQ_BACKEND`` / auto, see :mod:`vllm_qdq.qdq`).
_BACKEND: str | None = None


def set_backend(backend: str | None) -> None:
    """Pin the backend the op uses (``"auto"`` or ``None``: automatic choice)."""
    global _BACKEND
    _BACKEND = None if backend in (None, "auto") else backend


@torch.library.custom_op("vllm_qdq::qdq", mutates_args=())
def qdq(x: torch.Tensor, fmt: str, scale_rule: str, axis: int, global_amax: float) -> torch.Tensor:
    """Quantize-dequantize ``x`` (see the module docstring for the contract)."""
    y = quantize_dequantize(
        x,
        fmt,
        scale_rule=scale_rule,
        axis=axis,
        global_amax=None if global_amax <= 0 else global_amax,
        backend=_BACKEND,
    )
    return y.clone() if y.data_ptr() == x.data_ptr() and x.numel() else y


@qdq.register_fake
def _qdq_fake(x: torch.Tensor, fmt: str, scale_rule: str, axis: int, global_amax: float) -> torch.Tensor:
    return torch.empty_like(x)
