"""KV-cache QDQ inside vLLM 0.30: keys and values QDQ'd once, as they are written to the cache.

**Where.** Every vLLM 0.30 attention backend whose ``forward_includes_kv_cache_update`` is false
writes the paged cache in one method, ``AttentionImpl.do_kv_cache_update(layer, key, value,
kv_cache, slot_mapping)``, called once per layer and step by the opaque custom op
``vllm::unified_kv_cache_update`` (``vllm/model_executor/layers/attention/attention.py``); the
method then calls the backend's cache-write op (``cpu_attn_reshape_and_cache`` on CPU,
``reshape_and_cache_flash`` for FlashAttention / FlashInfer / FlexAttention / ROCm AITER,
``triton_reshape_and_cache_flash`` for the Triton backend, ...: the table in the README).
:func:`install_layer` replaces that method *on the layer's impl instance* by one that QDQs
``key`` and ``value`` (:func:`vllm_qdq.numerics.kv.qdq_kv`, blocks along the head dimension) and
calls the original with the QDQ'd tensors. Hooking there rather than in each op wrapper covers
every backend that writes through it, whatever op it calls (several call
``torch.ops._C_cache_ops.reshape_and_cache_flash`` directly, which no Python wrapper sees), and
sees the layer's name, so layer rules apply (``layers[i].kv_cache`` / ``skip``) with the plugin
too. Every later read (prefill of the rest of the prompt, each decode step, prefix-cache hits)
sees the QDQ'd values and pays nothing.

**Numerics.** Only the first ``slot_mapping.shape[0]`` rows carry tokens (vLLM pads ``key`` /
``value`` for CUDA graphs but not ``slot_mapping``, and the cache-write ops write that many
rows); slots ``-1`` (padding in full CUDA-graph batches) are masked out of scales that span
tokens. What is written equals ``qdq_kv(key[:n], fmt, rule, valid=slot_mapping >= 0, **options)`` in the
input dtype, before any FP8 cache conversion of vLLM's own (``kv_cache_dtype``), which then
applies to the QDQ'd values.

**Compile and CUDA graphs.** The hook runs inside ``unified_kv_cache_update``'s real
implementation: torch.compile never traces it (the op is opaque and a splitting op of vLLM's
piecewise graphs), so it runs eagerly in piecewise CUDA-graph mode and is captured with the
rest in full CUDA graphs (the QDQ is plain tensor work, no host read).

**Statistics.** With ``VLLM_QDQ_STATS`` each write is recorded (:func:`vllm_qdq.stats.record_call`)
under ``<layer>.k_cache`` and ``<layer>.v_cache``: per-layer SQNR of K and V, like the GEMM
activations (``fp8_e4m3_per_head`` is recorded as per-channel FP8 of the ``[heads, tokens *
head_size]`` view, which it is).

**Which layers.** :func:`layer_status` says why a layer's writes are or are not hooked: MLA
layers (latent cache, ``concat_and_cache_mla``), backends that write the cache inside their
forward (``forward_includes_kv_cache_update``: cross-attention, ``HPC_ATTN``) and impls without
``do_kv_cache_update`` are not covered, and a KV spec that reaches one of them stops start-up
(:class:`vllm_qdq.config.ConfigError`, naming the layer, the reason and the ``skip`` rule that
would leave it out); encoder self-attention has no cache, and a layer sharing another's cache
(``kv_sharing_target_layer_name``) reads what that layer wrote.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..config import ConfigError, LayerRule, QDQConfig, QuantSpec
from ..numerics.kv import qdq_kv, spans_tokens

__all__ = [
    "HOOK_ATTR",
    "STAT_SUFFIXES",
    "KVReport",
    "install_layer",
    "install_model",
    "install_plugin_hook",
    "install_query",
    "layer_status",
    "plan_layer",
    "spec_for",
]

logger = logging.getLogger("vllm_qdq")

#: Attribute set on a hooked ``do_kv_cache_update`` (its value: the :class:`QuantSpec`).
HOOK_ATTR = "_vllm_qdq_kv_spec"
#: Suffixes of the statistics keys of the attention hooks: ``<layer>.k_cache``, ``.v_cache``, ``.q``.
STAT_SUFFIXES: tuple[str, ...] = (".k_cache", ".v_cache", ".q")
#: Marker on the wrapped ``BaseModelLoader.create_model`` (:func:`install_plugin_hook`).
_LOADER_ATTR = "_vllm_qdq_kv_loader"

#: :func:`layer_status` results that need no hook and are no error.
NOTHING_TO_DO = ("no-cache", "shared")

#: Attention impls of vLLM 0.30 whose ``do_kv_cache_update`` is hooked: impl class -> (backend,
#: the cache-write op it calls). A test fails when vLLM has an impl with its own
#: ``do_kv_cache_update`` in neither this table nor :data:`LEFT_OUT`.
COVERED: dict[str, tuple[str, str]] = {
    "CPUAttentionBackendImpl": ("CPU_ATTN", "vllm._custom_ops.cpu_attn_reshape_and_cache"),
    "FlashAttentionImpl": ("FLASH_ATTN (FA2/FA3/FA4)", "reshape_and_cache_flash (vllm._custom_ops, via fa_utils)"),
    "FlashAttentionDiffKVImpl": ("FLASH_ATTN_DIFFKV", "triton_reshape_and_cache_flash_diffkv"),
    "TritonAttentionImpl": ("TRITON_ATTN", "triton_reshape_and_cache_flash (per-token-head quant variant for "
                            "per-token-head KV dtypes)"),
    "TritonAttentionDiffKVImpl": ("TRITON_ATTN_DIFFKV", "triton_reshape_and_cache_flash_diffkv"),
    "FlashInferImpl": ("FLASHINFER", "torch.ops._C_cache_ops.reshape_and_cache_flash"),
    "FlexAttentionImpl": ("FLEX_ATTENTION", "torch.ops._C_cache_ops.reshape_and_cache_flash"),
    "B12xPagedAttentionImpl": ("B12X", "torch.ops._C_cache_ops.reshape_and_cache_flash"),
    "RocmAttentionImpl": ("ROCM_ATTN", "triton_reshape_and_cache_flash / reshape_and_cache"),
    "RocmAiterUnifiedAttentionImpl": ("ROCM_AITER_UNIFIED_ATTN", "vllm._custom_ops.reshape_and_cache_flash"),
    "AiterFlashAttentionImpl": ("ROCM_AITER_FA", "reshape_and_cache_shuffle_triton / _C_cache_ops.reshape_and_cache_flash"),
    "TurboQuantAttentionImpl": ("TURBOQUANT", "its own compressed store (_store_kv): QDQ'd values are then compressed"),
    "CompositeAttentionImpl": ("composite (MM prefix)", "the general impl's do_kv_cache_update"),
}

#: What is not covered, and why (impl or layer class -> reason).
LEFT_OUT: dict[str, str] = {
    "MLAAttentionImpl": "MLA: the cache holds the compressed latent and the RoPE key (concat_and_cache_mla), "
                        "not per-head K/V; a kv_cache spec reaching an MLA layer stops start-up",
    "CPUMLAImpl": "MLA on CPU (latent cache), as MLAAttentionImpl",
    "AMXMLAImpl": "MLA on AMX CPUs (amx_mla_concat_and_cache, latent cache), as MLAAttentionImpl",
    "HpcAttentionImpl": "HPC_ATTN writes the cache inside its forward (forward_includes_kv_cache_update): no hook "
                        "point; stops start-up",
    "CrossAttention": "encoder-decoder cross-attention writes the encoder's K/V inside its forward; stops start-up",
    "WhisperCausalAttentionWithBlockPoolingImpl": "writes inside its forward (forward_includes_kv_cache_update)",
    "StaticSinkAttention": "the sink tokens' K/V (populate_sink_kv, written once) are not QDQ'd; the model's "
                           "own tokens are (through do_kv_cache_update)",
    "fuse_rope_kvcache": "ROCm compile passes fuse RoPE with the cache write (do_rope_and_kv_cache_update, "
                         "do_qk_norm_rope_kvcache_update): with either pass on, a kv_cache spec stops start-up",
    "EncoderOnlyAttention": "no KV cache (encoder self-attention): nothing to QDQ",
}

#: vLLM compile passes that write the cache through another path than ``do_kv_cache_update``.
_FUSED_WRITE_PASSES: tuple[str, ...] = ("fuse_rope_kvcache", "fuse_qk_norm_rope_kvcache")


def fused_write_passes() -> list[str]:
    """The passes of :data:`_FUSED_WRITE_PASSES` on in the current vLLM config (none: empty)."""
    try:
        from vllm.config import get_current_vllm_config

        pc = get_current_vllm_config().compilation_config.pass_config
    except Exception:  # no current config (a unit test building a layer by hand)
        return []
    return [name for name in _FUSED_WRITE_PASSES if getattr(pc, name, False)]


def spec_for(prefix: str, default: QuantSpec, layers: Iterable[LayerRule],
             key: str = "kv_cache") -> tuple[QuantSpec, LayerRule | None]:
    """The ``key`` spec (``kv_cache`` or ``attn_q``) of attention layer ``prefix``: the first
    matching layer rule decides (``skip``: off; its ``key`` spec if it has one; else
    ``default``), no match gives ``default``. Returns the spec and the rule that set it (``None``
    when the default applies)."""
    for rule in layers:
        if rule.matches(prefix):
            if rule.skip:
                return QuantSpec("off"), rule
            own = getattr(rule, key)
            if own is not None:
                return own, rule
            return default, None
    return default, None


def layer_status(layer: torch.nn.Module) -> str:
    """``"ok"`` (hookable), ``"no-cache"``, ``"shared"`` or why the layer's cache writes cannot be
    hooked (a sentence naming the layer's class or backend)."""
    from vllm.model_executor.layers.attention.attention import Attention
    from vllm.v1.attention.backend import AttentionType

    if not isinstance(layer, Attention):
        return (f"{type(layer).__name__} is not covered (MLA and other non-standard attention write a "
                "latent or otherwise shaped cache, e.g. concat_and_cache_mla)")
    if getattr(layer, "attn_type", None) in (AttentionType.ENCODER_ONLY, AttentionType.ENCODER):
        return "no-cache"
    if getattr(layer, "kv_sharing_target_layer_name", None) is not None:
        return "shared"
    backend = getattr(layer, "attn_backend", None)
    if backend is not None and getattr(backend, "forward_includes_kv_cache_update", False):
        return (f"attention backend {backend.get_name()} writes the cache inside its forward "
                "(forward_includes_kv_cache_update), which has no hook point")
    if not callable(getattr(layer.impl, "do_kv_cache_update", None)):
        return f"{type(layer.impl).__name__} has no do_kv_cache_update"
    return "ok"


def _stats_view(x: torch.Tensor, y: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(x, y, fmt)`` as the stats recorder can re-quantize them (per-head FP8 = per-channel FP8
    of the ``[heads, tokens * head_size]`` view)."""
    if fmt == "fp8_e4m3_per_head":
        h = x.shape[1]
        return (x.transpose(0, 1).reshape(h, -1), y.transpose(0, 1).reshape(h, -1), "fp8_e4m3_per_channel")
    return x, y, fmt


def _record(name: str, spec: QuantSpec, x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> None:
    """Record one write (its token rows only) in the statistics; nothing while a CUDA graph is
    captured (a host read is illegal there; :func:`vllm_qdq.stats.record_call` skips it too)."""
    from ..stats import record_call

    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    if not bool(valid.all()):
        x, y = x[valid], y[valid]
    xs, ys, fmt = _stats_view(x, y, spec.format)
    record_call(name, fmt, xs, ys, scale_rule=spec.scale_rule)


def _make_hook(orig: Callable[..., Any], name: str, spec: QuantSpec, stats: bool) -> Callable[..., Any]:
    mask = spans_tokens(spec.format)

    @functools.wraps(orig)
    def do_kv_cache_update(layer: torch.nn.Module, key: torch.Tensor, value: torch.Tensor,
                           kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> Any:
        n = slot_mapping.shape[0]
        k, v = key[:n], value[:n]
        valid = slot_mapping >= 0 if (mask or stats) else None
        kq = _qdq(k, spec, valid if mask else None)
        vq = _qdq(v, spec, valid if mask else None)
        if stats:
            assert valid is not None
            _record(f"{name}.k_cache", spec, k, kq, valid)
            _record(f"{name}.v_cache", spec, v, vq, valid)
        return orig(layer, kq, vq, kv_cache, slot_mapping)

    setattr(do_kv_cache_update, HOOK_ATTR, spec)
    return do_kv_cache_update


#: Query dtypes the query hook QDQs (an FP8 query, quantized by vLLM itself, passes unchanged).
_Q_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _qdq(x: torch.Tensor, spec: QuantSpec, valid: torch.Tensor | None) -> torch.Tensor:
    """:func:`vllm_qdq.numerics.kv.qdq_kv` with every option of ``spec``."""
    return qdq_kv(x, spec.format, spec.scale_rule, valid=valid, rounding=spec.rounding, seed=spec.seed,
                  rotate=spec.rotate)


def _query_rows(attn_metadata: Any, q3: torch.Tensor) -> torch.Tensor:
    """The query rows of real tokens: below ``num_actual_tokens`` and, where the metadata has a
    slot mapping, with a cache slot (``>= 0``). Under full CUDA graphs vLLM pads decode batches
    and sets ``num_actual_tokens`` to the padded count; the padding rows' slots are ``-1``, and
    the slot mapping is a persistent device buffer, so the mask stays right on graph replay."""
    t = q3.shape[0]
    valid = torch.arange(t, device=q3.device) < getattr(attn_metadata, "num_actual_tokens", t)
    sm = getattr(attn_metadata, "slot_mapping", None)
    if isinstance(sm, torch.Tensor) and sm.ndim == 1 and sm.shape[0] >= t and sm.device == q3.device:
        valid &= sm[:t] >= 0
    return valid


def _make_query_hook(orig: Callable[..., Any], name: str, spec: QuantSpec, stats: bool,
                     heads: int) -> Callable[..., Any]:
    mask = spans_tokens(spec.format)

    @functools.wraps(orig)
    def forward(layer: torch.nn.Module, query: torch.Tensor, key: Any, value: Any, kv_cache: Any,
                attn_metadata: Any, *args: Any, **kwargs: Any) -> Any:
        if attn_metadata is None or query.dtype not in _Q_DTYPES:  # warm-up, or vLLM's FP8 query
            return orig(layer, query, key, value, kv_cache, attn_metadata, *args, **kwargs)
        q3 = query if query.ndim == 3 else query.view(query.shape[0], heads, -1)
        valid = _query_rows(attn_metadata, q3) if (mask or stats) else None
        qq = _qdq(q3, spec, valid if mask else None)
        if stats:
            assert valid is not None
            _record(f"{name}.q", spec, q3, qq, valid)
        return orig(layer, qq.view(query.shape), key, value, kv_cache, attn_metadata, *args, **kwargs)

    setattr(forward, HOOK_ATTR, spec)
    return forward


def install_query(layer: torch.nn.Module, name: str, spec: QuantSpec, *, stats: bool = False) -> bool:
    """Hook ``layer.impl.forward`` (on the instance) to QDQ the attention query with ``spec``.

    The query ``[num_tokens, num_heads, head_size]`` is QDQ'd like keys and values
    (:func:`vllm_qdq.numerics.kv.qdq_kv`: blocks along the head dimension; rows past
    ``attn_metadata.num_actual_tokens`` masked out of scales that span tokens) on every forward
    that has attention metadata (not vLLM's warm-up), when it is bf16 / fp16 / fp32 (vLLM's own
    FP8 query, with an FP8 KV cache on backends that take one, passes unchanged). Returns
    whether a hook is in place now (the first hook wins)."""
    if not spec.enabled:
        return False
    impl = layer.impl
    current = impl.forward
    if getattr(current, HOOK_ATTR, None) is not None:
        return False
    impl.forward = _make_query_hook(current, name, spec, stats, impl.num_heads)
    return True


def install_layer(layer: torch.nn.Module, name: str, spec: QuantSpec, *, stats: bool = False) -> bool:
    """Hook ``layer.impl.do_kv_cache_update`` (on the instance) to QDQ what it writes with ``spec``.

    Returns whether a hook is in place now (False: ``spec`` is off, or the layer was hooked
    already, by the ``qdq`` method or an earlier call: the first hook wins). The caller checks
    :func:`layer_status` first.
    """
    if not spec.enabled:
        return False
    impl = layer.impl
    current = impl.do_kv_cache_update
    if getattr(current, HOOK_ATTR, None) is not None:
        return False
    impl.do_kv_cache_update = _make_hook(current, name, spec, stats)
    return True


class KVReport:
    """What :func:`plan_layer` decided per attention layer (a layer planned twice, as vLLM asks
    the quantization config twice, counts once), and which layer rules matched which layers."""

    def __init__(self) -> None:
        #: layer name -> ``str(spec)`` (hooked), ``"off"``, ``"no-cache"`` or ``"shared"``
        self.outcome: dict[str, str] = {}
        #: layer name -> ``str(spec)`` of the query hook, or ``"off"``
        self.q_outcome: dict[str, str] = {}
        self.rule_layers: dict[str, set[str]] = defaultdict(set)

    def hooked(self) -> list[str]:
        """Layers with a KV or query hook."""
        kv = [n for n, o in self.outcome.items() if o not in ("off", *NOTHING_TO_DO)]
        return kv + [n for n, o in self.q_outcome.items() if o != "off" and n not in kv]

    def summary(self) -> str:
        parts = []
        for label, table in (("", self.outcome), ("attn_q ", self.q_outcome)):
            groups: dict[str, list[str]] = defaultdict(list)
            for name, outcome in table.items():
                groups[outcome].append(name)
            if label and set(groups) == {"off"}:
                continue
            parts += [f"{label}{o}: {len(ns)} layer(s)" for o, ns in groups.items()]
        return "; ".join(parts) or "no attention layer"


def plan_layer(layer: torch.nn.Module, name: str, default: QuantSpec, q_default: QuantSpec,
               layers: Iterable[LayerRule], report: KVReport, *, stats: bool) -> None:
    """Resolve one attention layer's KV and query specs, check they can be applied, hook them.

    Raises:
        ConfigError: a spec is on for a layer it cannot reach (the message names the layer, the
            reason and a layer rule that leaves it out).
    """
    layers = tuple(layers)
    _plan_query(layer, name, q_default, layers, report, stats=stats)
    spec, rule = spec_for(name, default, layers)
    if rule is not None:
        report.rule_layers[rule.pattern].add(name)
    status = layer_status(layer)
    if status in NOTHING_TO_DO:
        report.outcome[name] = status
        return
    if not spec.enabled:
        report.outcome[name] = "off"
        return
    fused = fused_write_passes()
    if status == "ok" and fused:
        status = (f"the compile pass(es) {fused} write the cache in a fused RoPE kernel; turn them off "
                  f"(-cc.pass_config.{fused[0]}=false)")
    if status != "ok":
        raise ConfigError(
            f"kv_cache={spec} reaches attention layer {name!r}, whose cache writes cannot be QDQ'd: "
            f"{status}; leave it out with a layer rule such as "
            f'{{"pattern": "{name}", "kv_cache": "off"}}'
        )
    _check_rotation(spec, layer, name, "kv_cache")
    install_layer(layer, name, spec, stats=stats)
    report.outcome[name] = str(spec)


def _check_rotation(spec: QuantSpec, layer: torch.nn.Module, name: str, key: str) -> None:
    """A rotation block must divide the layer's head size (or pad): checked at start-up."""
    if spec.rotate is None:
        return
    from ..numerics.rotation import check_length

    try:
        check_length(spec.rotate, layer.impl.head_size, f"{key} of attention layer {name!r} (head size)")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _plan_query(layer: torch.nn.Module, name: str, default: QuantSpec, layers: tuple[LayerRule, ...],
                report: KVReport, *, stats: bool) -> None:
    from vllm.model_executor.layers.attention.attention import Attention

    spec, rule = spec_for(name, default, layers, "attn_q")
    if rule is not None and rule.attn_q is not None:
        report.rule_layers[rule.pattern].add(name)
    if not spec.enabled:
        report.q_outcome[name] = "off"
        return
    if not isinstance(layer, Attention):
        raise ConfigError(
            f"attn_q={spec} reaches attention layer {name!r}, whose query cannot be QDQ'd: "
            f"{type(layer).__name__} is not covered (MLA splits its query into latent and RoPE parts); "
            f'leave it out with a layer rule such as {{"pattern": "{name}", "attn_q": "off"}}'
        )
    _check_rotation(spec, layer, name, "attn_q")
    install_query(layer, name, spec, stats=stats)
    report.q_outcome[name] = str(spec)


def install_model(model: torch.nn.Module, cfg: QDQConfig) -> KVReport:
    """The plugin's KV and query QDQ on a built model: every attention layer of ``model`` gets
    ``cfg.kv_cache`` / ``cfg.attn_q`` or its layer rule's spec (layers the ``qdq`` method hooked
    keep theirs).

    Raises:
        ConfigError: a layer that cannot take its spec (:func:`plan_layer`), or a layer rule with
            a ``kv_cache`` or ``attn_q`` key that matched no attention layer.
    """
    from vllm.model_executor.layers.attention.attention import Attention
    from vllm.model_executor.layers.attention.mla_attention import MLAAttention

    report = KVReport()
    for name, mod in model.named_modules():
        if isinstance(mod, Attention | MLAAttention):
            label = getattr(mod, "layer_name", None) or name
            plan_layer(mod, label, cfg.kv_cache, cfg.attn_q, cfg.layers, report, stats=bool(cfg.stats_dir))
    unmatched = [r.pattern for r in cfg.layers
                 if (r.kv_cache is not None or r.attn_q is not None) and not report.rule_layers.get(r.pattern)]
    if unmatched:
        names = sorted(report.outcome)
        raise ConfigError(
            f"kv_cache / attn_q layer rule(s) {unmatched} matched no attention layer of this model; "
            f"attention layers: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
        )
    return report


def install_plugin_hook(cfg: QDQConfig) -> bool:
    """With the plugin on and a KV spec anywhere in ``cfg``: wrap vLLM's
    ``BaseModelLoader.create_model`` so that each model this process builds gets
    :func:`install_model` right after construction (before weights load and before
    torch.compile). Idempotent (the settings of the latest call are used). Returns whether KV
    QDQ is configured at all."""
    specs = [cfg.kv_cache, cfg.attn_q, *(s for r in cfg.layers for s in (r.kv_cache, r.attn_q) if s is not None)]
    if not any(s.enabled for s in specs):
        return False
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    current = BaseModelLoader.create_model
    if getattr(current, _LOADER_ATTR, None) is not None:
        setattr(current, _LOADER_ATTR, cfg)
        return True

    @functools.wraps(current)
    def create_model(self: Any, *args: Any, **kwargs: Any) -> torch.nn.Module:
        from ..errors import reported

        model = current(self, *args, **kwargs)
        settings = getattr(create_model, _LOADER_ATTR)
        try:
            report = install_model(model, settings)
        except ConfigError as e:
            raise reported(e) from None
        if settings.stats_dir:
            from ..stats import enable

            enable(in_worker=True)
        from ..log import ensure_log_handler

        ensure_log_handler()
        logger.info("vllm-qdq: KV-cache QDQ (plugin): %s", report.summary())
        return model

    setattr(create_model, _LOADER_ATTR, cfg)
    BaseModelLoader.create_model = create_model
    return True
