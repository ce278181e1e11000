"""KV-cache QDQ without an engine: the numerics (:mod:`vllm_qdq.numerics.kv`), the ``kv_cache``
settings (validation, layer rules, the method's run config, compile-cache digests), the hook on a
real vLLM CPU attention impl, and the coverage table against vLLM 0.30's attention backends."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from vllm_qdq.config import ConfigError, LayerRule, QuantSpec, config_from_dict
from vllm_qdq.numerics.formats import FORMATS
from vllm_qdq.numerics.kv import KV_FORMATS, check_kv_format, kv_format_problem, qdq_kv, spans_tokens
from vllm_qdq.numerics.qdq import quantize_dequantize

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _kv(t: int = 7, h: int = 3, d: int = 64, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(t * 100 + h * 10 + d)
    x = torch.randn(t, h, d, generator=g) * torch.logspace(-2, 1, h).view(1, h, 1)
    return x.to(dtype)


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", [f for f in KV_FORMATS if f in FORMATS])
def test_table_formats_run_along_the_head_dimension(fmt: str, dtype: torch.dtype) -> None:
    """Every table format: exactly quantize_dequantize along the last axis of [T, H, D]."""
    x = _kv(dtype=dtype)
    y = qdq_kv(x, fmt)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y, quantize_dequantize(x, fmt, axis=-1))
    assert not torch.equal(y, x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_head_fp8_is_one_per_tensor_scale_per_head(dtype: torch.dtype) -> None:
    """fp8_e4m3_per_head: each KV head of the write is an independent per-tensor FP8 QDQ
    (amax/448 over that head's tokens and dims), computed here head by head."""
    x = _kv(dtype=dtype)
    y = qdq_kv(x, "fp8_e4m3_per_head")
    assert y.dtype == dtype and y.shape == x.shape
    for h in range(x.shape[1]):
        assert torch.equal(y[:, h], quantize_dequantize(x[:, h].contiguous(), "fp8_e4m3_per_tensor"))
    # heads with different ranges get different scales: not the whole write's scale
    assert not torch.equal(y, quantize_dequantize(x, "fp8_e4m3_per_tensor"))


@pytest.mark.parametrize("fmt", ["fp8_e4m3_per_tensor", "fp8_e4m3_per_head", "nvfp4", "mxfp4", "fp8_e4m3_per_token"])
def test_padded_rows_never_enter_a_scale(fmt: str) -> None:
    """Rows with ``valid`` false (CUDA-graph padding, slot -1) do not change the QDQ of the token
    rows, whatever they hold: the token rows equal the QDQ of the token rows alone."""
    x = _kv()
    valid = torch.tensor([True, True, False, True, False, True, True])
    x[~valid] = 1e4  # garbage that would dominate any amax
    y = qdq_kv(x, fmt, valid=valid)
    assert torch.equal(y[valid], qdq_kv(x[valid], fmt))
    assert spans_tokens(fmt) == (fmt in ("fp8_e4m3_per_tensor", "fp8_e4m3_per_head", "nvfp4"))


def test_kv_format_checks_name_the_value_and_the_accepted_ones() -> None:
    assert "off" not in KV_FORMATS and "fp8_e4m3_per_head" in KV_FORMATS
    assert not [f for f in KV_FORMATS if f.endswith("_per_channel")]
    p = kv_format_problem("fp8_e4m3_per_channel")
    assert p is not None and "fp8_e4m3_per_token" in p
    with pytest.raises(ValueError, match=r"'bogus'.*accepted: off, mxfp4"):
        check_kv_format("bogus", "floor")
    with pytest.raises(ValueError, match="scale_rule='ceil'"):
        check_kv_format("fp8_e4m3_per_head", "ceil")
    check_kv_format("mxfp4", "rceil")
    with pytest.raises(ValueError, match=r"\[num_tokens, num_kv_heads, head_size\]"):
        qdq_kv(torch.zeros(4, 64), "mxfp4")
    x = _kv()
    assert qdq_kv(x, "off") is x


# ----------------------------------------------------------------------------- settings


def test_kv_cache_settings_parse_and_validate() -> None:
    cfg = config_from_dict({"kv_cache": {"format": "mxfp8_e4m3", "scale_rule": "rceil"},
                            "layers": [{"pattern": "model.layers.1.*", "kv_cache": "off"},
                                       {"pattern": "re:.*layers\\.0\\..*", "kv_cache": "fp8_e4m3_per_head"}]})
    assert cfg.kv_cache == QuantSpec("mxfp8_e4m3", "rceil")
    assert cfg.layers[0].kv_cache == QuantSpec("off") and cfg.layers[1].kv_cache == QuantSpec("fp8_e4m3_per_head")
    assert "kv_cache=mxfp8_e4m3/rceil" in cfg.summary()
    assert config_from_dict({}).kv_cache == QuantSpec("off")
    assert config_from_dict({"kv_cache": None}).kv_cache == QuantSpec("off")
    for bad, msg in [({"kv_cache": "fp8_e4m3_per_channel"}, "kv_cache: 'fp8_e4m3_per_channel' is a per-output"),
                     ({"kv_cache": "nope"}, "kv_cache: 'nope' is not a KV-cache format; accepted: off, "),
                     ({"kv_cache": {"format": "nvfp4", "scale_rule": "ceil"}}, "kv_cache: scale_rule='ceil'"),
                     ({"kv_cache": {"format": "mxfp4", "block": 16}}, r"kv_cache: unknown key\(s\) \['block'\]"),
                     ({"kv_cache": 4}, "kv_cache must be a JSON object"),
                     ({"layers": [{"pattern": "x", "kv_cache": "int4"}]}, r"layers\[0\].kv_cache: 'int4'")]:
        with pytest.raises(ConfigError, match=msg):
            config_from_dict(bad)


def test_attn_q_settings_parse_validate_and_reach_the_digests() -> None:
    from vllm_qdq.activation.compile_cache import factor_value, method_factor_value
    from vllm_qdq.activation.kv_cache import spec_for
    from vllm_qdq.method.policy import settings_from_run

    cfg = config_from_dict({"attn_q": "mxfp8_e4m3", "layers": [{"pattern": "a.*", "attn_q": "off"}]})
    assert cfg.attn_q == QuantSpec("mxfp8_e4m3") and cfg.layers[0].attn_q == QuantSpec("off")
    assert spec_for("a.attn", cfg.attn_q, cfg.layers, "attn_q") == (QuantSpec("off"), cfg.layers[0])
    assert spec_for("a.attn", cfg.kv_cache, cfg.layers, "kv_cache") == (QuantSpec("off"), None)
    assert "attn_q=mxfp8_e4m3" in cfg.summary()
    with pytest.raises(ConfigError, match="attn_q: 'fp8_e4m3_per_channel' is a per-output"):
        config_from_dict({"attn_q": "fp8_e4m3_per_channel"})
    assert len({factor_value(config_from_dict(d, enabled=True)) for d in ({}, {"attn_q": "mxfp4"})}) == 2
    s = settings_from_run({"attn_q": "nvfp4"}, config_from_dict({}))
    assert s.attn_q == QuantSpec("nvfp4") and "attn_q=nvfp4" in s.summary()
    assert method_factor_value(s, None) != method_factor_value(settings_from_run({}, config_from_dict({})), None)


def test_kv_cache_changes_the_plugin_digest() -> None:
    """The plugin's compile-cache factor changes with the KV spec and with a KV layer rule."""
    from vllm_qdq.activation.compile_cache import factor_value

    values = {factor_value(config_from_dict(d, enabled=True)) for d in (
        {}, {"kv_cache": "nvfp4"}, {"kv_cache": "mxfp4"}, {"kv_cache": {"format": "mxfp4", "scale_rule": "even"}},
        {"kv_cache": "mxfp4", "layers": [{"pattern": "a", "kv_cache": "off"}]})}
    assert len(values) == 5


def test_method_run_config_kv_cache_overrides_and_reaches_the_digest() -> None:
    from vllm_qdq.activation.compile_cache import method_factor_value
    from vllm_qdq.method.policy import settings_from_run

    base = config_from_dict({"kv_cache": "nvfp4"})
    assert settings_from_run(None, base).kv_cache == QuantSpec("nvfp4")
    s = settings_from_run({"kv_cache": "fp8_e4m3_per_token"}, base)
    assert s.kv_cache == QuantSpec("fp8_e4m3_per_token") and "kv_cache=fp8_e4m3_per_token" in s.summary()
    assert settings_from_run({"kv_cache": "off"}, base).kv_cache == QuantSpec("off")
    with pytest.raises(ConfigError, match="qdq quantization_config: kv_cache: 'bogus'"):
        settings_from_run({"kv_cache": "bogus"}, base)
    digests = {method_factor_value(settings_from_run(r, config_from_dict({})), None)
               for r in ({}, {"kv_cache": "nvfp4"}, {"kv_cache": "mxfp4"})}
    assert len(digests) == 3


def test_layer_rules_decide_the_kv_spec() -> None:
    from vllm_qdq.activation.kv_cache import spec_for

    default = QuantSpec("nvfp4")
    rules = (LayerRule("model.layers.0.*", act=QuantSpec("mxfp8_e4m3")),
             LayerRule("model.layers.1.*", kv_cache=QuantSpec("mxfp4")),
             LayerRule("model.layers.2.*", skip=True),
             LayerRule("model.layers.*", kv_cache=QuantSpec("off")))
    assert spec_for("model.layers.0.self_attn.attn", default, rules) == (default, None)  # first match, no kv key
    assert spec_for("model.layers.1.self_attn.attn", default, rules) == (QuantSpec("mxfp4"), rules[1])
    assert spec_for("model.layers.2.self_attn.attn", default, rules) == (QuantSpec("off"), rules[2])
    assert spec_for("model.layers.3.self_attn.attn", default, rules) == (QuantSpec("off"), rules[3])
    assert spec_for("lm_head", default, rules) == (default, None)


# ----------------------------------------------------------------------------- the hook on a real impl


def test_hook_on_the_cpu_impl_writes_the_qdq_and_nothing_else() -> None:
    """vLLM's real CPU attention impl: the hooked ``do_kv_cache_update`` writes exactly what the
    unhooked one writes given the reference KV QDQ of the inputs; slot -1 rows are not written."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl
    from vllm_qdq.activation.kv_cache import HOOK_ATTR, install_layer

    h, d, bs = 2, 32, 32
    impl = CPUAttentionBackendImpl(4, d, d ** -0.5, h, None, None, "auto", None, "decoder", None)
    layer = torch.nn.Module()
    layer.impl, layer._k_scale_float, layer._v_scale_float = impl, 1.0, 1.0
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    layer.isa = _get_attn_isa(torch.float32, bs, d)
    key, value = _kv(6, h, d), _kv(6, h, d) * 3
    slots = torch.tensor([3, 40, -1, 7, 33, 2])
    valid = slots >= 0
    expected = torch.zeros(3, h, bs, 2 * d)
    type(impl).do_kv_cache_update(impl, layer, qdq_kv(key, "nvfp4", valid=valid), qdq_kv(value, "nvfp4", valid=valid),
                                  expected, slots)
    raw = torch.zeros_like(expected)
    type(impl).do_kv_cache_update(impl, layer, key, value, raw, slots)
    assert install_layer(layer, "model.layers.0.self_attn.attn", QuantSpec("nvfp4"))
    assert getattr(impl.do_kv_cache_update, HOOK_ATTR) == QuantSpec("nvfp4")
    assert not install_layer(layer, "again", QuantSpec("mxfp4"))  # the first hook wins
    got = torch.zeros_like(expected)
    impl.do_kv_cache_update(layer, key, value, got, slots)
    assert torch.equal(got, expected)
    assert not torch.equal(got, raw)


def test_layer_status_of_real_vllm_classes() -> None:
    """MLA / other attention classes are refused by name; a CPU impl without the hook point is
    named; a spec reaching such a layer stops start-up with a skip rule to copy."""
    from vllm_qdq.activation.kv_cache import KVReport, layer_status, plan_layer

    class NotAttention(torch.nn.Module):
        pass

    status = layer_status(NotAttention())
    assert "NotAttention is not covered" in status and "concat_and_cache_mla" in status
    with pytest.raises(ConfigError, match=r"kv_cache=mxfp4/floor reaches attention layer 'm.attn'.*\"kv_cache\": \"off\""):
        plan_layer(NotAttention(), "m.attn", QuantSpec("mxfp4"), QuantSpec("off"), (), KVReport(), stats=False)
    report = KVReport()
    plan_layer(NotAttention(), "m.attn", QuantSpec("off"), QuantSpec("off"), (), report, stats=False)  # off: no error
    assert report.outcome == {"m.attn": "off"} and report.hooked() == []


# ----------------------------------------------------------------------------- coverage table


def _backend_sources() -> list[Path]:
    import vllm

    root = Path(vllm.__file__).parent
    return [*sorted((root / "v1" / "attention" / "backends").rglob("*.py")),
            *sorted((root / "model_executor" / "layers" / "attention").rglob("*.py")),
            *sorted((root / "model_executor" / "models").glob("whisper*.py"))]


def test_coverage_table_names_every_cache_writer_of_vllm() -> None:
    """Every class of vLLM 0.30's attention code that defines its own ``do_kv_cache_update``
    is in COVERED or LEFT_OUT, and every backend that writes inside its forward
    (``forward_includes_kv_cache_update = True``, or an override dict saying so) is in LEFT_OUT."""
    from vllm_qdq.activation.kv_cache import COVERED, LEFT_OUT

    writers, in_forward = set(), set()
    for path in _backend_sources():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "do_kv_cache_update":
                    writers.add(node.name)
                if (isinstance(item, ast.AnnAssign | ast.Assign) and "forward_includes_kv_cache_update" in ast.unparse(item)
                        and ast.unparse(item).rstrip().endswith("True")):
                    in_forward.add(node.name)
    assert "CPUAttentionBackendImpl" in writers and "FlashAttentionImpl" in writers  # the scan works
    missing = sorted(w for w in writers if w not in COVERED and w not in LEFT_OUT)
    assert not missing, f"attention impls with their own cache write in neither COVERED nor LEFT_OUT: {missing}"
    backends_in_forward = {"HpcAttentionBackend": "HpcAttentionImpl"}
    for cls in in_forward - {"AttentionBackend"}:  # the abstract default
        assert backends_in_forward.get(cls, cls) in LEFT_OUT, cls
    # the override dicts of cross-attention and Whisper's causal attention
    assert "CrossAttention" in LEFT_OUT and "WhisperCausalAttentionWithBlockPoolingImpl" in LEFT_OUT
    assert not set(COVERED) & set(LEFT_OUT)
    json.dumps(COVERED)


def test_hook_records_k_and_v_statistics_of_the_token_rows() -> None:
    """With statistics on, a write is recorded as ``<layer>.k_cache`` / ``.v_cache``: the token
    rows only (slot -1 padding left out), the QDQ the cache got; per-head FP8 as per-channel FP8
    of the [heads, tokens * head_size] view."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl, _get_attn_isa
    from vllm_qdq import stats
    from vllm_qdq.activation.kv_cache import install_layer

    h, d = 2, 32
    calls: list[tuple[str, torch.Tensor, torch.Tensor, str]] = []
    stats.set_hook(lambda name, x, y, fmt: calls.append((name, x, y, fmt)))
    try:
        for fmt, stat_fmt in (("mxfp4", "mxfp4"), ("fp8_e4m3_per_head", "fp8_e4m3_per_channel")):
            calls.clear()
            impl = CPUAttentionBackendImpl(4, d, d ** -0.5, h, None, None, "auto", None, "decoder", None)
            layer = torch.nn.Module()
            layer.impl, layer._k_scale_float, layer._v_scale_float = impl, 1.0, 1.0
            layer.isa = _get_attn_isa(torch.float32, 32, d)
            assert install_layer(layer, "m.attn", QuantSpec(fmt), stats=True)
            key, value = _kv(4, h, d), _kv(4, h, d) * 2
            slots = torch.tensor([5, -1, 6, 7])
            impl.do_kv_cache_update(layer, key, value, torch.zeros(1, h, 32, 2 * d), slots)
            assert [(c[0], c[3]) for c in calls] == [("m.attn.k_cache", stat_fmt), ("m.attn.v_cache", stat_fmt)]
            valid = slots >= 0
            for (_, x, y, _), raw in zip(calls, (key, value), strict=True):
                want_x = raw[valid]
                want_y = qdq_kv(raw, fmt, valid=valid)[valid]
                if fmt == "fp8_e4m3_per_head":
                    want_x, want_y = (t.transpose(0, 1).reshape(h, -1) for t in (want_x, want_y))
                assert torch.equal(x, want_x) and torch.equal(y, want_y)
                assert torch.equal(y, quantize_dequantize(x, stat_fmt))  # the recorder re-quantizes alike
    finally:
        stats.set_hook(None)


# ----------------------------------------------------------------------------- issue-18 options


def test_rotated_kv_is_rotate_qdq_unrotate_along_the_head_dimension() -> None:
    """``rotate``: each head vector becomes ``R^T QDQ(R k)`` (the table's rotated QDQ along the
    head dimension), so attention scores are those of the rotated system: ``q . k_sim =
    (R q) . QDQ(R k)`` up to fp32 rounding."""
    from vllm_qdq.numerics.rotation import Rotation, hadamard_signs, rotate_rows

    rot = Rotation("hadamard", 32, 3, False)
    k = _kv(6, 2, 64)
    ks = qdq_kv(k, "mxfp4", rotate=rot)
    assert torch.equal(ks, quantize_dequantize(k, "mxfp4", axis=-1, rotate=rot))
    assert not torch.equal(ks, qdq_kv(k, "mxfp4"))
    signs = hadamard_signs(rot, 64)
    rk = rotate_rows(k.reshape(-1, 64), rot, signs)
    q = torch.randn(12, 64)
    lhs = (q * ks.reshape(-1, 64)).sum(-1)
    rhs = (rotate_rows(q, rot, signs) * quantize_dequantize(rk, "mxfp4")).sum(-1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-5, atol=1e-5)
    # stochastic rounding is keyed by its seed
    a = qdq_kv(k, "mxfp4", rounding="stochastic", seed=1)
    assert torch.equal(a, qdq_kv(k, "mxfp4", rounding="stochastic", seed=1))
    assert not torch.equal(a, qdq_kv(k, "mxfp4", rounding="stochastic", seed=2))


def test_kv_options_are_validated_at_start_up() -> None:
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl
    from vllm_qdq.activation.kv_cache import KVReport, plan_layer

    cfg = config_from_dict({"kv_cache": {"format": "nvfp4", "rotate": {"kind": "hadamard", "block": 64}},
                            "attn_q": {"format": "mxfp4", "rounding": "stochastic", "seed": 5}})
    assert str(cfg.kv_cache) == "nvfp4+hadamard64" and cfg.attn_q.seed == 5
    for bad, msg in [({"kv_cache": {"format": "fp8_e4m3_per_head", "rotate": {"kind": "hadamard", "block": 32}}},
                      "'fp8_e4m3_per_head' takes no rotate / rounding options"),
                     ({"kv_cache": {"format": "fp8_e4m3_per_token", "rounding": "stochastic"}},
                      "rounding='stochastic' does not apply to format 'fp8_e4m3_per_token'"),
                     ({"attn_q": {"format": "mxfp4", "rotate": {"kind": "hadamard", "block": 48}}},
                      r"attn_q.rotate.block=48"),
                     ({"kv_cache": {"format": "mxfp4", "seed": -1}}, r"kv_cache.seed=-1")]:
        with pytest.raises(ConfigError, match=msg):
            config_from_dict(bad)
    # vLLM's real Attention layer (CPU backend): a block that does not divide its head size stops
    # start-up, naming the layer; one that does is hooked
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.attention.attention import Attention

    with set_current_vllm_config(VllmConfig()):
        layer = Attention(4, 32, 32 ** -0.5, num_kv_heads=2, prefix="m.attn")
    assert isinstance(layer.impl, CPUAttentionBackendImpl)
    with pytest.raises(ConfigError, match=r"kv_cache of attention layer 'm.attn' \(head size\): K=32 is not a multiple"):
        plan_layer(layer, "m.attn", cfg.kv_cache, QuantSpec("off"), (), KVReport(), stats=False)
    report = KVReport()
    ok = config_from_dict({"kv_cache": {"format": "nvfp4", "rotate": {"kind": "hadamard", "block": 32}}}).kv_cache
    plan_layer(layer, "m.attn", ok, cfg.attn_q, (), report, stats=False)
    assert report.outcome == {"m.attn": "nvfp4+hadamard32"} and report.q_outcome == {"m.attn": str(cfg.attn_q)}
