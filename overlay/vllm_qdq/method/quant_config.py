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
* Never QDQ'd: embeddings and ``lm_head`` (vLLM offers them to the method as embedding
  layers; they stay in the model dtype), attention, norms, routers the model builds without
  a quantization config (e.g. Mixtral's ``gate``).

Settings, lowest to highest precedence: built-in defaults (MXFP4 weights and activations,
``floor`` scale rule); ``VLLM_QDQ_CONFIG`` ``method`` and ``layers`` (see
:mod:`vllm_qdq.config`); the per-run quantization config (``hf_overrides={"quantization_config":
{"quant_method": "qdq", ...}}`` or the checkpoint's ``config.json``), whose keys ``weight``,
``act``, ``moe_weight``, ``moe_act`` override one by one and whose ``layers`` list replaces
the environment's.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts
from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from vllm.model_executor.layers.quantization import register_quantization_config
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig

from .config import ConfigError, LayerRule, QuantSpec, config_from_dict, load_config
from .errors import clear_recorded, reported
from .formats import FORMATS, Family, Granularity
from .qdq_moe import QDQFusedMoEMethod

if TYPE_CHECKING:
    from vllm.model_executor.models.utils import WeightsMapper

__all__ = [
    "QDQ_METHOD_NAME",
    "LayerPlan",
    "QDQSettings",
    "act_format_problem",
    "moe_weight_format_problem",
    "qdq_act",
    "qdq_weight",
    "register_qdq_method",
    "settings_from_run",
    "weight_format_problem",
]

from .log import ensure_log_handler, logger

QDQ_METHOD_NAME = "qdq"
#: Keys the per-run quantization config (hf_overrides / config.json) accepts.
RUN_KEYS: tuple[str, ...] = ("quant_method", "weight", "act", "moe_weight", "moe_act", "layers")
#: Lines of the start-up summary at most.
SUMMARY_LIMIT = 40

_registered = False


# ----------------------------------------------------------------------------- settings


def weight_format_problem(fmt: str) -> str | None:
    """Why ``fmt`` cannot be a weight format (``None``: it can).

    Per-token recipes are dynamic activation recipes (vLLM's scale floor and fp32 order for
    tokens); the weight counterparts are the ``*_per_channel`` recipes.
    """
    if fmt == "off":
        return None
    if fmt.endswith("_per_token"):
        return f"{fmt!r} is a per-token activation recipe; for weights use {fmt[: -len('_per_token')]}_per_channel"
    return None


def act_format_problem(fmt: str) -> str | None:
    """Why ``fmt`` cannot be an activation format (``None``: it can)."""
    if fmt == "off":
        return None
    if fmt.endswith("_per_channel"):
        return f"{fmt!r} is a per-output-channel weight recipe; for activations use {fmt[: -len('_per_channel')]}_per_token"
    return None


def moe_weight_format_problem(fmt: str) -> str | None:
    """Why MoE expert weights cannot take ``fmt`` (``None``: they can).

    Expert weights are one stacked tensor ``[E, N, K]``: a block or per-output-channel
    recipe is local to one expert's row, and NVFP4's global scale is taken per expert and
    projection; a single per-tensor scale over all experts has no counterpart in any MoE
    checkpoint format, so per-tensor recipes are refused (use ``*_per_channel``).
    """
    p = weight_format_problem(fmt)
    if p is not None:
        return p
    if fmt != "off" and FORMATS[fmt].granularity is Granularity.TENSOR:
        return (
            f"{fmt!r} has one scale per tensor, which stacked MoE expert weights do not have; "
            "MoE weights accept block formats (mx*, nvfp4, *_per_group128*) and *_per_channel"
        )
    return None


@dataclass(frozen=True)
class QDQSettings:
    """The method's merged settings."""

    weight: QuantSpec
    act: QuantSpec
    moe_weight: QuantSpec | None
    moe_act: QuantSpec | None
    layers: tuple[LayerRule, ...]
    source: str = "defaults"

    def summary(self) -> str:
        moe = ""
        if self.moe_weight is not None or self.moe_act is not None:
            moe = f" moe_weight={self.moe_weight or self.weight} moe_act={self.moe_act or self.act}"
        return f"w={self.weight} a={self.act}{moe} layers={len(self.layers)} ({self.source})"


def _check_specs(s: QDQSettings) -> None:
    def chk(where: str, spec: QuantSpec | None, fn) -> None:
        if spec is None or spec.format in ("off", "auto"):
            return
        p = fn(spec.format)
        if p is not None:
            raise ConfigError(f"qdq method: {where}: {p}")

    chk("weight", s.weight, weight_format_problem)
    chk("act", s.act, act_format_problem)
    chk("moe_weight", s.moe_weight, moe_weight_format_problem)
    chk("moe_act", s.moe_act, act_format_problem)
    for i, r in enumerate(s.layers):
        chk(f"layers[{i}] ({r.pattern!r}).weight", r.weight, weight_format_problem)
        chk(f"layers[{i}] ({r.pattern!r}).act", r.act, act_format_problem)


def settings_from_run(run: dict[str, Any] | None, env: dict[str, str] | None = None) -> QDQSettings:
    """Merge defaults, ``VLLM_QDQ_CONFIG`` and the per-run config ``run`` (highest precedence).

    Raises:
        ConfigError: an unknown key, format or scale rule, naming it and the accepted ones.
    """
    base = load_config(env)
    m = base.method
    weight, act, moe_weight, moe_act = m.weight, m.act, m.moe_weight, m.moe_act
    layers = base.layers
    raw = (os.environ if env is None else env).get("VLLM_QDQ_CONFIG", "")
    source = "VLLM_QDQ_CONFIG" if raw.strip() else "defaults"
    if run:
        if not isinstance(run, dict):
            raise ConfigError(f"qdq quantization_config must be a JSON object, got {run!r}")
        unknown = [k for k in run if k not in RUN_KEYS]
        if unknown:
            raise ConfigError(
                f"qdq quantization_config: unknown key(s) {unknown}; accepted: {', '.join(RUN_KEYS)}"
            )
        qm = run.get("quant_method", QDQ_METHOD_NAME)
        if qm != QDQ_METHOD_NAME:
            raise ConfigError(f"qdq quantization_config: quant_method={qm!r}; accepted: {QDQ_METHOD_NAME}")
        method = {k: run[k] for k in ("weight", "act", "moe_weight", "moe_act") if k in run}
        try:
            parsed = config_from_dict({"method": method, "layers": run.get("layers", [])})
        except ConfigError as e:  # name the run config's own keys (act.format, not method.act.format)
            msg = str(e)
            raise ConfigError(f"qdq quantization_config: {msg.removeprefix('method.')}") from None
        pm = parsed.method
        weight = pm.weight if "weight" in run else weight
        act = pm.act if "act" in run else act
        moe_weight = pm.moe_weight if "moe_weight" in run else moe_weight
        moe_act = pm.moe_act if "moe_act" in run else moe_act
        if "layers" in run:
            layers = parsed.layers
        keys = [k for k in run if k != "quant_method"]
        source = f"{source} + quantization_config {keys}" if keys else source
    s = QDQSettings(weight, act, moe_weight, moe_act, tuple(layers), source)
    _check_specs(s)
    return s


@dataclass(frozen=True)
class LayerPlan:
    """What the method does to one layer."""

    prefix: str
    kind: str  # "linear" | "moe" | "other"
    weight: QuantSpec
    act: QuantSpec
    rule: str | None = None  # pattern of the layer rule that decided, if any
    skipped: bool = False

    def label(self) -> str:
        if self.skipped:
            return f"{self.kind}: unquantized (rule {self.rule!r})"
        if self.kind == "other":
            return "not quantized (embedding / lm_head / attention: not a linear or MoE layer)"
        how = f"w={self.weight} a={self.act}"
        return f"{self.kind}: {how}" + (f" (rule {self.rule!r})" if self.rule else "")


# ----------------------------------------------------------------------------- numerics


def _spec_args(spec: QuantSpec) -> dict[str, str]:
    return {"scale_rule": spec.scale_rule} if FORMATS[spec.format].takes_scale_rule else {}


def _has_global_scale(fmt: str) -> bool:
    f = FORMATS[fmt]
    return f.family is Family.NVFP4 or f.granularity is Granularity.TENSOR


@torch.no_grad()
def qdq_weight(w: torch.Tensor, spec: QuantSpec, shards: list[int] | None = None) -> torch.Tensor:
    """QDQ a weight ``[..., N, K]`` along K; tensors with a global scale per shard of N.

    ``shards`` splits the N dimension into the logical layers of a fused layer (q/k/v,
    gate/up); leading dimensions (MoE experts) are separate tensors too.
    """
    from .qdq import quantize_dequantize

    if not spec.enabled:
        return w
    if not _has_global_scale(spec.format):
        return quantize_dequantize(w, spec.format, axis=-1, **_spec_args(spec))
    out = torch.empty_like(w)
    lead = w.reshape(-1, w.shape[-2], w.shape[-1])
    dst = out.view(-1, w.shape[-2], w.shape[-1])
    sizes = shards if shards and sum(shards) == w.shape[-2] else [w.shape[-2]]
    for e in range(lead.shape[0]):
        start = 0
        for n in sizes:
            dst[e, start : start + n] = quantize_dequantize(
                lead[e, start : start + n], spec.format, axis=-1, **_spec_args(spec)
            )
            start += n
    return out


def qdq_act(x: torch.Tensor, spec: QuantSpec, name: str | None = None) -> torch.Tensor:
    """QDQ an activation ``[..., K]`` along K (a new tensor; ``x`` is left as it is).

    ``name`` (the layer prefix): record this call in the per-layer statistics under that name
    (through the ``vllm_qdq::qdq_stats`` op, which records at run time, eagerly and in compiled
    graphs). Callers pass it only while ``VLLM_QDQ_STATS`` is set, a setting they resolved when
    the layer's method was built: this function reads no setting, so it traces under
    ``torch.compile`` (vLLM's default mode) as one op node with constant arguments.
    """
    if not spec.enabled or x.numel() == 0:
        return x
    from . import ops  # noqa: F401  (registers torch.ops.vllm_qdq.qdq / qdq_stats)

    if name is not None:
        return torch.ops.vllm_qdq.qdq_stats(x, spec.format, spec.scale_rule, -1, name)
    return torch.ops.vllm_qdq.qdq(x, spec.format, spec.scale_rule, -1, None, None)


# ----------------------------------------------------------------------------- vLLM glue


def _generalize(prefix: str) -> str:
    return re.sub(r"\.\d+(?=\.|$)", ".*", prefix)


def _compact(prefixes: list[str]) -> list[str]:
    """Layer names for the log: ``model.layers.*.x (N)`` where several indices share a name."""
    by: dict[str, list[str]] = defaultdict(list)
    for p in prefixes:
        by[_generalize(p) or "<unnamed>"].append(p)
    return sorted((v[0] or "<unnamed>") if len(v) == 1 else f"{g} ({len(v)})" for g, v in by.items())


class QDQLinearMethod(UnquantizedLinearMethod):
    """Unquantized linear, with the weight QDQ'd at load and the input QDQ'd per call."""

    def __init__(self, qconfig: QDQQuantConfig, plan: LayerPlan) -> None:
        super().__init__()
        self.qconfig = qconfig
        self.plan = plan
        # Plain attributes, resolved now: the traced forward reads no setting.
        self._act: QuantSpec | None = plan.act if plan.act.enabled and not plan.skipped else None
        self._stats_name: str | None = plan.prefix if qconfig.stats_dir else None

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, *args, **kw):
        super().create_weights(layer, input_size_per_partition, output_partition_sizes, *args, **kw)
        self._shards = list(output_partition_sizes)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        self.qconfig.finalize()
        if self.plan.weight.enabled and not self.plan.skipped:
            w = layer.weight.data
            w.copy_(qdq_weight(w, self.plan.weight, self._shards))
        super().process_weights_after_loading(layer)

    def apply(self, layer, x, bias=None):
        if self._act is not None:
            x = qdq_act(x, self._act, self._stats_name)
        return super().apply(layer, x, bias)


@register_quantization_config(QDQ_METHOD_NAME)
class QDQQuantConfig(QuantizationConfig):
    """Config of the ``qdq`` method: settings, per-layer plan, start-up checks and log."""

    def __init__(self, run: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.run = dict(run) if run else {}
        # vLLM builds this config in the front process (VllmConfig), before any engine starts:
        # a bad run config stops start-up here, as a ConfigError (see vllm_qdq.errors).
        clear_recorded()  # an engine error recorded for an earlier engine of this process
        self.settings = settings_from_run(self.run)
        #: ``VLLM_QDQ_STATS`` (validated by load_config), read here once: never in a forward.
        self.stats_dir: str | None = load_config().stats_dir
        self._setup_pid: int | None = None
        self.plans: dict[str, LayerPlan] = {}
        self.rule_hits: dict[str, int] = defaultdict(int)
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
        the settings into vLLM's compile-cache key (:mod:`vllm_qdq.compile_cache`) and, with
        statistics on, hook them into the worker's engine steps (:func:`vllm_qdq.stats.enable`)."""
        if self._setup_pid == os.getpid():
            return
        self._setup_pid = os.getpid()
        from .compile_cache import register_method_factors

        register_method_factors(self.settings, self.stats_dir)
        if self.stats_dir:
            from .stats import enable

            enable(in_worker=True)

    def get_quant_method(self, layer: torch.nn.Module, prefix: str):
        self._worker_setup()
        if isinstance(layer, LinearBase):
            plan = self._plan(prefix, "linear")
            self.plans[prefix] = plan
            if plan.skipped or (not plan.weight.enabled and not plan.act.enabled):
                return _SkippedLinearMethod(self)
            return QDQLinearMethod(self, plan)
        if isinstance(layer, RoutedExperts):
            plan = self._plan(prefix, "moe")
            self.plans[prefix] = plan
            return QDQFusedMoEMethod(layer.moe_config, self, plan)
        # Embeddings, lm_head, attention: vLLM's own methods, never QDQ'd. Only skip rules
        # count as matching them (a format rule on them would be silently unused).
        rule = next((r for r in self.settings.layers if r.matches(prefix)), None)
        if rule is not None and rule.skip:
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
            seen = sorted({_generalize(p) or "<unnamed>" for p in self.plans})
            raise reported(ConfigError(
                f"qdq method: layer pattern(s) {unmatched} matched no layer of this model; "
                f"layers offered to the method: {', '.join(seen)} (embeddings, lm_head and "
                "attention are never quantized: only skip rules match them)"
            ))
        ensure_log_handler()
        logger.info("vllm-qdq: qdq method %s", self.settings.summary())
        if self.stats_dir:
            from .stats import warn_if_cuda_graphs

            warn_if_cuda_graphs("qdq method")
        groups: dict[str, list[str]] = defaultdict(list)
        for p, plan in self.plans.items():
            groups[plan.label()].append(p)
        lines = 0
        for label, prefixes in groups.items():
            names = _compact(prefixes)
            shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
            logger.info("vllm-qdq: qdq %s -> %d layer(s): %s", label, len(prefixes), shown)
            lines += 1
            if lines >= SUMMARY_LIMIT and len(groups) > lines:
                logger.info("vllm-qdq: qdq ... %d more group(s)", len(groups) - lines)
                break


class _SkippedLinearMethod(UnquantizedLinearMethod):
    """vLLM's unquantized linear, for layers a rule keeps in the model dtype."""

    def __init__(self, qconfig: QDQQuantConfig) -> None:
        super().__init__()
        self.qconfig = qconfig

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        self.qconfig.finalize()
        super().process_weights_after_loading(layer)


def register_qdq_method() -> None:
    """Register ``quantization="qdq"`` with vLLM (idempotent: importing this module did it)."""
    global _registered
    if _registered:
        return
    from vllm.model_executor.layers.quantization import get_quantization_config

    assert get_quantization_config(QDQ_METHOD_NAME) is QDQQuantConfig
    _registered = True
    logger.debug("vllm-qdq: quantization method %r registered", QDQ_METHOD_NAME)
