"""The vllm-omni diffusion attention backend that runs sage3 in the ``SAGE_ATTN`` slot.

:class:`Sage3AttentionBackend` is what :func:`vllm_qdq.sage3.plugin.register_omni` registers
for ``DiffusionAttentionBackendEnum.SAGE_ATTN``; vllm-omni's ``Attention`` layer instantiates
its :class:`Sage3AttentionImpl` with ``(num_heads, head_size, softmax_scale, causal,
num_kv_heads, ...)`` and calls ``forward(query, key, value, attn_metadata)`` with
``[B, S, H, D]`` (NHD) tensors.

The Triton kernel (:mod:`vllm_qdq.sage3.numerics.kernel`) runs when all of these hold; otherwise the
call goes to ``torch.nn.functional.scaled_dot_product_attention`` (same mask handling as
vllm-omni's SDPA backend) and one log line per reason says why (once per process):

* no attention mask in ``attn_metadata`` (masks are not simulated);
* self-attention: query and key lengths equal (cross-attention falls back);
* head dim in :data:`~vllm_qdq.sage3.numerics.kernel.SUPPORTED_HEAD_DIMS` (32, 64, 128);
* dtype bf16, fp16 or fp32 (all of q, k, v the same);
* 4-D inputs with query heads a multiple of key/value heads (GQA/MQA run in the kernel);
* tensors on CUDA, or ``TRITON_INTERPRET=1``.

The quantization format and accumulator come from :func:`vllm_qdq.config.sage3_settings`
(``SAGE3_QUANT_FORMAT``, ``SAGE3_ACC_DTYPE``, ``SAGE3_SCALE_RULE``), read when the layer is built.

**Routing.** With ``SAGE3_ROUTE`` set, each call's format comes from the route
(:class:`vllm_qdq.sage3_route.Route`) given the call's denoising step and layer, which
:func:`vllm_qdq.sage3.route.locate` reads from vllm-omni's forward context or infers. ``off``
runs vllm-omni's in-tree ``TORCH_SDPA`` implementation (``SDPAImpl``, built with this layer's
arguments; its CUDA path, whose mask handling is ``broadcast_k``), unquantized. The scale rule
applies to the MX formats a route picks; ``nvfp4`` keeps its E4M3 block scales. A routed (or
``SAGE3_TRACE``d) call runs outside ``torch.compile`` (``torch.compiler.disable``: a graph break
per attention call), because its format depends on Python state that changes every step; without
a route or trace the call is one opaque op in the compiled graph (``torch.ops.vllm_qdq.sage3_attention``,
:mod:`vllm_qdq.sage3.ops`: traced, its Triton kernels would be recompiled by Inductor with FP
fusion on, which changes the numbers).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from vllm_omni.diffusion.attention.backends.abstract import (
    AttentionBackend,
    AttentionImpl,
    AttentionMetadata,
)

from ..config import sage3_settings
from .numerics.kernel import SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS, interpreting, sage3_attention
from .ops import sage3_attention_op
from .route import TRACER, layer_index_from_prefix, locate, new_layer_serial

logger = logging.getLogger("vllm_qdq")

__all__ = ["Sage3AttentionBackend", "Sage3AttentionImpl", "fallback_reason", "sdpa_fallback"]

_LOGGED: set[str] = set()


def _log_once(key: str, msg: str, *args: object) -> None:
    if key not in _LOGGED:
        _LOGGED.add(key)
        logger.info(msg, *args)


def fallback_reason(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_metadata: AttentionMetadata | None,
) -> tuple[str, str] | None:
    """``(key, message)`` saying why the kernel cannot run these inputs, or None if it can."""
    if attn_metadata is not None and getattr(attn_metadata, "attn_mask", None) is not None:
        return "mask", "an attention mask was given (sage3 does not simulate masks)"
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4 or key.shape != value.shape:
        return "shape", f"unsupported shapes q {tuple(query.shape)}, k {tuple(key.shape)}, v {tuple(value.shape)}"
    if query.shape[1] != key.shape[1]:
        return "cross", (
            f"cross-attention (query length {query.shape[1]} != key length {key.shape[1]}); "
            "sage3 K smoothing and tiling assume self-attention"
        )
    if query.shape[0] != key.shape[0] or query.shape[3] != key.shape[3] or query.shape[2] % key.shape[2]:
        return "shape", f"unsupported shapes q {tuple(query.shape)}, k {tuple(key.shape)}"
    d = query.shape[3]
    if d not in SUPPORTED_HEAD_DIMS:
        return f"head_dim={d}", f"head dim {d} is not one of {SUPPORTED_HEAD_DIMS}"
    dtypes = {query.dtype, key.dtype, value.dtype}
    if len(dtypes) != 1 or query.dtype not in SUPPORTED_DTYPES:
        names = "/".join(str(t) for t in (query.dtype, key.dtype, value.dtype))
        return f"dtype={names}", f"dtype {names} unsupported (accepted: bf16, fp16, fp32, all alike)"
    if not query.is_cuda and not interpreting():
        return "device", f"tensors on {query.device} (the Triton kernel needs CUDA or TRITON_INTERPRET=1)"
    return None


def sdpa_fallback(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_metadata: AttentionMetadata | None,
    *,
    causal: bool,
    softmax_scale: float | None,
) -> torch.Tensor:
    """PyTorch SDPA on ``[B, S, H, D]`` tensors, masks shaped as vllm-omni's SDPA backend does."""
    mask = getattr(attn_metadata, "attn_mask", None) if attn_metadata is not None else None
    if mask is not None and mask.ndim == 2 and mask.shape[0] == query.shape[0] and mask.shape[1] == key.shape[1]:
        mask = mask.to(torch.bool)[:, None, None, :]
    gqa = query.ndim == 4 and key.ndim == 4 and query.shape[2] != key.shape[2]
    q, k, v = (x.permute(0, 2, 1, 3) for x in (query, key, value))
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=causal, scale=softmax_scale, enable_gqa=gqa
    )
    return out.permute(0, 2, 1, 3)


class Sage3AttentionImpl(AttentionImpl):
    """sage3 attention for one layer: the Triton kernel, or SDPA with a logged reason."""

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        softmax_scale: float,
        causal: bool = False,
        num_kv_heads: int | None = None,
        prefix: str = "",
        qkv_layout: str | None = None,
        backend_kwargs: dict[str, Any] | None = None,
        **extra_impl_args: Any,
    ) -> None:
        cfg = sage3_settings()
        self.num_heads = num_heads
        self.head_size = head_size
        self.softmax_scale = softmax_scale
        self.causal = causal
        self.num_kv_heads = num_kv_heads or num_heads
        self.prefix = prefix
        self.quant_format = cfg.quant_format
        self.acc_dtype = cfg.acc_dtype
        self.scale_rule = cfg.scale_rule
        self.route = cfg.route
        self.trace = cfg.trace
        self._init_args = {
            "num_heads": num_heads, "head_size": head_size, "softmax_scale": softmax_scale, "causal": causal,
            "num_kv_heads": num_kv_heads, "prefix": prefix,
        }
        self._serial = new_layer_serial()
        self._prefix_layer = layer_index_from_prefix(prefix)
        self._in_tree: AttentionImpl | None = None
        if backend_kwargs:
            _log_once("kwargs", "vllm-qdq sage3: ignoring backend_kwargs %s", sorted(backend_kwargs))
        if head_size not in SUPPORTED_HEAD_DIMS:
            _log_once(
                f"head_dim={head_size}",
                "vllm-qdq sage3: layer %r has head dim %d, not one of %s; it will use SDPA",
                prefix, head_size, SUPPORTED_HEAD_DIMS,
            )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_metadata: AttentionMetadata | None = None,
    ) -> torch.Tensor:
        """Run sage3 on any platform the kernel supports (CUDA, or the Triton interpreter)."""
        if self.route is not None or self.trace:
            return self._routed_forward(query, key, value, attn_metadata)
        why = fallback_reason(query, key, value, attn_metadata)
        if why is not None:
            _log_once(why[0], "vllm-qdq sage3: falling back to torch SDPA: %s", why[1])
            return sdpa_fallback(
                query, key, value, attn_metadata, causal=self.causal, softmax_scale=self.softmax_scale
            )
        # one opaque op under torch.compile (vllm_qdq.sage3.ops says why), the same call eagerly
        return sage3_attention_op(
            query, key, value, self.quant_format, self.acc_dtype, self.causal, self.softmax_scale, self.scale_rule,
        )

    def in_tree_impl(self) -> AttentionImpl:
        """vllm-omni's in-tree ``TORCH_SDPA`` implementation with this layer's arguments (built once)."""
        if self._in_tree is None:
            from vllm_omni.diffusion.attention.backends.registry import DiffusionAttentionBackendEnum

            impl_cls = DiffusionAttentionBackendEnum.TORCH_SDPA.get_class().get_impl_cls()
            self._in_tree = impl_cls(**self._init_args)
        return self._in_tree

    @torch.compiler.disable
    def _routed_forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_metadata: AttentionMetadata | None,
    ) -> torch.Tensor:
        """One call with the route's format for its step and layer (and its trace line)."""
        route = self.route
        site = locate(
            self._serial, self._prefix_layer, self.prefix,
            passes_per_step=route.passes_per_step if route is not None else 1,
            total_steps=route.total_steps if route is not None else None,
        )
        if route is not None:
            fmt, rule = route.pick(site.step, site.total, site.layer, self.prefix)
        else:
            fmt, rule = self.quant_format, None
        if fmt == "off":
            ran = "in-tree TORCH_SDPA"
            out = self.in_tree_impl().forward_cuda(query, key, value, attn_metadata)
        else:
            why = fallback_reason(query, key, value, attn_metadata)
            if why is not None:
                ran = f"SDPA fallback ({why[0]})"
                _log_once(why[0], "vllm-qdq sage3: falling back to torch SDPA: %s", why[1])
                out = sdpa_fallback(
                    query, key, value, attn_metadata, causal=self.causal, softmax_scale=self.softmax_scale
                )
            else:
                ran = "sage3"
                out = sage3_attention(
                    query, key, value,
                    quant_format=fmt, acc_dtype=self.acc_dtype, causal=self.causal, sm_scale=self.softmax_scale,
                    scale_rule="floor" if fmt == "nvfp4" else self.scale_rule,
                )
        if self.trace:
            shape = "(" + ", ".join(str(int(d)) for d in query.shape) + ")"
            TRACER.emit(
                f"{site.describe()} q={shape} {str(query.dtype).replace('torch.', '')} format={fmt} "
                f"rule={'default' if rule is None else rule} ran={ran}"
            )
        return out

    forward_cuda = forward
    forward_hip = forward
    forward_xpu = forward
    forward_npu = forward
    forward_musa = forward


class Sage3AttentionBackend(AttentionBackend):
    """Registered over ``SAGE_ATTN``; keeps that name so vllm-omni's per-name logic still applies."""

    accept_output_buffer: bool = True

    @classmethod
    def supports_attention_mask(cls, attention_spec: object | None = None) -> bool:
        """Masked calls are accepted and run on SDPA (logged), so the layer need not refuse them."""
        del attention_spec
        return True

    @staticmethod
    def get_supported_head_sizes() -> list[int]:
        """Every head size is accepted; those outside SUPPORTED_HEAD_DIMS run on SDPA."""
        return list(range(1, 1025))

    @staticmethod
    def get_name() -> str:
        return "SAGE_ATTN"

    @staticmethod
    def get_impl_cls() -> type[Sage3AttentionImpl]:
        return Sage3AttentionImpl

    @staticmethod
    def get_metadata_cls() -> type[AttentionMetadata]:
        return AttentionMetadata

    @staticmethod
    def get_builder_cls() -> None:
        return None
