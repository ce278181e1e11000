"""Every setting of vllm-qdq, in one frozen object built once from the environment.

Environment variables (booleans accept 1/0, true/false, yes/no, on/off, any case):

============================  ===========================================================
``VLLM_QDQ``                  enable activation QDQ in vLLM's quantized GEMM ops (plugin)
``VLLM_QDQ_CONFIG``           JSON settings, inline (starts with ``{``) or a file path
``VLLM_QDQ_TRACE``            print each QDQ'd call (op, shape, dtype, weight, format), at
                              most :data:`TRACE_LIMIT` lines per process
``VLLM_QDQ_BACKEND``          ``auto`` | ``reference`` | ``triton`` (QDQ implementation)
``VLLM_QDQ_STATS``            directory for per-layer QDQ error statistics
``VLLM_MARLIN_MOE_QDQ_MODE``  compatibility: ``FORCE_MXFP4`` forces ``mxfp4`` on every call
``VLLM_SAGE3_TRITON``         register the sage3 attention kernel over vllm-omni SAGE_ATTN
``SAGE3_QUANT_FORMAT``        ``mxfp4`` | ``nvfp4`` | ``mxfp8_s1`` | ``mxfp4_s1``
``SAGE3_ACC_DTYPE``           ``fp32`` | ``bf16_both_dot`` | ``bf16_pv_only``
``SAGE3_SCALE_RULE``          MX shared-scale rule for sage3: ``floor`` (OCP) | ``ceil`` | ``even`` | ``rceil``
``SAGE3_ROUTE``               sage3 formats per layer and denoising step: JSON, inline or a file
                              path (schema: :mod:`vllm_qdq.sage3_route`)
``SAGE3_TRACE``               print the step, layer and format of each sage3 call, at most
                              :data:`TRACE_LIMIT` lines per process
============================  ===========================================================

``VLLM_QDQ_CONFIG`` schema (every key optional; unknown keys are errors)::

    {
      "linear": {"format": "auto", "scale_rule": "floor"},   # dense quantized GEMMs
      "moe":    {"format": "auto", "scale_rule": "floor"},   # MoE quantized GEMMs
      "route":  {"mxfp4": "mxfp4", "nvfp4": "nvfp4",         # "auto": activation format
                 "fp8": "mxfp8_e4m3", "int": "off"},         #   by weight kind
      "force":  null,                                        # one format for every call
      "method": {                                            # the `qdq` quantization method
        "weight": {"format": "mxfp4", "scale_rule": "floor"},
        "act":    {"format": "mxfp4", "scale_rule": "floor"},
        "moe_weight": null, "moe_act": null                  # MoE overrides (null: same)
      },
      "layers": [                                            # first match wins
        {"pattern": "lm_head", "skip": true},
        {"pattern": "model.layers.0.*", "act": {"format": "mxfp8_e4m3"}},
        {"pattern": "model.layers.1.self_attn.attn", "kv_cache": "off"}
      ],
      "kv_cache": null,                                      # KV-cache QDQ, e.g. "nvfp4" (plugin and method)
      "attn_q": null,                                        # attention query QDQ, same formats
      "trace": false, "stats_dir": null, "backend": "auto"
    }

A ``format`` is a name in :data:`vllm_qdq.numerics.formats.FORMATS`, ``"off"``, or (activation
specs of the plugin only) ``"auto"``. Layer patterns are shell globs on vLLM's layer prefix
(``fnmatch``), or regular expressions when written ``"re:..."``. Environment variables win
over the JSON for the keys they name.

Every spec (``linear``, ``moe``, ``method.*``, ``layers[].act`` / ``.weight``) also takes
``"scale_rule": "four_over_six"`` (NVFP4 family), ``"rounding": "nearest" | "stochastic"`` with
``"seed": int | null`` (MX and NVFP4 family; ``auto`` applies it where the routed format takes
it) and ``"rotate": {"kind": "hadamard", "block": 16|32|64|128|256, "seed": int | null,
"pad": bool}`` (activations ``R^T QDQ(R x)``, ``qdq``-method weights ``QDQ(W R^T) R``; a K the
block does not divide stops start-up naming the layer unless ``pad``). See
:mod:`vllm_qdq.numerics.rotation` and :mod:`vllm_qdq.numerics.reference` for the numerics.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace

from .numerics.formats import (
    ALL_SCALE_RULES,
    FORMATS,
    ROUNDINGS,
    SCALE_RULES,
    check_rounding,
    check_scale_rule,
    get_format,
)
from .numerics.kv import check_kv_format
from .numerics.qdq import BACKENDS, set_default_backend
from .numerics.rotation import Rotation, parse_rotation
from .sage3.numerics.reference import ACC_DTYPES as SAGE3_ACC_DTYPES
from .sage3.numerics.reference import SAGE3_FORMATS
from .sage3_route import Route, RouteError, read_route
from .schema import check_keys, check_pattern, pattern_matches

__all__ = [
    "ENV_VARS",
    "GRID_SYNC_MODES",
    "TRACE_LIMIT",
    "WEIGHT_KINDS",
    "ConfigError",
    "LayerRule",
    "MethodConfig",
    "QDQConfig",
    "QuantSpec",
    "Sage3Config",
    "apply_grid_sync",
    "check_stats_dir",
    "error_file",
    "load_config",
    "load_sage3_config",
    "parse_bool",
    "raw_value",
    "sage3_settings",
    "settings",
]

logger = logging.getLogger("vllm_qdq")

#: Weight kinds the activation plugin routes on (see ``route``).
WEIGHT_KINDS: tuple[str, ...] = ("mxfp4", "nvfp4", "fp8", "int")
#: Lines ``VLLM_QDQ_TRACE`` prints per process at most.
TRACE_LIMIT = 200

#: Environment variable naming the file where engine processes record a vllm-qdq error
#: (internal: set by the front process for its children, see :mod:`vllm_qdq.errors`).
ERROR_FILE_ENV = "_VLLM_QDQ_ERROR_FILE"

#: ``VLLM_QDQ_TP_AMAX`` values (issue 20).
TP_AMAX_MODES: tuple[str, ...] = ("shard", "layer")
#: ``VLLM_QDQ_GRID_SYNC`` values, and the :data:`vllm_qdq.numerics.triton_qdq.GRID_SYNC` each sets.
GRID_SYNC_MODES: dict[str, bool | str] = {"off": False, "eager": "eager", "on": True}


def apply_grid_sync(mode: str) -> None:
    """Set Triton QDQ's ``GRID_SYNC`` to ``mode``'s value (:data:`GRID_SYNC_MODES`). The module is
    imported only to set a value other than its default (``off``), or when it is already loaded
    (so that settings rebuilt with ``off`` undo an earlier ``eager``): a process that never QDQs on
    CUDA does not import Triton for it. Calls recorded by the eager fast path keep the launches they
    were recorded with: the settings are built once a process, before its first call."""
    import sys

    mod = sys.modules.get("vllm_qdq.numerics.triton_qdq")
    if mod is None and mode == "off":
        return
    if mod is None:
        from .numerics import triton_qdq as mod
    mod.GRID_SYNC = GRID_SYNC_MODES[mode]

#: Every environment variable this package reads, with its default and meaning.
ENV_VARS: dict[str, tuple[str | None, str]] = {
    "VLLM_QDQ": ("0", "enable activation QDQ in vLLM's quantized GEMM ops"),
    "VLLM_QDQ_CONFIG": (None, "JSON settings, inline or a file path"),
    "VLLM_QDQ_TRACE": ("0", f"trace QDQ'd calls (at most {TRACE_LIMIT} lines per process)"),
    "VLLM_QDQ_BACKEND": ("auto", "QDQ implementation: auto | reference | triton"),
    "VLLM_QDQ_STATS": (None, "directory for per-layer QDQ error statistics"),
    "VLLM_QDQ_TP_AMAX": ("shard", "qdq method under tensor parallelism: per-tensor weight scales from the "
                         "rank's shard (shard) or the unsharded layer's amax, all-reduced (layer)"),
    "VLLM_QDQ_GRID_SYNC": ("off", "Triton QDQ: a decode-sized two-pass call (nvfp4 without a given global amax, "
                           "FP8 per-tensor) in one launch with a grid barrier: off | eager | on"),
    "VLLM_MARLIN_MOE_QDQ_MODE": (None, "compatibility: FORCE_MXFP4 forces mxfp4 everywhere"),
    "VLLM_SAGE3_TRITON": ("0", "register the sage3 attention kernel over SAGE_ATTN"),
    "SAGE3_QUANT_FORMAT": ("mxfp4", "sage3: " + " | ".join(SAGE3_FORMATS)),
    "SAGE3_ACC_DTYPE": ("fp32", "sage3: " + " | ".join(SAGE3_ACC_DTYPES)),
    "SAGE3_SCALE_RULE": ("floor", "sage3 MX scale rule: " + " | ".join(SCALE_RULES)),
    "SAGE3_ROUTE": (None, "sage3 formats per layer and denoising step: JSON, inline or a file path"),
    "SAGE3_TRACE": ("0", f"trace each sage3 call's step, layer and format (at most {TRACE_LIMIT} lines)"),
}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class ConfigError(Exception):
    """A setting has a value this package does not accept; the message names both.

    Not a ``ValueError`` on purpose: vLLM builds its configs (``VllmConfig``, which creates the
    ``qdq`` quantization config) as pydantic dataclasses, and pydantic turns a ``ValueError``
    raised inside them into a ``ValidationError`` that buries the message; any other exception
    passes through as itself. How the error reaches the user: :mod:`vllm_qdq.errors`.
    """


def parse_bool(name: str, value: str | None, default: bool = False) -> bool:
    """The one boolean parser for every variable here."""
    if value is None:
        return default
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean; accepted: {', '.join(_TRUE + _FALSE[:-1])}")


@dataclass(frozen=True)
class QuantSpec:
    """One format and scale rule. ``format`` may be ``"off"`` (and ``"auto"`` where allowed).

    Issue-18 options (JSON keys of the same name, validated by :func:`config_from_dict`):
    ``rounding`` ``"nearest"`` | ``"stochastic"`` (MX and NVFP4 family) with its Philox ``seed``
    (``None``: 0); ``rotate``: a block Hadamard rotation along K
    (:class:`vllm_qdq.numerics.rotation.Rotation`): activations become ``R^T QDQ(R x)``, weights
    of the ``qdq`` method ``QDQ(W R^T) R``.
    """

    format: str = "off"
    scale_rule: str = "floor"
    rounding: str = "nearest"
    seed: int | None = None
    rotate: Rotation | None = None

    @property
    def enabled(self) -> bool:
        return self.format != "off"

    @property
    def rotate_arg(self) -> str | None:
        """``rotate`` as the custom op's string argument (``None``: no rotation)."""
        return self.rotate.encode() if self.rotate is not None else None

    def options_str(self) -> str:
        """``+hadamard128,seed=1+stochastic(seed=0)``-style suffix of the options set ('' if none)."""
        out = f"+{self.rotate}" if self.rotate is not None else ""
        if self.rounding != "nearest":
            out += f"+{self.rounding}(seed={self.seed or 0})"
        return out

    def __str__(self) -> str:
        if self.format not in FORMATS or not FORMATS[self.format].takes_scale_rule:  # off, auto, KV-only
            shown = self.format
            if self.format in FORMATS and self.scale_rule != "floor":  # nvfp4/four_over_six
                shown += f"/{self.scale_rule}"
            return shown + self.options_str()
        return f"{self.format}/{self.scale_rule}" + self.options_str()


@dataclass(frozen=True)
class LayerRule:
    """A per-layer override: layers whose prefix matches ``pattern`` skip QDQ or use these specs."""

    pattern: str
    skip: bool = False
    act: QuantSpec | None = None
    weight: QuantSpec | None = None
    #: KV-cache spec of the attention layers this rule matches (``None``: the default one).
    kv_cache: QuantSpec | None = None
    #: attention-query spec of the attention layers this rule matches (``None``: the default one).
    attn_q: QuantSpec | None = None

    def matches(self, prefix: str) -> bool:
        return pattern_matches(self.pattern, prefix)


@dataclass(frozen=True)
class MethodConfig:
    """Settings of the ``qdq`` quantization method (weights QDQ'd at load, activations per call)."""

    weight: QuantSpec = QuantSpec("mxfp4", "floor")
    act: QuantSpec = QuantSpec("mxfp4", "floor")
    moe_weight: QuantSpec | None = None
    moe_act: QuantSpec | None = None


@dataclass(frozen=True)
class QDQConfig:
    """All activation-QDQ and ``qdq``-method settings, validated."""

    enabled: bool = False
    linear: QuantSpec = QuantSpec("auto", "floor")
    moe: QuantSpec = QuantSpec("auto", "floor")
    route: Mapping[str, str] = field(
        default_factory=lambda: {"mxfp4": "mxfp4", "nvfp4": "nvfp4", "fp8": "mxfp8_e4m3", "int": "off"}
    )
    force: str | None = None
    method: MethodConfig = MethodConfig()
    layers: tuple[LayerRule, ...] = ()
    trace: bool = False
    stats_dir: str | None = None
    backend: str = "auto"
    #: KV-cache QDQ (:mod:`vllm_qdq.numerics.kv`): the keys and values each attention layer writes
    #: to the paged cache (plugin with ``VLLM_QDQ=1``; the ``qdq`` method's default).
    kv_cache: QuantSpec = QuantSpec("off")
    #: Attention-query QDQ (same formats as ``kv_cache``, blocks along the head dimension).
    attn_q: QuantSpec = QuantSpec("off")
    #: ``qdq`` method under tensor parallelism (issue 20, :mod:`vllm_qdq.method.tp`): the amax of
    #: a weight's per-tensor scale (NVFP4 global, ``*_per_tensor``): ``shard`` (each rank's own) or
    #: ``layer`` (the unsharded layer's, all-reduced with MAX over the TP group at load).
    tp_amax: str = "shard"
    #: Triton QDQ's :data:`vllm_qdq.numerics.triton_qdq.GRID_SYNC` in every process whose settings are
    #: built (:func:`settings`): ``off`` (two launches), ``eager`` (one launch with a grid barrier
    #: outside CUDA graph captures), ``on`` (captures too). The same numbers either way; not hashed.
    grid_sync: str = "off"
    #: Where the JSON settings came from (``defaults`` or ``VLLM_QDQ_CONFIG``): for the log, not hashed.
    source: str = "defaults"

    def rule_for(self, prefix: str) -> LayerRule | None:
        """The first layer rule matching ``prefix``, if any."""
        for rule in self.layers:
            if rule.matches(prefix):
                return rule
        return None

    def to_json(self) -> dict:
        d = asdict(self)
        d["route"] = dict(self.route)
        return d

    def digest(self) -> str:
        """A stable hash of every setting that changes numerics (for compile-cache keys)."""
        d = self.to_json()
        for k in ("trace", "stats_dir", "source", "grid_sync"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def summary(self) -> str:
        """One line for the log."""
        if self.force:
            acts = f"force={self.force}"
        else:
            acts = f"linear={self.linear} moe={self.moe} route={dict(self.route)}"
        return (
            f"{acts} method=(w={self.method.weight}, a={self.method.act}) "
            f"layers={len(self.layers)} backend={self.backend} trace={self.trace}"
            + (f" kv_cache={self.kv_cache}" if self.kv_cache.enabled else "")
            + (f" attn_q={self.attn_q}" if self.attn_q.enabled else "")
            + (f" grid_sync={self.grid_sync}" if self.grid_sync != "off" else "")
        )


@dataclass(frozen=True)
class Sage3Config:
    """Settings of the sage3 attention backend."""

    enabled: bool = False
    quant_format: str = "mxfp4"
    acc_dtype: str = "fp32"
    scale_rule: str = "floor"
    #: ``SAGE3_ROUTE``: formats per layer and denoising step (None: ``quant_format`` everywhere).
    route: Route | None = None
    #: ``SAGE3_TRACE``: one line per sage3 call (step, layer, format), capped at :data:`TRACE_LIMIT`.
    trace: bool = False


# ----------------------------------------------------------------------------- parsing


def _keys(where: str, obj: object, allowed: tuple[str, ...]) -> Mapping:
    return check_keys(where, obj, allowed, ConfigError)


def _spec(where: str, obj: object, *, allow_auto: bool, base: QuantSpec | None = None) -> QuantSpec:
    if isinstance(obj, str):
        obj = {"format": obj}
    d = _keys(where, obj, ("format", "scale_rule", "rounding", "seed", "rotate"))
    fmt = d.get("format", base.format if base else "off")
    rule = d.get("scale_rule", base.scale_rule if base else "floor")
    special = ("off", "auto") if allow_auto else ("off",)
    if not isinstance(fmt, str):  # a list or object: not hashable, never a name
        raise ConfigError(f"{where}.format={fmt!r} is not a known format; accepted: "
                          f"{', '.join(special + tuple(FORMATS))}")
    if not isinstance(rule, str):
        raise ConfigError(f"{where}.scale_rule={rule!r}; accepted: {', '.join(ALL_SCALE_RULES)}")
    rounding, seed, rotate = _spec_options(where, d, fmt, base)
    if fmt not in special:
        try:
            spec = get_format(fmt)
        except ValueError:
            raise ConfigError(
                f"{where}.format={fmt!r} is not a known format; accepted: "
                f"{', '.join(special + tuple(FORMATS))}"
            ) from None
        try:
            check_scale_rule(spec, rule)
        except ValueError as e:
            raise ConfigError(f"{where}.scale_rule: {e}") from None
    elif rule not in ALL_SCALE_RULES:
        raise ConfigError(f"{where}.scale_rule={rule!r}; accepted: {', '.join(ALL_SCALE_RULES)}")
    return QuantSpec(fmt, rule, rounding, seed, rotate)


def _spec_options(where: str, d: Mapping, fmt: str, base: QuantSpec | None) -> tuple[str, int | None, Rotation | None]:
    """``rounding``, ``seed`` and ``rotate`` of a spec (inherited from ``base`` where not given).

    A named format must accept the rounding (:func:`vllm_qdq.numerics.formats.check_rounding`);
    with ``"auto"`` it applies where the routed format accepts it (see
    :func:`vllm_qdq.activation.vllm_patch.build_table`).
    """
    rounding = d.get("rounding", base.rounding if base else "nearest")
    if rounding not in ROUNDINGS:
        raise ConfigError(f"{where}.rounding={rounding!r}; accepted: {', '.join(ROUNDINGS)}")
    if fmt in FORMATS:
        try:
            check_rounding(FORMATS[fmt], rounding)
        except ValueError as e:
            raise ConfigError(f"{where}.rounding: {e}") from None
    seed = d.get("seed", base.seed if base else None)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ConfigError(f"{where}.seed={seed!r}; accepted: null or an integer in [0, 2**63)")
    rotate = base.rotate if base else None
    if "rotate" in d:
        try:
            rotate = parse_rotation(d["rotate"], f"{where}.rotate") if d["rotate"] is not None else None
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return rounding, seed, rotate


def kv_spec(where: str, obj: object) -> QuantSpec:
    """A KV-cache or attention-query spec (``"nvfp4"`` or ``{"format", "scale_rule", "rounding",
    "seed", "rotate"}``), checked against :data:`vllm_qdq.numerics.kv.KV_FORMATS`; raises
    :class:`ConfigError` naming the value."""
    if isinstance(obj, str):
        obj = {"format": obj}
    d = _keys(where, obj, ("format", "scale_rule", "rounding", "seed", "rotate"))
    fmt, rule = d.get("format", "off"), d.get("scale_rule", "floor")
    if not isinstance(fmt, str) or not isinstance(rule, str):
        raise ConfigError(f"{where} format and scale_rule must be strings, got {json.dumps(obj)}")
    try:
        check_kv_format(fmt, rule)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    rounding, seed, rotate = _spec_options(where, d, fmt, None)
    try:
        check_kv_format(fmt, rule, rounding, rotate)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    return QuantSpec(fmt, rule, rounding, seed, rotate)


def _format_name(where: str, value: object, extra: tuple[str, ...] = ("off",)) -> str:
    if isinstance(value, str) and (value in extra or value in FORMATS):
        return value  # type: ignore[return-value]
    raise ConfigError(f"{where}={value!r} is not a known format; accepted: {', '.join(extra + tuple(FORMATS))}")


def _read_json(raw: str) -> dict:
    text = raw.strip()
    src = "VLLM_QDQ_CONFIG"
    if not text.startswith("{"):
        if not os.path.isfile(text):
            raise ConfigError(f"VLLM_QDQ_CONFIG={raw!r} is neither inline JSON nor an existing file")
        src = f"VLLM_QDQ_CONFIG file {text}"
        with open(text, encoding="utf-8") as f:
            text = f.read()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{src} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{src} must hold a JSON object, got {type(obj).__name__}")
    return obj


def config_from_dict(obj: Mapping, *, enabled: bool = False) -> QDQConfig:
    """Build and validate a :class:`QDQConfig` from the JSON schema in the module docstring."""
    top = _keys(
        "VLLM_QDQ_CONFIG", obj,
        ("linear", "moe", "route", "force", "method", "layers", "trace", "stats_dir", "backend", "kv_cache",
         "attn_q"),
    )
    base = QDQConfig(enabled=enabled)
    linear = _spec("linear", top["linear"], allow_auto=True, base=base.linear) if "linear" in top else base.linear
    moe = _spec("moe", top["moe"], allow_auto=True, base=base.moe) if "moe" in top else base.moe
    route = dict(base.route)
    if "route" in top:
        for kind, fmt in _keys("route", top["route"], WEIGHT_KINDS).items():
            route[kind] = _format_name(f"route.{kind}", fmt)
    force = top.get("force")
    if force is not None:
        force = _format_name("force", force, extra=())
    method = base.method
    if "method" in top:
        m = _keys("method", top["method"], ("weight", "act", "moe_weight", "moe_act"))
        method = MethodConfig(
            weight=_spec("method.weight", m["weight"], allow_auto=False) if "weight" in m else method.weight,
            act=_spec("method.act", m["act"], allow_auto=False) if "act" in m else method.act,
            moe_weight=_spec("method.moe_weight", m["moe_weight"], allow_auto=False)
            if m.get("moe_weight") is not None else None,
            moe_act=_spec("method.moe_act", m["moe_act"], allow_auto=False)
            if m.get("moe_act") is not None else None,
        )
    layers = []
    raw_layers = top.get("layers", [])
    if not isinstance(raw_layers, list):
        raise ConfigError(f"layers must be a JSON list, got {json.dumps(raw_layers)}")
    for i, item in enumerate(raw_layers):
        d = _keys(f"layers[{i}]", item, ("pattern", "skip", "act", "weight", "kv_cache", "attn_q"))
        pat = check_pattern(f"layers[{i}].pattern", d.get("pattern"), ConfigError)
        skip = d.get("skip", False)
        if not isinstance(skip, bool):
            raise ConfigError(f"layers[{i}].skip must be true or false, got {skip!r}")
        act = _spec(f"layers[{i}].act", d["act"], allow_auto=True) if "act" in d else None
        weight = _spec(f"layers[{i}].weight", d["weight"], allow_auto=False) if "weight" in d else None
        kv = kv_spec(f"layers[{i}].kv_cache", d["kv_cache"]) if "kv_cache" in d else None
        q = kv_spec(f"layers[{i}].attn_q", d["attn_q"]) if "attn_q" in d else None
        if not skip and act is None and weight is None and kv is None and q is None:
            raise ConfigError(
                f"layers[{i}] ({pat!r}) needs \"skip\": true, \"act\", \"weight\", \"kv_cache\" or \"attn_q\""
            )
        layers.append(LayerRule(pat, skip, act, weight, kv, q))
    trace = top.get("trace", False)
    if not isinstance(trace, bool):
        raise ConfigError(f"trace must be true or false, got {trace!r}")
    stats_dir = top.get("stats_dir")
    if stats_dir is not None and not isinstance(stats_dir, str):
        raise ConfigError(f"stats_dir must be a path string, got {stats_dir!r}")
    backend = top.get("backend", "auto")
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r}; accepted: {', '.join(BACKENDS)}")
    kv_cache = kv_spec("kv_cache", top["kv_cache"]) if top.get("kv_cache") is not None else QuantSpec("off")
    attn_q = kv_spec("attn_q", top["attn_q"]) if top.get("attn_q") is not None else QuantSpec("off")
    return QDQConfig(enabled, linear, moe, route, force, method, tuple(layers), trace, stats_dir, backend,
                     kv_cache=kv_cache, attn_q=attn_q)


def check_stats_dir(path: str, name: str) -> None:
    """Check that ``path`` is, or can be created as, a directory this process can write to.

    Nothing is created here (the stats writer creates it at its first write); this only makes
    a path that can never work fail at start-up, in the first process that loads the settings,
    instead of in the first served request.

    Raises:
        ConfigError: naming ``name``, the value and what is wrong with it.
    """
    accepted = "accepted: a directory this process can write to, or a path where one can be created"
    p = os.path.abspath(path)
    if os.path.exists(p):
        if not os.path.isdir(p):
            raise ConfigError(f"{name}={path!r} exists and is not a directory; {accepted}")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(f"{name}={path!r} is a directory this process (uid {os.getuid()}) cannot write to; {accepted}")
        return
    parent = os.path.dirname(p)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"{name}={path!r} cannot be created: {parent!r} is not a directory; {accepted}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{name}={path!r} cannot be created: this process (uid {os.getuid()}) cannot write to {parent!r}; {accepted}"
        )


def load_config(env: Mapping[str, str] | None = None) -> QDQConfig:
    """Read and validate every QDQ setting from ``env`` (default: ``os.environ``).

    Raises:
        ConfigError: any bad name or value, with the accepted ones.
    """
    env = os.environ if env is None else env
    enabled = parse_bool("VLLM_QDQ", env.get("VLLM_QDQ"))
    raw = env.get("VLLM_QDQ_CONFIG")
    cfg = config_from_dict(_read_json(raw) if raw and raw.strip() else {}, enabled=enabled)
    if raw and raw.strip():
        cfg = replace(cfg, source="VLLM_QDQ_CONFIG")
    mode = env.get("VLLM_MARLIN_MOE_QDQ_MODE")
    if mode is not None and mode.strip():
        m = mode.strip().upper()
        if m == "FORCE_MXFP4":
            cfg = replace(cfg, force="mxfp4")
        elif m not in ("AUTO", "DEFAULT"):
            raise ConfigError(
                f"VLLM_MARLIN_MOE_QDQ_MODE={mode!r}; accepted (any case): FORCE_MXFP4, AUTO"
            )
    if "VLLM_QDQ_TRACE" in env:
        cfg = replace(cfg, trace=parse_bool("VLLM_QDQ_TRACE", env["VLLM_QDQ_TRACE"]))
    if env.get("VLLM_QDQ_STATS"):
        cfg = replace(cfg, stats_dir=env["VLLM_QDQ_STATS"])
        check_stats_dir(cfg.stats_dir, "VLLM_QDQ_STATS")
    elif cfg.stats_dir:
        check_stats_dir(cfg.stats_dir, "VLLM_QDQ_CONFIG stats_dir")
    for var, field_name, accepted in (("VLLM_QDQ_TP_AMAX", "tp_amax", TP_AMAX_MODES),
                                      ("VLLM_QDQ_GRID_SYNC", "grid_sync", tuple(GRID_SYNC_MODES)),
                                      ("VLLM_QDQ_BACKEND", "backend", BACKENDS)):
        if env.get(var):  # one of a few words, any case; unset or empty: the JSON's or the default
            v = env[var].strip().lower()
            if v not in accepted:
                raise ConfigError(f"{var}={env[var]!r}; accepted: {', '.join(accepted)}")
            cfg = replace(cfg, **{field_name: v})
    return cfg


def load_sage3_config(env: Mapping[str, str] | None = None) -> Sage3Config:
    """Read and validate the sage3 settings; raises :class:`ConfigError` naming a bad value."""
    env = os.environ if env is None else env
    enabled = parse_bool("VLLM_SAGE3_TRITON", env.get("VLLM_SAGE3_TRITON"))
    fmt = (env.get("SAGE3_QUANT_FORMAT") or "mxfp4").strip().lower()
    if fmt not in SAGE3_FORMATS:
        raise ConfigError(f"SAGE3_QUANT_FORMAT={fmt!r}; accepted: {', '.join(SAGE3_FORMATS)}")
    acc = (env.get("SAGE3_ACC_DTYPE") or "fp32").strip().lower()
    if acc not in SAGE3_ACC_DTYPES:
        raise ConfigError(f"SAGE3_ACC_DTYPE={acc!r}; accepted: {', '.join(SAGE3_ACC_DTYPES)}")
    rule = (env.get("SAGE3_SCALE_RULE") or "floor").strip().lower()
    if rule not in SCALE_RULES:
        raise ConfigError(f"SAGE3_SCALE_RULE={rule!r}; accepted: {', '.join(SCALE_RULES)}")
    if fmt == "nvfp4" and rule != "floor":
        raise ConfigError(
            f"SAGE3_SCALE_RULE={rule!r} does not apply to SAGE3_QUANT_FORMAT='nvfp4' (E4M3 block scales); "
            f"scale rules apply to: {', '.join(f for f in SAGE3_FORMATS if f != 'nvfp4')}"
        )
    route = None
    raw_route = env.get("SAGE3_ROUTE")
    if raw_route is not None and raw_route.strip():
        try:  # the scale rule applies to the MX formats a route picks; nvfp4 keeps its E4M3 scales
            route = read_route(raw_route, default_format=fmt)
        except RouteError as e:
            raise ConfigError(f"SAGE3_ROUTE: {e}") from None
    trace = parse_bool("SAGE3_TRACE", env.get("SAGE3_TRACE"))
    return Sage3Config(enabled, fmt, acc, rule, route, trace)


# ----------------------------------------------------------------------------- the process's settings

#: Variables each cached settings object was built from (a change rebuilds it).
_QDQ_VARS: tuple[str, ...] = tuple(n for n in ENV_VARS if not n.startswith(("VLLM_SAGE3", "SAGE3_")))
_SAGE3_VARS: tuple[str, ...] = tuple(n for n in ENV_VARS if n not in _QDQ_VARS)
_CACHE: dict[str, tuple[tuple, object]] = {}


def _fingerprint(names: tuple[str, ...]) -> tuple:
    """The raw values of ``names`` (and a ``VLLM_QDQ_CONFIG`` / ``SAGE3_ROUTE`` file's mtime and size)."""
    values: list[object] = [os.environ.get(n) for n in names]
    for var in ("VLLM_QDQ_CONFIG", "SAGE3_ROUTE"):
        raw = (os.environ.get(var) or "").strip() if var in names else ""
        if raw and not raw.startswith("{") and os.path.isfile(raw):
            st = os.stat(raw)
            values.append((st.st_mtime_ns, st.st_size))
    return tuple(values)


def settings() -> QDQConfig:
    """The process's QDQ settings: read from ``os.environ`` and validated once, then reused.

    Every consumer (the plugin, the ``qdq`` method, the statistics recorder) takes them from
    here, or is handed them, and reads no variable itself. The object is rebuilt only when one
    of the variables it was built from changes (never inside vLLM; tests change them). Building
    it also sets the QDQ API's default backend (:func:`vllm_qdq.numerics.qdq.set_default_backend`)
    to ``backend``.

    Raises:
        ConfigError: any bad name or value (see :func:`load_config`); nothing is cached then.
    """
    key = _fingerprint(_QDQ_VARS)
    hit = _CACHE.get("qdq")
    if hit is not None and hit[0] == key:
        return hit[1]  # type: ignore[return-value]
    cfg = load_config()
    set_default_backend(cfg.backend)
    apply_grid_sync(cfg.grid_sync)
    _CACHE["qdq"] = (key, cfg)
    return cfg


def sage3_settings() -> Sage3Config:
    """The process's sage3 settings (:func:`load_sage3_config`), validated once and reused like
    :func:`settings`. Raises :class:`ConfigError` naming a bad value."""
    key = _fingerprint(_SAGE3_VARS)
    hit = _CACHE.get("sage3")
    if hit is not None and hit[0] == key:
        return hit[1]  # type: ignore[return-value]
    cfg = load_sage3_config()
    _CACHE["sage3"] = (key, cfg)
    return cfg


def raw_value(name: str) -> str | None:
    """The unparsed text of one of :data:`ENV_VARS` (for vLLM's compile-cache key, which hashes
    what the user set); the validated values are :func:`settings`'."""
    if name not in ENV_VARS:
        raise KeyError(f"{name!r} is not a vllm-qdq variable; known: {', '.join(ENV_VARS)}")
    return os.environ.get(name)


def error_file() -> str | None:
    """The path in :data:`ERROR_FILE_ENV` (the front process's error file), or ``None``."""
    return os.environ.get(ERROR_FILE_ENV) or None


# ----------------------------------------------------------------------------- tooling settings
# The study, the demo and the GPU suite's engine drivers (vllm_qdq.study) read their environment
# here too: command-line defaults (``STUDY_*``), the servers' API key, and the GPU test engines'
# memory (``QDQ_TEST_KV_BYTES``, ``QDQ_TEST_GPU_UTIL``).

#: The servers' API key variable (``vllm serve`` reads the same one).
API_KEY_ENV = "VLLM_API_KEY"
#: A GPU test engine's fixed KV-cache size in bytes (default 1 GiB; 0: vLLM profiles memory).
TEST_KV_BYTES_ENV = "QDQ_TEST_KV_BYTES"
#: A GPU test engine's ``gpu_memory_utilization`` (checked against free memory at its start).
TEST_GPU_UTIL_ENV = "QDQ_TEST_GPU_UTIL"


def process_env() -> dict[str, str]:
    """A copy of the process environment, to start a child process with (settings travel there
    as the environment, read again by the child's own :func:`settings`)."""
    return dict(os.environ)


def env_str(name: str, default: str) -> str:
    """A text setting of the tooling (a command-line flag's default): ``default`` when unset."""
    return os.environ.get(name, default)


def env_int(name: str, default: int | None, *, optional: bool = False) -> int | None:
    """An integer setting of the tooling (a command-line flag's default): ``default`` when unset,
    and when empty for an ``optional`` one (compose passes ``${X:-}``); anything else that is not
    an integer raises ``ValueError`` naming the variable and the value."""
    raw = os.environ.get(name)
    if raw is None or (optional and raw == ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}; accepted: an integer" + (" or empty" if optional else "")) from None


def api_key() -> str | None:
    """The servers' API key from :data:`API_KEY_ENV`; ``None`` when unset or empty (no key)."""
    return os.environ.get(API_KEY_ENV) or None


def engine_kv_bytes() -> int:
    """:data:`TEST_KV_BYTES_ENV` (default ``1 << 30``): a non-negative integer, else ``ValueError``
    naming it."""
    n = env_int(TEST_KV_BYTES_ENV, 1 << 30)
    if n is None or n < 0:
        raise ValueError(f"{TEST_KV_BYTES_ENV}={n!r}; accepted: an integer >= 0 (0: let vLLM profile memory)")
    return n


def engine_gpu_util(default: float) -> float:
    """:data:`TEST_GPU_UTIL_ENV` (``default`` when unset): a fraction in (0, 1], else ``ValueError``."""
    raw = os.environ.get(TEST_GPU_UTIL_ENV)
    if raw is None:
        return default
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not 0.0 < v <= 1.0:
        raise ValueError(f"{TEST_GPU_UTIL_ENV}={raw!r}; accepted: a fraction in (0, 1]")
    return v


@contextlib.contextmanager
def client_key_env(key: str | None) -> Iterator[dict[str, str]]:
    """``OPENAI_API_KEY`` = ``key`` in this process while the block runs (what ``vllm bench
    serve`` and lm-eval's ``local-completions``, run in this process or started from it, send as
    ``Authorization: Bearer``); yields the environment for a subprocess. ``None``: nothing changes."""
    if key is None:
        yield dict(os.environ)
        return
    old = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = key
    try:
        yield dict(os.environ)
    finally:
        if old is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = old
