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

from functools import lru_cache

import torch

from ..numerics.qdq import quantize_dequantize
from ..numerics.rotation import Rotation

__all__ = ["qdq", "qdq_stats"]


#: The ops' library: defined with ``torch.library.Library`` and one CompositeExplicitAutograd
#: kernel each, not ``torch.library.custom_op``, whose Python dispatch wrapper costs ~10 us more
#: per eager call (measured on this CPU: 12.9 against 2.9 us for the op alone, and 27 us when a
#: ``rotate`` string is passed) on the path every eager and every non-graph compiled call takes.
_LIB = torch.library.Library("vllm_qdq", "FRAGMENT")  # held for the process: the ops live as long as it
_LIB.define(
    'qdq(Tensor x, str fmt, str scale_rule="floor", SymInt axis=-1, float? global_amax=None, '
    'SymInt? block_size=None, str rounding="nearest", SymInt? seed=None, str? rotate=None) -> Tensor',
    tags=(torch.Tag.pt2_compliant_tag,),
)
_LIB.define(
    'qdq_stats(Tensor x, str fmt, str scale_rule, SymInt axis, str name, str rounding="nearest", '
    'SymInt? seed=None, str? rotate=None) -> Tensor',
    tags=(torch.Tag.pt2_compliant_tag,),
)


@lru_cache(maxsize=256)
def _rotation(text: str) -> Rotation:
    """:meth:`Rotation.decode`, once per string."""
    return Rotation.decode(text)


def _qdq_impl(
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
    """The kernel of ``vllm_qdq::qdq``: :func:`quantize_dequantize` of ``x`` with ``torch.empty_like
    (x)``'s strides where ``x`` is not contiguous (a contiguous ``x`` gets a contiguous result:
    the same strides but, for size-1 dimensions, ones no reader looks at), never an alias of ``x``.

    No gradient: with grad mode on and ``x`` requiring grad the op raises (:func:`_no_gradient`),
    rather than return a result whose backward would pass nothing to ``x``."""
    if x.requires_grad and torch.is_grad_enabled():
        _no_gradient()
    y = quantize_dequantize(
        x, fmt, scale_rule=scale_rule, axis=axis, global_amax=global_amax, block_size=block_size,
        rounding=rounding, seed=seed, rotate=_rotation(rotate) if rotate else None,
    )  # backend: the process default (vllm_qdq.numerics.qdq.set_default_backend)
    if x.is_contiguous() and y.is_contiguous() and y.data_ptr() != x.data_ptr():
        return y  # empty_like(x) of a contiguous x is contiguous: no check allocation
    out = torch.empty_like(x)
    if y.stride() == out.stride() and (y.data_ptr() != x.data_ptr() or not x.numel()):
        return y
    return out.copy_(y)


def _no_gradient() -> None:
    raise RuntimeError(
        "vllm_qdq::qdq has no gradient (a QDQ is piecewise constant and no straight-through estimator is "
        "implemented), and its input requires grad: call it under torch.no_grad() or torch.inference_mode() "
        "(vLLM runs its forward passes in inference mode), or pass x.detach()")


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


def _qdq_stats_impl(
    x: torch.Tensor,
    fmt: str,
    scale_rule: str,
    axis: int,
    name: str,
    rounding: str = "nearest",
    seed: int | None = None,
    rotate: str | None = None,
) -> torch.Tensor:
    """The kernel of ``vllm_qdq::qdq_stats``: :func:`_qdq_impl`, with the call recorded under
    ``name`` (see the module docstring). Recording never raises into the forward pass
    (:func:`vllm_qdq.stats.record_call`)."""
    from ..stats import record_call

    y = _qdq_impl(x, fmt, scale_rule, axis, None, None, rounding, seed, rotate)
    record_call(name, fmt, x, y, scale_rule=scale_rule, axis=axis)
    return y


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


_LIB.impl("qdq", _qdq_impl, "CompositeExplicitAutograd")
_LIB.impl("qdq_stats", _qdq_stats_impl, "CompositeExplicitAutograd")
for _op in ("qdq", "qdq_stats"):  # no autograd kernel: the kernel itself refuses inputs that need one
    _LIB.impl(_op, torch.library.fallthrough_kernel, "Autograd")
torch.library.register_fake("vllm_qdq::qdq", _qdq_fake, lib=_LIB)
torch.library.register_fake("vllm_qdq::qdq_stats", _qdq_stats_fake, lib=_LIB)

#: The ops (``torch.ops.vllm_qdq.qdq`` / ``qdq_stats``), under their module names.
qdq = torch.ops.vllm_qdq.qdq
qdq_stats = torch.ops.vllm_qdq.qdq_stats
