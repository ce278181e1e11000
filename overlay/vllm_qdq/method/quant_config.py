"""The ``qdq`` quantization method: simulated W/A quantization of any BF16/FP16/FP32 checkpoint.

Select it with ``LLM(model, quantization="qdq")`` or ``vllm serve MODEL --quantization qdq``.
It is registered with vLLM's ``register_quantization_config("qdq")`` by the general plugin
(:func:`register_qdq_method`, called from :func:`vllm_qdq.plugin.register`) in every process.

What is QDQ'd (numeric contract):

* Linear layers (every ``LinearBase`` vLLM offers the method: fused QKV, O, gate/up, down,
  shared experts ...): the weight ``[out, in]`` is quantize-dequantized ONCE at load
  (``process_weights_after_loading``) along the input dimension K, separately for each
  logical shard of a fused layer (q/k/v, gate/up), so a per-tensor scale (``nvfp4``'s global
  scale, ``fp8_e4m3_per_tensor``) is the one the unfused checkpoint layer would get. The
  layer input ``x [tokens, in]`` is quantize-dequantized along K on EVERY forward, before
  vLLM's own unquantized GEMM (per-tensor / global scales: over the whole batch of tokens).
* MoE experts (``RoutedExperts``): ``w13 [E, 2I, H]`` and ``w2 [E, H, I]`` are QDQ'd at load
  along their last (K) dimension, each expert and each of gate/up/down on its own; the hidden
  states entering the experts (after the router, which sees them unquantized) are QDQ'd on
  every forward. vLLM's unquantized MoE path then runs unchanged. The intermediate
  activation between the expert GEMMs (input of down_proj) is NOT QDQ'd: on the CPU engine
  the two GEMMs and the activation are one fused kernel (``cpu_fused_moe``).
* The KV cache (``kv_cache``, off by default): the keys and values every attention layer
  writes to the paged cache, QDQ'd once as they are written (:mod:`vllm_qdq.activation.kv_cache`,
  numerics in :mod:`vllm_qdq.numerics.kv`); layer rules' ``kv_cache`` / ``skip`` apply. The
  attention query (``attn_q``, off by default), QDQ'd the same way on every attention forward.
* Never QDQ'd: embeddings and ``lm_head`` (vLLM offers them to the method as embedding
  layers; they stay in the model dtype), attention, norms, routers the model builds without
  a quantization config (e.g. Mixtral's ``gate``).

Modules: format policy and settings merge :mod:`~vllm_qdq.method.policy`, tensor QDQ
:mod:`~vllm_qdq.method.qdq_tensors`, layer methods :mod:`~vllm_qdq.method.linear` and
:mod:`~vllm_qdq.method.moe`; this module holds the vLLM config class, the start-up check and log.

Settings, lowest to highest precedence: built-in defaults (MXFP4 weights and activations,
``floor`` scale rule); ``VLLM_QDQ_CONFIG`` ``method`` and ``layers`` (see
:mod:`vllm_qdq.config`); the per-run quantization config (``hf_overrides={"quantization_config":
{"quant_method": "qdq", ...}}`` or the checkpoint's ``config.json``), whose keys ``weight``,
``act``, ``moe_weight``, ``moe_act``, ``kv_cache`` override one by one and whose ``layers`` list
replaces the environment's.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import torch
from vllm.model_executor.layers.attention.attention import Attention
from vllm.model_executor.layers.attention.mla_attention import MLAAttention
from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts
from vllm.model_executor.layers.linear import LinearBase
from vllm.model_executor.layers.quantization import register_quantization_config
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig

from ..activation.kv_cache import KVReport
from ..activation.kv_cache import plan_layer as plan_kv_layer
from ..config import ConfigError, QuantSpec, settings
from ..errors import clear_recorded, reported
from ..log import ensure_log_handler, logger
from ..numerics.formats import FORMATS, Family, Granularity
from .linear import QDQLinearMethod, SkippedLinearMethod
from .moe import QDQFusedMoEMethod
from .policy import (
    QDQ_METHOD_NAME,
    LayerPlan,
    compact_names,
    generalize,
    moe_weight_format_problem,
    settings_from_run,
)
from .tp import Style, shard_effect

if TYPE_CHECKING:
    from vllm.model_executor.models.utils import WeightsMapper

__all__ = ["QDQ_METHOD_NAME", "QDQQuantConfig", "register_qdq_method"]

#: Lines of the start-up summary at most.
SUMMARY_LIMIT = 40

_registered = False


@register_quantization_config(QDQ_METHOD_NAME)
class QDQQuantConfig(QuantizationConfig):
    """Config of the ``qdq`` method: settings, per-layer plan, start-up checks and log."""

    def __init__(self, run: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.run = dict(run) if run else {}
        # vLLM builds this config in the front process (VllmConfig), before any engine starts:
        # a bad run config stops start-up here, as a ConfigError (see vllm_qdq.errors).
        clear_recorded()  # an engine error recorded for an earlier engine of this process
        base = settings()  # the process's settings, validated once
        self.settings = settings_from_run(self.run, base)
        #: ``VLLM_QDQ_STATS`` (validated with the settings), resolved here once: never in a forward.
        self.stats_dir: str | None = base.stats_dir
        self._setup_pid: int | None = None
        self.plans: dict[str, LayerPlan] = {}
        self.rule_hits: dict[str, int] = defaultdict(int)
        #: KV-cache QDQ decisions per attention layer (:func:`vllm_qdq.activation.kv_cache.plan_layer`).
        self.kv = KVReport()
        #: ``VLLM_QDQ_TP_AMAX`` (tensor parallelism: :mod:`vllm_qdq.method.tp`).
        self.tp_amax: str = base.tp_amax
        #: Tensor-parallel shards whose QDQ differs from the unsharded layer's: reason -> prefixes.
        self.tp_notes: dict[str, list[str]] = defaultdict(list)
        self.tp_size = 1
        self._finalized = False

    def __repr__(self) -> str:
        return f"QDQQuantConfig({self.settings.summary()})"

    def get_name(self) -> str:
        return QDQ_METHOD_NAME

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> QDQQuantConfig:
        return cls(config)

    # -- routing

    def _plan(self, prefix: str, kind: str) -> LayerPlan:
        s = self.settings
        rule = None
        for r in s.layers:
            if r.matches(prefix):
                rule = r
                break
        if rule is not None:
            self.rule_hits[rule.pattern] += 1
        weight = (s.moe_weight or s.weight) if kind == "moe" else s.weight
        act = (s.moe_act or s.act) if kind == "moe" else s.act
        if rule is not None and rule.skip:
            return LayerPlan(prefix, kind, QuantSpec("off"), QuantSpec("off"), rule.pattern, True)
        if rule is not None:
            weight = rule.weight or weight
            if rule.act is not None and rule.act.format != "auto":
                act = rule.act
        if kind == "moe":
            p = moe_weight_format_problem(weight.format)
            if p is not None:
                raise reported(ConfigError(f"qdq method: MoE layer {prefix}: weight format {p}"))
        return LayerPlan(prefix, kind, weight, act, rule.pattern if rule else None)

    def _worker_setup(self) -> None:
        """Once per process that builds the model (a vLLM worker), before it is compiled: fold
        the settings into vLLM's compile-cache key (:mod:`vllm_qdq.activation.compile_cache`) and, with
        statistics on, hook them into the worker's engine steps (:func:`vllm_qdq.stats.enable`)."""
        if self._setup_pid == os.getpid():
            return
        self._setup_pid = os.getpid()
        from ..activation.compile_cache import register_method_factors

        register_method_factors(self.settings, self.stats_dir)
        if self.stats_dir:
            from ..stats import enable

            enable(in_worker=True)

    def get_quant_method(self, layer: torch.nn.Module, prefix: str):
        self._worker_setup()
        if isinstance(layer, LinearBase):
            plan = self._plan(prefix, "linear")
            self.plans[prefix] = plan
            if plan.skipped or (not plan.weight.enabled and not plan.act.enabled):
                return SkippedLinearMethod(self)
            return QDQLinearMethod(self, plan)
        if isinstance(layer, RoutedExperts):
            plan = self._plan(prefix, "moe")
            self.plans[prefix] = plan
            return QDQFusedMoEMethod(layer.moe_config, self, plan)
        # Embeddings, lm_head, attention: vLLM's own methods, never QDQ'd. Only skip rules
        # count as matching them (a format rule on them would be silently unused), and
        # kv_cache rules matching attention layers, whose cache writes get KV QDQ here.
        rule = next((r for r in self.settings.layers if r.matches(prefix)), None)
        if rule is not None and rule.skip:
            self.rule_hits[rule.pattern] += 1
        if isinstance(layer, Attention | MLAAttention):
            try:
                plan_kv_layer(layer, prefix, self.settings.kv_cache, self.settings.attn_q, self.settings.layers,
                              self.kv, stats=bool(self.stats_dir))
            except ConfigError as e:
                raise reported(ConfigError(f"qdq method: {e}")) from None
            if rule is not None and not rule.skip and (rule.kv_cache is not None or rule.attn_q is not None):
                self.rule_hits[rule.pattern] += 1
        self.plans[prefix] = LayerPlan(
            prefix,
            "other",
            QuantSpec("off"),
            QuantSpec("off"),
            rule.pattern if rule is not None and rule.skip else None,
            False,
        )
        return None

    def note_tp(self, plan: LayerPlan, style: Style, k: int, tp: int) -> None:
        """Record what QDQ of this rank's shard of layer ``plan`` means (:func:`shard_effect` for
        the weight and the activation); :meth:`finalize` logs one line per distinct reason."""
        self.tp_size = max(self.tp_size, tp)
        for role, spec in (("weight", plan.weight), ("act", plan.act)):
            if not spec.enabled:
                continue
            fx = shard_effect(spec.format, style, k, tp, role)
            if spec.rotate is not None and spec.rotate.seed is not None and style is Style.ROW:
                self.tp_notes[f"row-parallel {role}: a random-sign rotation takes the first K/tp signs on "
                              "every rank, not the rank's slice of the layer's: a consistent rotated "
                              "system, not the TP=1 one"].append(plan.prefix)
            if role == "weight" and spec.rotate is not None and fx.layer_amax_fixes and self.tp_amax == "layer":
                raise ConfigError(
                    f"layer {plan.prefix!r}: VLLM_QDQ_TP_AMAX=layer with a rotated weight spec ({spec}) is not "
                    "supported (the layer's amax would be taken before the rotation); accepted: "
                    "VLLM_QDQ_TP_AMAX=shard, or a weight spec without rotate")
            if fx.exact or (fx.layer_amax_fixes and self.tp_amax == "layer"):
                continue
            hint = " (VLLM_QDQ_TP_AMAX=layer makes it the unsharded layer's)" if fx.layer_amax_fixes else ""
            self.tp_notes[f"{style.value}-parallel {role}: {fx.reason}{hint}"].append(plan.prefix)

    def layer_amax(self, amax: torch.Tensor, spec: QuantSpec) -> torch.Tensor | None:
        """``VLLM_QDQ_TP_AMAX=layer``: ``amax`` (per logical shard, :func:`shard_amax`) all-reduced
        with MAX over the tensor-parallel group, i.e. the unsharded layer's; ``None`` for formats
        without a per-tensor scale."""
        fmt = FORMATS[spec.format]
        if not (fmt.family is Family.NVFP4 or fmt.granularity is Granularity.TENSOR):
            return None
        import torch.distributed as dist
        from vllm.distributed import get_tp_group

        group = get_tp_group()
        out = amax.to(group.device).contiguous()
        dist.all_reduce(out, op=dist.ReduceOp.MAX, group=group.device_group)
        return out.to(amax.device)

    # -- start-up check and log, once the model is built. The earliest call vLLM makes into
    #    this config after model construction is the weight loader's mapper query (vLLM's
    #    AutoWeightsLoader, which nearly every model's load_weights uses, asks the model's quant
    #    config for its weight-name mappers before it reads the first tensor); the fallback is
    #    the first process_weights_after_loading, after every weight is read.

    def get_cache_scale_mapper(self) -> WeightsMapper:
        """vLLM's mapper, unchanged; being asked means the model is built: :meth:`finalize`."""
        self.finalize()
        return QuantizationConfig.get_cache_scale_mapper()

    def get_checkpoint_weight_mapper(self) -> WeightsMapper:
        """vLLM's mapper, unchanged; being asked means the model is built: :meth:`finalize`."""
        self.finalize()
        return QuantizationConfig.get_checkpoint_weight_mapper()

    def finalize(self) -> None:
        """Check every layer pattern against the built model and log the plan (once).

        Raises:
            ConfigError: a pattern that matched no layer, naming the layers there are; recorded
                for the front process (:func:`vllm_qdq.errors.reported`), which prints it last.
        """
        if self._finalized:
            return
        self._finalized = True
        unmatched = [r.pattern for r in self.settings.layers if self.rule_hits.get(r.pattern, 0) == 0]
        if unmatched:
            seen = sorted({generalize(p) or "<unnamed>" for p in self.plans})
            raise reported(ConfigError(
                f"qdq method: layer pattern(s) {unmatched} matched no layer of this model; "
                f"layers offered to the method: {', '.join(seen)} (embeddings, lm_head and "
                "attention are never quantized: only skip rules match them, and kv_cache rules "
                "match attention layers)"
            ))
        ensure_log_handler()
        logger.info("vllm-qdq: qdq method %s", self.settings.summary())
        if self.kv.hooked():
            logger.info("vllm-qdq: qdq KV-cache / attention-query QDQ: %s", self.kv.summary())
        if self.tp_size > 1:
            logger.info("vllm-qdq: qdq method in pid %d, tensor-parallel rank %s of %d (TP amax: %s)",
                        os.getpid(), _tp_rank(), self.tp_size, self.tp_amax)
        for reason, prefixes in self.tp_notes.items():
            names = compact_names(prefixes)
            logger.warning("vllm-qdq: qdq TP: %s -> %d layer(s): %s: the simulation is of a TP deployment "
                           "quantizing each rank's shard on its own, not of the unsharded model",
                           reason, len(prefixes), ", ".join(names[:8]) + (" ..." if len(names) > 8 else ""))
        if self.stats_dir:
            from ..stats import warn_if_cuda_graphs

            warn_if_cuda_graphs("qdq method")
        groups: dict[str, list[str]] = defaultdict(list)
        for p, plan in self.plans.items():
            groups[plan.label()].append(p)
        lines = 0
        for label, prefixes in groups.items():
            names = compact_names(prefixes)
            shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
            logger.info("vllm-qdq: qdq %s -> %d layer(s): %s", label, len(prefixes), shown)
            lines += 1
            if lines >= SUMMARY_LIMIT and len(groups) > lines:
                logger.info("vllm-qdq: qdq ... %d more group(s)", len(groups) - lines)
                break


def _tp_rank() -> str:
    """This worker's tensor-parallel rank (``?`` before vLLM's groups exist)."""
    try:
        from vllm.distributed import get_tensor_model_parallel_rank

        return str(get_tensor_model_parallel_rank())
    except (AssertionError, RuntimeError):
        return "?"


def register_qdq_method() -> None:
    """Register ``quantization="qdq"`` with vLLM (idempotent: importing this module did it)."""
    global _registered
    if _registered:
        return
    from vllm.model_executor.layers.quantization import get_quantization_config

    assert get_quantization_config(QDQ_METHOD_NAME) is QDQQuantConfig
    _registered = True
    logger.debug("vllm-qdq: quantization method %r registered", QDQ_METHOD_NAME)
