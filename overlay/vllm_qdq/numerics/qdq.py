"""Public QDQ API: quantize-dequantize a tensor in any format of the table.

>>> import torch
>>> from vllm_qdq.qdq import quantize_dequantize, FORMATS
>>> y = quantize_dequantize(torch.randn(4, 64, dtype=torch.bfloat16), "mxfp4")

The numeric contract (rounding, saturation, scale rules, NaN/Inf, zeros, padding) is stated
in :mod:`vllm_qdq.numerics.reference`; every backend meets it bit for bit (NVFP4: bit for bit outside
fp32 ties, see there).

Backends: ``"reference"`` (pure torch, any device) and ``"triton"`` (fused kernels,
:mod:`vllm_qdq.numerics.triton_qdq`, CUDA tensors or ``TRITON_INTERPRET=1``). ``backend=None`` picks
Triton for CUDA tensors when it is importable and the reference otherwise, unless
:func:`set_default_backend` chose another default for the process (the settings of
:mod:`vllm_qdq.config` do, from ``VLLM_QDQ_BACKEND``, in every vLLM process the plugin loads in).
This module reads no environment variable.
"""

from __future__ import annotations

import torch

from .formats import (
    FORMATS,
    ROUNDINGS,
    SCALE_RULES,
    Family,
    FormatSpec,
    check_rounding,
    check_scale_rule,
    get_format,
)
from .reference import (
    SUPPORTED_DTYPES,
    QuantizedTensor,
    dequantize_reference,
    qdq_reference,
    qdq_rotated_reference,
    quantize_reference,
)
from .rotation import Rotation, parse_rotation

__all__ = [
    "BACKENDS",
    "FORMATS",
    "ROUNDINGS",
    "SCALE_RULES",
    "QuantizedTensor",
    "Rotation",
    "dequantize",
    "quantize",
    "quantize_dequantize",
    "resolve",
    "set_default_backend",
]

#: Accepted values of ``backend`` / ``VLLM_QDQ_BACKEND`` (the one definition of the list).
BACKENDS: tuple[str, ...] = ("auto", "reference", "triton")

#: The backend used when a call passes ``backend=None`` (see :func:`set_default_backend`).
_default_backend = "auto"


def set_default_backend(backend: str | None) -> None:
    """Set the process's default backend (``None`` means ``"auto"``).

    Raises:
        ValueError: a name not in :data:`BACKENDS`.
    """
    global _default_backend
    choice = backend or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"unknown QDQ backend {choice!r}; accepted: {', '.join(BACKENDS)}")
    _default_backend = choice


def resolve(
    x: torch.Tensor,
    fmt: str,
    scale_rule: str = "floor",
    block_size: int | None = None,
) -> FormatSpec:
    """Validate a call's arguments and return the recipe; raises ``ValueError`` naming the value."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"unsupported dtype {x.dtype}; accepted: {', '.join(map(str, SUPPORTED_DTYPES))}"
        )
    spec = get_format(fmt, block_size)
    check_scale_rule(spec, scale_rule)
    return spec


def _check_seed(seed: object) -> int | None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ValueError(f"seed={seed!r}; accepted: null or an integer in [0, 2**63)")
    return seed


def _check_axis(x: torch.Tensor, axis: int) -> int:
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis={axis} is out of range for a {x.ndim}-d tensor")
    return axis % x.ndim


def _backend(x: torch.Tensor, backend: str | None) -> str:
    choice = backend or _default_backend
    if choice not in BACKENDS:
        raise ValueError(f"unknown QDQ backend {choice!r}; accepted: {', '.join(BACKENDS)}")
    if choice == "auto":
        if x.is_cuda:
            from . import triton_qdq

            return "triton" if triton_qdq.available() else "reference"
        return "reference"
    return choice


def quantize(
    x: torch.Tensor,
    fmt: str,
    *,
    scale_rule: str = "floor",
    axis: int = -1,
    global_amax: float | torch.Tensor | None = None,
    block_size: int | None = None,
    rounding: str = "nearest",
    seed: int | None = None,
) -> QuantizedTensor:
    """Quantize ``x``: element codes and scales apart (see :class:`QuantizedTensor`)."""
    spec = resolve(x, fmt, scale_rule, block_size)
    axis = _check_axis(x, axis)
    check_rounding(spec, rounding)
    return quantize_reference(x, spec, scale_rule, axis, global_amax, rounding, _check_seed(seed))


def dequantize(q: QuantizedTensor) -> torch.Tensor:
    """Values of a :class:`QuantizedTensor` in its original dtype and shape."""
    return dequantize_reference(q)


def quantize_dequantize(
    x: torch.Tensor,
    fmt: str,
    *,
    scale_rule: str = "floor",
    axis: int = -1,
    global_amax: float | torch.Tensor | None = None,
    block_size: int | None = None,
    backend: str | None = None,
    rounding: str = "nearest",
    seed: int | None = None,
    rotate: Rotation | dict | None = None,
) -> torch.Tensor:
    """Quantize ``x`` to ``fmt`` and back; same shape and dtype as ``x``.

    Args:
        x: bf16, fp16 or fp32 tensor, any shape with at least one dimension.
        fmt: a name in :data:`FORMATS`.
        scale_rule: MX formats: ``floor`` (OCP), ``ceil``, ``even``, ``rceil``; NVFP4 family:
            ``floor`` (block max to 6) or ``four_over_six``.
        axis: the dimension the blocks / rows run along.
        global_amax: NVFP4 only: the per-tensor amax to use instead of ``x``'s own.
        block_size: another block size where the format allows one (MX: 16, 32, 64).
        backend: ``reference``, ``triton``, ``auto`` or ``None`` (the process default, see
            the module docstring).
        rounding: ``nearest`` (RNE) or ``stochastic`` (MX and NVFP4 family; see
            :mod:`vllm_qdq.numerics.reference` for the generator and the index).
        seed: stochastic rounding's Philox key (``None``: 0).
        rotate: a :class:`~vllm_qdq.numerics.rotation.Rotation` (or its JSON mapping): return
            ``R^T QDQ(R x)`` along ``axis`` (:func:`~vllm_qdq.numerics.reference.qdq_rotated_reference`).

    Raises:
        ValueError: unknown format, rule, rounding or backend, unsupported dtype, forbidden
            block size, a bad rotation or a K it does not divide, or ``global_amax`` given to a
            format that has no global scale.
    """
    spec = resolve(x, fmt, scale_rule, block_size)
    axis = _check_axis(x, axis)
    check_rounding(spec, rounding)
    seed = _check_seed(seed)
    rot = parse_rotation(rotate) if rotate is not None else None
    if global_amax is not None and spec.family is not Family.NVFP4:
        raise ValueError(f"global_amax applies to the NVFP4 family only, not {fmt!r}")
    if rot is not None:
        from .rotation import check_length

        check_length(rot, x.shape[axis])
    if x.numel() == 0:
        return x.clone()
    if _backend(x, backend) == "triton":
        from . import triton_qdq

        return triton_qdq.qdq(x, spec, scale_rule, axis, global_amax, rounding=rounding, seed=seed, rotate=rot)
    if rot is not None:
        return qdq_rotated_reference(x, spec, rot, scale_rule, axis, global_amax, rounding, seed)
    return qdq_reference(x, spec, scale_rule, axis, global_amax, rounding, seed)
