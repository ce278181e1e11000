"""Format policy and settings of the ``qdq`` method (no vLLM import).

* Which formats each role accepts: per-token recipes are dynamic activation recipes, their
  weight counterparts the ``*_per_channel`` recipes; stacked MoE expert weights take no
  per-tensor recipe (:func:`weight_format_problem`, :func:`act_format_problem`,
  :func:`moe_weight_format_problem`).
* :func:`settings_from_run`: the process settings (:func:`vllm_qdq.config.settings`, passed in)
  merged with one model's ``quantization_config``; lowest to highest precedence: built-in
  defaults (MXFP4 weights and activations, ``floor``, KV cache off), ``VLLM_QDQ_CONFIG``
  ``method`` / ``layers`` / ``kv_cache``, the run config's ``weight``, ``act``, ``moe_weight``,
  ``moe_act``, ``kv_cache``, ``attn_q`` (one by one) and ``layers`` (replaces the list).
* :class:`LayerPlan`: what the method does to one layer, and the log's grouping of layer names.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError, LayerRule, QDQConfig, QuantSpec, config_from_dict
from ..numerics.formats import FORMATS, Granularity

__all__ = [
    "QDQ_METHOD_NAME",
    "RUN_KEYS",
    "LayerPlan",
    "QDQSettings",
    "act_format_problem",
    "compact_names",
    "generalize",
    "moe_weight_format_problem",
    "settings_from_run",
    "weight_format_problem",
]

QDQ_METHOD_NAME = "qdq"
#: Keys the per-run quantization config (hf_overrides / config.json) accepts.
RUN_KEYS: tuple[str, ...] = ("quant_method", "weight", "act", "moe_weight", "moe_act", "layers", "kv_cache", "attn_q")


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
    #: KV-cache QDQ of every attention layer (layer rules' ``kv_cache`` / ``skip`` override it).
    kv_cache: QuantSpec = field(default_factory=QuantSpec)  # QuantSpec() is "off"
    #: attention-query QDQ of every attention layer (layer rules' ``attn_q`` / ``skip`` override it).
    attn_q: QuantSpec = field(default_factory=QuantSpec)

    def summary(self) -> str:
        moe = ""
        if self.moe_weight is not None or self.moe_act is not None:
            moe = f" moe_weight={self.moe_weight or self.weight} moe_act={self.moe_act or self.act}"
        kv = f" kv_cache={self.kv_cache}" if self.kv_cache.enabled else ""
        kv += f" attn_q={self.attn_q}" if self.attn_q.enabled else ""
        return f"w={self.weight} a={self.act}{moe}{kv} layers={len(self.layers)} ({self.source})"


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


def settings_from_run(run: dict[str, Any] | None, base: QDQConfig) -> QDQSettings:
    """Merge the process settings ``base`` (defaults and ``VLLM_QDQ_CONFIG``, validated once by
    :func:`vllm_qdq.config.settings`) with the per-run config ``run`` (highest precedence).

    ``run`` is parsed with the same parser as ``VLLM_QDQ_CONFIG``'s ``method`` / ``layers``
    (:func:`vllm_qdq.config.config_from_dict`); the merged specs are then checked against the
    format roles above (per-token recipes only for activations, per-channel only for weights).

    Raises:
        ConfigError: an unknown key, format or scale rule, naming it and the accepted ones.
    """
    m = base.method
    weight, act, moe_weight, moe_act = m.weight, m.act, m.moe_weight, m.moe_act
    layers = base.layers
    source = base.source
    kv_cache, attn_q = base.kv_cache, base.attn_q
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
            parsed = config_from_dict({"method": method, "layers": run.get("layers", []),
                                       "kv_cache": run.get("kv_cache"), "attn_q": run.get("attn_q")})
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
        if "kv_cache" in run:
            kv_cache = parsed.kv_cache
        if "attn_q" in run:
            attn_q = parsed.attn_q
        keys = [k for k in run if k != "quant_method"]
        source = f"{source} + quantization_config {keys}" if keys else source
    s = QDQSettings(weight, act, moe_weight, moe_act, tuple(layers), source, kv_cache, attn_q)
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


def generalize(prefix: str) -> str:
    """``model.layers.3.mlp`` -> ``model.layers.*.mlp`` (layer indices replaced by ``*``)."""
    return re.sub(r"\.\d+(?=\.|$)", ".*", prefix)


def compact_names(prefixes: list[str]) -> list[str]:
    """Layer names for the log: ``model.layers.*.x (N)`` where several indices share a name."""
    by: dict[str, list[str]] = defaultdict(list)
    for p in prefixes:
        by[generalize(p) or "<unnamed>"].append(p)
    return sorted((v[0] or "<unnamed>") if len(v) == 1 else f"{g} ({len(v)})" for g, v in by.items())
