"""MoE experts under the ``qdq`` method: vLLM's unquantized MoE path on QDQ'd weights and inputs.

Numeric contract (see :mod:`vllm_qdq.method.quant_config` for the whole method):

* At load, before vLLM's own post-processing (CPU: padding and prepacking), ``w13 [E, 2I, H]``
  and ``w2 [E, H, I]`` are quantize-dequantized along their last dimension (K): each expert,
  and each of gate / up / down, is a tensor of its own (NVFP4's global scale is per expert and
  projection).
* Every forward, the hidden states handed to the experts (after routing: the router sees
  them unquantized) are quantize-dequantized along H. With a monolithic kernel (routing
  inside the kernel) the router sees the QDQ'd states too.
* Not QDQ'd: the intermediate activation between the expert GEMMs (input of down_proj); on
  the CPU engine both GEMMs and the activation run inside one fused kernel. So with a
  ``rotate`` spec, w2 is QDQ'd in its rotated basis (``QDQ(W R^T) R``) while its input is not
  rotated: the product equals a rotated system's for w13 only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from vllm.model_executor.layers.fused_moe.config import FusedMoEConfig
from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import (
    UnquantizedFusedMoEMethod,
)

from .policy import LayerPlan
from .qdq_tensors import check_rotation, qdq_act, qdq_weight

if TYPE_CHECKING:
    from .quant_config import QDQQuantConfig

__all__ = ["QDQFusedMoEMethod"]


class QDQFusedMoEMethod(UnquantizedFusedMoEMethod):
    """vLLM's unquantized fused MoE with QDQ'd expert weights and expert inputs."""

    def __init__(self, moe: FusedMoEConfig, qconfig: QDQQuantConfig, plan: LayerPlan) -> None:
        super().__init__(moe)
        self.qconfig = qconfig
        self.plan = plan
        # Plain attributes, resolved now: the traced forward reads no setting.
        self._act = plan.act if plan.act.enabled and not plan.skipped else None
        self._stats_name: str | None = plan.prefix if qconfig.stats_dir else None

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        self.qconfig.finalize()
        spec = self.plan.weight
        if not self.plan.skipped:
            hidden, inter = layer.w13_weight.shape[-1], layer.w2_weight.shape[-1]
            check_rotation(spec, hidden, f"layer {self.plan.prefix!r} weight (w13, K=hidden)")
            check_rotation(spec, inter, f"layer {self.plan.prefix!r} weight (w2, K=intermediate)")
            check_rotation(self.plan.act, hidden, f"layer {self.plan.prefix!r} act")
        if spec.enabled and not self.plan.skipped:
            w13 = layer.w13_weight.data
            n = w13.shape[-2]
            shards = [n // 2, n // 2] if self.moe.is_act_and_mul else [n]
            w13.copy_(qdq_weight(w13, spec, shards))
            w2 = layer.w2_weight.data
            w2.copy_(qdq_weight(w2, spec))
        super().process_weights_after_loading(layer)

    def _qdq_input(self, x: torch.Tensor) -> torch.Tensor:
        if self._act is not None:
            return qdq_act(x, self._act, self._stats_name)
        return x

    def apply(self, layer, x, topk_weights, topk_ids, shared_experts, shared_experts_input):
        return super().apply(
            layer, self._qdq_input(x), topk_weights, topk_ids, shared_experts, shared_experts_input
        )

    def apply_monolithic(self, layer, x, router_logits, input_ids=None):
        return super().apply_monolithic(layer, self._qdq_input(x), router_logits, input_ids)
