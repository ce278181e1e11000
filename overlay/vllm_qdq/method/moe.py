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

from dataclasses import replace
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
        self._note_tp(moe)

    def _note_tp(self, moe: FusedMoEConfig) -> None:
        """Under tensor parallelism (not expert parallelism) each rank holds every expert's slice:
        ``w13`` column-parallel (K = hidden, whole), ``w2`` row-parallel (K = intermediate split);
        the activation QDQ'd is ``w13``'s input (whole on every rank). Recorded for the start-up
        note like linear layers'; ``VLLM_QDQ_TP_AMAX=layer`` is not applied to experts (their
        per-tensor scales stay the rank's slice's), which the note says."""
        par = moe.moe_parallel_config
        tp = par.tp_size
        if tp <= 1 or par.use_ep or self.plan.skipped:
            return
        from ..config import QuantSpec
        from .tp import Style

        self.qconfig.note_tp(self.plan, Style.COLUMN, moe.hidden_dim, tp)
        self.qconfig.note_tp(replace(self.plan, act=QuantSpec("off")), Style.ROW, moe.intermediate_size, tp)
        if self.qconfig.tp_amax == "layer" and self.plan.weight.enabled:
            self.qconfig.tp_notes["MoE experts: VLLM_QDQ_TP_AMAX=layer is not applied to expert weights "
                                  "(per-tensor / NVFP4 global scales from the rank's slice)"].append(self.plan.prefix)

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
