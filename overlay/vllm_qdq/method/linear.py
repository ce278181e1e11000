"""Linear layers under the ``qdq`` method: vLLM's unquantized linear on QDQ'd weights and inputs.

Numeric contract (see :mod:`vllm_qdq.method.quant_config` for the whole method): the weight
``[out, in]`` is quantize-dequantized once at load along K, separately for each logical shard
of a fused layer (q/k/v, gate/up); the input ``x [tokens, in]`` on every forward along K.
Under tensor parallelism each rank QDQs its own shard (its rows, or its K-slice and the
matching input slice); where that differs from the unsharded layer's QDQ is
:mod:`vllm_qdq.method.tp`'s table, reported at start-up (:meth:`QDQQuantConfig.note_tp`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from vllm.model_executor.layers.linear import UnquantizedLinearMethod

from ..config import QuantSpec
from .policy import LayerPlan
from .qdq_tensors import check_rotation, qdq_act, qdq_weight, shard_amax
from .tp import Style

if TYPE_CHECKING:
    from .quant_config import QDQQuantConfig

__all__ = ["QDQLinearMethod", "SkippedLinearMethod"]


class QDQLinearMethod(UnquantizedLinearMethod):
    """Unquantized linear, with the weight QDQ'd at load and the input QDQ'd per call."""

    def __init__(self, qconfig: QDQQuantConfig, plan: LayerPlan) -> None:
        super().__init__()
        self.qconfig = qconfig
        self.plan = plan
        # Plain attributes, resolved now: the traced forward reads no setting.
        self._act: QuantSpec | None = plan.act if plan.act.enabled and not plan.skipped else None
        self._stats_name: str | None = plan.prefix if qconfig.stats_dir else None

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       *args, **kw):
        if not self.plan.skipped:
            check_rotation(self.plan.weight, input_size_per_partition, f"layer {self.plan.prefix!r} weight")
            check_rotation(self.plan.act, input_size_per_partition, f"layer {self.plan.prefix!r} act")
        super().create_weights(layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                               *args, **kw)
        self._shards = list(output_partition_sizes)
        # vLLM's sharding, read off the sizes it passes (ReplicatedLinear and disable_tp: neither).
        self._tp: tuple[Style, int] | None = None
        if input_size_per_partition != input_size:
            self._tp = (Style.ROW, input_size // input_size_per_partition)
        elif sum(output_partition_sizes) != output_size:
            self._tp = (Style.COLUMN, output_size // sum(output_partition_sizes))
        if self._tp is not None and not self.plan.skipped:
            self.qconfig.note_tp(self.plan, self._tp[0], input_size, self._tp[1])

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        self.qconfig.finalize()
        if self.plan.weight.enabled and not self.plan.skipped:
            w = layer.weight.data
            amax = None
            if self._tp is not None and self.qconfig.tp_amax == "layer":
                amax = self.qconfig.layer_amax(shard_amax(w, self._shards), self.plan.weight)
            w.copy_(qdq_weight(w, self.plan.weight, self._shards, amax))
        super().process_weights_after_loading(layer)

    def apply(self, layer, x, bias=None):
        if self._act is not None:
            x = qdq_act(x, self._act, self._stats_name)
        return super().apply(layer, x, bias)


class SkippedLinearMethod(UnquantizedLinearMethod):
    """vLLM's unquantized linear, for layers a rule keeps in the model dtype."""

    def __init__(self, qconfig: QDQQuantConfig) -> None:
        super().__init__()
        self.qconfig = qconfig

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        self.qconfig.finalize()
        super().process_weights_after_loading(layer)
