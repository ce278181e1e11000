"""``torch.ops.vllm_qdq.sage3_attention``: the sage3 Triton path as one opaque torch op.

Schema: ``sage3_attention(Tensor q, Tensor k, Tensor v, str quant_format, str acc_dtype="fp32",
bool causal=False, float? sm_scale=None, str scale_rule="floor") -> Tensor``; it returns
:func:`vllm_qdq.sage3.numerics.kernel.sage3_attention` of its arguments (``[B, S, Hq, D]`` in
``q``'s dtype; numerics: :mod:`vllm_qdq.sage3.numerics.reference`).

Why an op: traced by Dynamo, the kernel's host code and Triton launches would be captured as
user-defined Triton kernels, which Inductor compiles itself with its own options; in torch 2.11-2.13
those leave ``enable_fp_fusion`` at Triton's default (on) for CUDA, which changes sage3's numbers
(the module docstring of the kernel says how: the ``_s1`` formats' P), and Inductor would also
compile the K mean and the launch arithmetic with its own reduction order. As an opaque node with
a fake implementation, the call runs exactly as in eager mode inside compiled graphs (no graph
break), under the launch options the kernel module sets. Importing this module registers the op
once per process.
"""

from __future__ import annotations

import torch

from .numerics.kernel import sage3_attention as _sage3_attention_kernel

__all__ = ["sage3_attention_op"]

_LIB = torch.library.Library("vllm_qdq", "FRAGMENT")  # held for the process: the op lives as long as it
_LIB.define(
    'sage3_attention(Tensor q, Tensor k, Tensor v, str quant_format, str acc_dtype="fp32", bool causal=False, '
    'float? sm_scale=None, str scale_rule="floor") -> Tensor',
    tags=(torch.Tag.pt2_compliant_tag,),
)


def _impl(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, quant_format: str, acc_dtype: str = "fp32",
    causal: bool = False, sm_scale: float | None = None, scale_rule: str = "floor",
) -> torch.Tensor:
    """The op's kernel: the Triton path (no gradient: inference only, as vllm-omni runs it)."""
    return _sage3_attention_kernel(q, k, v, quant_format=quant_format, acc_dtype=acc_dtype, causal=causal,
                                   sm_scale=sm_scale, scale_rule=scale_rule)


def _fake(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, quant_format: str, acc_dtype: str = "fp32",
    causal: bool = False, sm_scale: float | None = None, scale_rule: str = "floor",
) -> torch.Tensor:
    """The kernel's output layout: ``empty_like`` of ``q`` as the kernel reads it (contiguous
    when its last dimension is not)."""
    if q.ndim == 4 and q.shape[1] and q.stride(-1) != 1:
        q = q.contiguous()
    return torch.empty_like(q)


_LIB.impl("sage3_attention", _impl, "CompositeExplicitAutograd")
_LIB.impl("sage3_attention", torch.library.fallthrough_kernel, "Autograd")
torch.library.register_fake("vllm_qdq::sage3_attention", _fake, lib=_LIB)

#: The op (``torch.ops.vllm_qdq.sage3_attention``).
sage3_attention_op = torch.ops.vllm_qdq.sage3_attention
