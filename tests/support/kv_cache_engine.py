"""Hooks of the KV-cache engine runs (``vllm_qdq.study.llm_run``'s file form: ``setup``,
``before_prompt``, ``after_prompt``): read back what the engine wrote to its paged cache.

The engine must run in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, one worker).

* ``setup`` (:func:`stash_models`) wraps ``BaseModelLoader.load_model`` so each model built
  here is kept (outside the plugin's ``create_model`` hook, so its attention layers are hooked
  by the time it is stashed).
* ``before_prompt`` (:func:`record_writes`): on the first call, each attention layer's current
  ``impl.do_kv_cache_update`` (the KV-QDQ hook, when on) is wrapped once more by a recorder,
  outermost, which keeps the *raw* keys / values the model produced, the slot mapping and the
  cache tensor of every write; then the records are cleared.
* ``after_prompt`` (:func:`check_writes`): for every write of the prompt, the cache rows at its
  slots (read back through the backend's own layout, found by probing its write:
  :func:`layout_map`) are compared with the expected values: the
  reference KV QDQ of the raw keys / values (:func:`vllm_qdq.numerics.kv.qdq_kv`, reference
  backend) for layers the test expects QDQ'd, the raw values themselves for the others. The
  expectation is the test's, not the code's: ``QDQ_TEST_KV_EXPECT`` = JSON ``{"default":
  "nvfp4" | {"format", "scale_rule"} | "off", "layers": {layer name: spec}, "q_default": ...,
  "q_layers": {...}}`` (``q_``: the attention query).
* The query: the impls' class ``forward`` (:data:`IMPLS`) is wrapped in ``setup`` (innermost: what the
  attention kernel receives) and each layer's instance ``forward`` in ``before_prompt``
  (outermost: the raw query); ``check_writes`` compares the two through the reference QDQ.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import torch
from vllm_qdq.numerics.kv import qdq_kv

MODELS: list[torch.nn.Module] = []
#: per attention forward with metadata: (layer name, raw query rows, query rows the kernel got)
QUERIES: list[tuple[str, torch.Tensor, torch.Tensor]] = []
#: the raw query of the forward running now (set by the outer recorder, read by the inner one)
_RAW_Q: list[tuple[str, torch.Tensor]] = []
#: per write: (layer name, raw key, raw value, slot mapping, impl, layer, cache tensor)
WRITES: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, Any, Any, torch.Tensor]] = []
_WRAPPED: set[int] = set()


def stash_models() -> None:
    """``setup``: keep every model ``BaseModelLoader.load_model`` returns in :data:`MODELS`."""
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    orig = BaseModelLoader.load_model
    if getattr(orig, "_kv_test_stash", False):
        return

    @functools.wraps(orig)
    def load_model(self: Any, *args: Any, **kwargs: Any) -> torch.nn.Module:
        model = orig(self, *args, **kwargs)
        MODELS.append(model)
        return model

    load_model._kv_test_stash = True  # type: ignore[attr-defined]
    BaseModelLoader.load_model = load_model
    # Innermost query recorders: the impls' own forward (class level, in place before any layer
    # is built, so the query hook wraps them): what the attention kernel receives.
    import importlib

    for module, cls_name in IMPLS:
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError, RuntimeError):  # a GPU backend on a CPU-only install
            continue
        cls.forward = _kernel_recorder(cls.forward)


#: Impl classes whose ``forward`` gets the innermost query recorder (the backends the tests use).
IMPLS: tuple[tuple[str, str], ...] = (
    ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionBackendImpl"),
    ("vllm.v1.attention.backends.flash_attn", "FlashAttentionImpl"),
    ("vllm.v1.attention.backends.triton_attn", "TritonAttentionImpl"),
)


def _kernel_recorder(kernel_forward: Any) -> Any:
    @functools.wraps(kernel_forward)
    def forward(self: Any, layer: Any, query: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if _RAW_Q:
            name, raw = _RAW_Q.pop()
            meta = args[3] if len(args) > 3 else kwargs.get("attn_metadata")
            n = meta.num_actual_tokens
            QUERIES.append((name, raw[:n], query[:n].clone()))
        return kernel_forward(self, layer, query, *args, **kwargs)

    return forward


def _probe(impl: Any, layer: Any, kv_cache: torch.Tensor, which: int, code: Any) -> torch.Tensor:
    """One block's flat memory after the backend's own, unhooked ``do_kv_cache_update``
    (the class's method) wrote ``code(t, h, d)`` to every slot ``t`` of block 0 of a zeroed
    one-block cache (keys for ``which`` 0, values for 1; the other tensor zero)."""
    scratch = torch.zeros((1, *kv_cache.shape[1:]), dtype=kv_cache.dtype, device=kv_cache.device)
    bs = _block_size(impl, kv_cache)
    h, d = impl.num_kv_heads, impl.head_size
    t_i, h_i, d_i = torch.meshgrid(torch.arange(bs), torch.arange(h), torch.arange(d), indexing="ij")
    x = code(t_i, h_i, d_i).to(kv_cache.dtype).to(kv_cache.device)
    zero = torch.zeros_like(x)
    slots = torch.arange(bs, device=kv_cache.device, dtype=torch.int64)
    key, value = (x, zero) if which == 0 else (zero, x)
    type(impl).do_kv_cache_update(impl, layer, key, value, scratch, slots)
    return scratch.reshape(-1)


def _block_size(impl: Any, kv_cache: torch.Tensor) -> int:
    """Slots per block: the cache's elements per block over 2 * heads * head size."""
    per_block = kv_cache[0].numel()
    return per_block // (2 * impl.num_kv_heads * impl.head_size)


_MAPS: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}


def layout_map(impl: Any, layer: Any, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Where the backend puts slot ``t``'s key / value element ``(h, d)`` inside a block's flat
    memory: ``(pos_k, pos_v)`` of shape ``[block_size, heads, head_size]``, and the block size.
    Found by writing probes (the slot, head and dim indices, each < 256 so exact in bf16)
    through the backend's own write: no layout is assumed but "blocks are dim 0"."""
    hit = _MAPS.get(id(impl))
    if hit is not None:
        return hit
    bs = _block_size(impl, kv_cache)
    h, d = impl.num_kv_heads, impl.head_size
    maps = []
    for which in (0, 1):
        t_m = _probe(impl, layer, kv_cache, which, lambda t, hh, dd: t + 1).long()
        h_m = _probe(impl, layer, kv_cache, which, lambda t, hh, dd: hh + 1).long()
        d_m = _probe(impl, layer, kv_cache, which, lambda t, hh, dd: dd + 1).long()
        written = (t_m > 0).nonzero().flatten()
        assert written.numel() == bs * h * d, f"probe wrote {written.numel()} of {bs * h * d} elements"
        pos = torch.full((bs, h, d), -1, dtype=torch.long, device=kv_cache.device)
        pos[t_m[written] - 1, h_m[written] - 1, d_m[written] - 1] = written
        assert int((pos < 0).sum()) == 0, "probe left positions unmapped"
        maps.append(pos)
    _MAPS[id(impl)] = (maps[0], maps[1], bs)
    return _MAPS[id(impl)]


def read_slots(impl: Any, layer: Any, kv_cache: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached keys and values of ``slots`` (``[n, heads, head_size]`` each)."""
    pos_k, pos_v, bs = layout_map(impl, layer, kv_cache)
    b, t = slots // bs, slots % bs
    rows = kv_cache[b].reshape(len(slots), -1)  # [n, per_block]: only the blocks needed
    k = torch.gather(rows, 1, pos_k[t].flatten(1)).view(len(slots), *pos_k.shape[1:])
    v = torch.gather(rows, 1, pos_v[t].flatten(1)).view(len(slots), *pos_v.shape[1:])
    return k, v


def _layers() -> list[tuple[str, torch.nn.Module]]:
    from vllm.model_executor.layers.attention.attention import Attention

    assert MODELS, "no model was stashed: run with setup=tests.support.kv_cache_engine:stash_models"
    return [(m.layer_name, m) for m in MODELS[-1].modules() if isinstance(m, Attention)]


def record_writes() -> None:
    """``before_prompt``: recorders in place (once per model), records cleared."""
    for name, layer in _layers():
        impl = layer.impl
        if id(impl) in _WRAPPED:
            continue
        _WRAPPED.add(id(impl))
        inner = impl.do_kv_cache_update

        def recorder(lyr: Any, key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                     slot_mapping: torch.Tensor, *, _inner: Any = inner, _name: str = name, _impl: Any = impl) -> Any:
            n = slot_mapping.shape[0]
            WRITES.append((_name, key[:n].clone(), value[:n].clone(), slot_mapping.clone(), _impl, lyr, kv_cache))
            return _inner(lyr, key, value, kv_cache, slot_mapping)

        impl.do_kv_cache_update = recorder
        outer = impl.forward

        def q_recorder(lyr: Any, query: torch.Tensor, key: Any, value: Any, kv_cache: Any, attn_metadata: Any,
                       *args: Any, _outer: Any = outer, _name: str = name, **kwargs: Any) -> Any:
            if attn_metadata is not None:
                _RAW_Q.append((_name, query.clone()))
            return _outer(lyr, query, key, value, kv_cache, attn_metadata, *args, **kwargs)

        impl.forward = q_recorder
    WRITES.clear()
    QUERIES.clear()


def _expected_spec(layer: str, prefix: str = "") -> tuple[str, dict[str, Any]]:
    """``(format, qdq_kv keyword arguments)`` the test expects for ``layer``."""
    from vllm_qdq.numerics.rotation import parse_rotation

    expect = json.loads(os.environ.get("QDQ_TEST_KV_EXPECT", '{"default": "off"}'))
    spec = expect.get(f"{prefix}layers", {}).get(layer, expect.get(f"{prefix}default", "off"))
    if isinstance(spec, str):
        return spec, {}
    kw: dict[str, Any] = {"scale_rule": spec.get("scale_rule", "floor"), "rounding": spec.get("rounding", "nearest"),
                          "seed": spec.get("seed")}
    if spec.get("rotate") is not None:
        kw["rotate"] = parse_rotation(spec["rotate"])
    return spec["format"], kw


def check_writes() -> dict[str, Any]:
    """``after_prompt``: ``kv_writes`` (writes seen), ``kv_rows`` (token rows checked),
    ``kv_mismatch`` (rows whose cached K or V differ from the expectation, by layer),
    ``kv_changed`` (rows where the expected value differs from the raw one, i.e. QDQ moved them)."""
    mismatch: dict[str, int] = {}
    rows = changed = 0
    for name, k, v, slots, impl, layer, kv_cache in WRITES:
        fmt, kw = _expected_spec(name)
        valid = slots >= 0
        got_k, got_v = read_slots(impl, layer, kv_cache, slots[valid].long())
        for raw, got in ((k, got_k), (v, got_v)):
            exp = raw if fmt == "off" else qdq_kv(raw, fmt, valid=valid, backend="reference", **kw)
            exp = exp[valid].to(got.dtype)
            bad = (got != exp).flatten(1).any(1)
            if int(bad.sum()):
                mismatch[name] = mismatch.get(name, 0) + int(bad.sum())
            changed += int((exp != raw[valid].to(got.dtype)).flatten(1).any(1).sum())
        rows += int(valid.sum())
    q_mismatch: dict[str, int] = {}
    q_changed = 0
    for name, raw, got in QUERIES:
        fmt, kw = _expected_spec(name, "q_")
        exp = raw if fmt == "off" else qdq_kv(raw, fmt, backend="reference", **kw)
        bad = int((got != exp).flatten(1).any(1).sum())
        if bad:
            q_mismatch[name] = q_mismatch.get(name, 0) + bad
        q_changed += int((exp != raw).flatten(1).any(1).sum())
    return {"kv_writes": len(WRITES), "kv_rows": rows, "kv_mismatch": mismatch, "kv_changed": changed,
            "q_calls": len(QUERIES), "q_mismatch": q_mismatch, "q_changed": q_changed}
