"""Issue 18 settings: the spec keys ``rotate``, ``rounding``, ``seed`` and the scale rule
``four_over_six`` / format ``nvfp4_e5m3``, per layer kind and per layer pattern, validated at
start-up, in the compile-cache digest; the plugin's wrappers and the ``qdq`` method's tensors
apply them (the plugin against vLLM's real ``vllm._custom_ops`` Python path with CPU stand-in
kernels, as tests/test_plugin_ops.py); W4A8 routes."""

from __future__ import annotations

import pytest
import torch
from vllm_qdq.activation import vllm_patch
from vllm_qdq.activation.compile_cache import factor_value, method_factor_value
from vllm_qdq.activation.trace import TRACER
from vllm_qdq.config import ConfigError, QuantSpec, config_from_dict
from vllm_qdq.method.policy import settings_from_run
from vllm_qdq.method.qdq_tensors import check_rotation, qdq_act, qdq_weight
from vllm_qdq.numerics.rotation import Rotation
from vllm_qdq.qdq import quantize_dequantize

from tests.support import plugin_cpu_ops as P

P.ensure_ops()
import vllm._custom_ops as ops  # noqa: E402

ROT = {"kind": "hadamard", "block": 32, "seed": 5}


def test_spec_keys_parse_per_kind_and_pattern() -> None:
    cfg = config_from_dict({
        "linear": {"format": "mxfp4", "rotate": ROT, "rounding": "stochastic", "seed": 9},
        "moe": {"format": "nvfp4", "scale_rule": "four_over_six"},
        "method": {"weight": {"format": "nvfp4_e5m3", "rotate": {"block": 128, "pad": True}}},
        "layers": [{"pattern": "model.layers.0.*", "act": {"format": "mxfp4", "rotate": {"block": 64}}}],
    })
    assert cfg.linear == QuantSpec("mxfp4", "floor", "stochastic", 9, Rotation("hadamard", 32, 5, False))
    assert cfg.moe == QuantSpec("nvfp4", "four_over_six")
    assert cfg.method.weight.rotate == Rotation(block=128, pad=True)
    assert cfg.layers[0].act.rotate == Rotation(block=64)
    assert str(cfg.linear) == "mxfp4/floor+hadamard32,seed=5+stochastic(seed=9)"
    assert str(cfg.moe) == "nvfp4/four_over_six"


@pytest.mark.parametrize(("obj", "msg"), [
    ({"linear": {"format": "mxfp4", "rotate": {"block": 48}}}, r"linear.rotate.block=48; accepted: 16, 32, 64, 128, 256"),
    ({"linear": {"format": "mxfp4", "rotate": {"block": 32, "kind": "walsh"}}}, r"linear.rotate.kind='walsh'; accepted: hadamard"),
    ({"linear": {"format": "mxfp4", "rotate": {"block": 32, "sign": 1}}}, r"linear.rotate: unknown key\(s\) \['sign'\]; accepted: kind, block, seed, pad"),
    ({"linear": {"format": "mxfp4", "rotate": {"block": 32, "pad": 1}}}, r"linear.rotate.pad=1; accepted: true, false"),
    ({"linear": {"format": "mxfp4", "rounding": "down"}}, r"linear.rounding='down'; accepted: nearest, stochastic"),
    ({"linear": {"format": "fp8_e4m3_per_token", "rounding": "stochastic"}},
     r"linear.rounding: rounding='stochastic' does not apply to format 'fp8_e4m3_per_token'; it applies to: mxfp4"),
    ({"linear": {"format": "mxfp4", "seed": -1}}, r"linear.seed=-1; accepted: null or an integer in \[0, 2\*\*63\)"),
    ({"linear": {"format": "mxfp4", "scale_rule": "four_over_six"}},
     r"scale_rule='four_over_six' does not apply to format 'mxfp4'.*applies to: nvfp4, nvfp4_e5m3"),
    ({"method": {"act": {"format": "nvfp4", "scale_rule": "rceil"}}}, r"method.act.scale_rule: .*accepted: floor, four_over_six"),
    ({"layers": [{"pattern": "x", "weight": {"format": "mxfp4", "rotate": {"block": 32, "seed": "a"}}}]},
     r"layers\[0\].weight.rotate.seed='a'"),
    ({"layers": [{"pattern": "", "skip": True}]}, r'layers\[0\].pattern="" must be a non-empty glob or "re:REGEX"'),
    ({"layers": [{"pattern": "re:", "skip": True}]}, r'layers\[0\].pattern="re:" must be a non-empty glob'),
    ({"layers": [{"pattern": "re:(", "skip": True}]}, r"layers\[0\].pattern='re:\(' is not a valid regex"),
    ({"layers": [{"pattern": 3, "skip": True}]}, r"layers\[0\].pattern=3 must be a non-empty glob"),
])
def test_bad_values_name_the_key_and_the_accepted_ones(obj: dict, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        config_from_dict(obj)


def test_run_config_takes_the_keys_and_names_them() -> None:
    base = config_from_dict({})
    s = settings_from_run({"quant_method": "qdq", "act": {"format": "mxfp4", "rotate": {"block": 16}}}, base)
    assert s.act.rotate == Rotation(block=16)
    with pytest.raises(ConfigError, match=r"qdq quantization_config: act.rotate.block=3"):
        settings_from_run({"act": {"format": "mxfp4", "rotate": {"block": 3}}}, base)


@pytest.mark.parametrize("change", [
    {"linear": {"format": "mxfp4", "rotate": {"block": 32}}},
    {"linear": {"format": "mxfp4", "rotate": {"block": 64}}},
    {"linear": {"format": "mxfp4", "rotate": {"block": 32, "seed": 1}}},
    {"linear": {"format": "mxfp4", "rounding": "stochastic"}},
    {"linear": {"format": "mxfp4", "rounding": "stochastic", "seed": 2}},
    {"moe": {"format": "nvfp4", "scale_rule": "four_over_six"}},
    {"moe": {"format": "nvfp4_e5m3"}},
    {"method": {"weight": {"format": "mxfp4", "rotate": {"block": 128}}}},
])
def test_every_option_changes_the_compile_cache_digest(change: dict) -> None:
    plain = config_from_dict({"linear": "mxfp4", "moe": "nvfp4"})
    cfg = config_from_dict({"linear": "mxfp4", "moe": "nvfp4", **change})
    assert cfg.digest() != plain.digest()
    assert factor_value(cfg) != factor_value(plain)
    other = config_from_dict({"linear": "mxfp4", "moe": "nvfp4", **change})
    assert other.digest() == cfg.digest()  # stable
    s1, s0 = settings_from_run(None, cfg), settings_from_run(None, plain)
    if s1 != s0:
        assert method_factor_value(s1, None) != method_factor_value(s0, None)


def test_build_table_applies_options_where_the_routed_format_takes_them() -> None:
    cfg = config_from_dict({
        "linear": {"format": "auto", "scale_rule": "four_over_six", "rounding": "stochastic", "seed": 4,
                   "rotate": {"block": 64}},
        "route": {"mxfp4": "mxfp4", "nvfp4": "nvfp4", "fp8": "fp8_e4m3_per_token", "int": "off"},
    })
    t = vllm_patch.build_table(cfg)
    rot = Rotation(block=64).encode()
    assert t[("linear", "mxfp4")] == ("mxfp4", "floor", "stochastic", 4, rot)
    assert t[("linear", "nvfp4")] == ("nvfp4", "four_over_six", "stochastic", 4, rot)
    assert t[("linear", "fp8")] == ("fp8_e4m3_per_token", "floor", "nearest", None, rot)
    assert t[("moe", "mxfp4")] == ("mxfp4", "floor", "nearest", None, None)


# ----------------------------------------------------------------------------- the plugin path


@pytest.fixture
def install():
    def go(obj: dict):
        return vllm_patch.install(config_from_dict(obj, enabled=True))

    yield go
    vllm_patch.uninstall()
    TRACER.reset()


def _case(kind: str) -> P.Case:
    return next(c for c in P.CASES if c.kind == kind and c.layer == "linear")


def _call(case: P.Case, x: torch.Tensor) -> None:
    args, kwargs = case.make(x)
    getattr(ops, case.wrapper)(*args, **kwargs)


def test_plugin_rotated_stochastic_activation(install) -> None:
    install({"linear": {"format": "mxfp4", "rotate": ROT, "rounding": "stochastic", "seed": 7}})
    case = _case("mxfp4")
    x = (torch.randn(5, 64) * torch.logspace(-2, 2, 64)).to(torch.bfloat16)
    _call(case, x)
    want = quantize_dequantize(x, "mxfp4", rotate=ROT, rounding="stochastic", seed=7)
    assert torch.equal(P.recorded_activation(case.wrapper), want)
    assert not torch.equal(want, quantize_dequantize(x, "mxfp4"))


def test_plugin_rotation_k_error_names_the_op(install) -> None:
    install({"linear": {"format": "mxfp4", "rotate": {"block": 128}}})
    case = _case("mxfp4")
    with pytest.raises(ConfigError, match=rf"activation QDQ in {case.wrapper}: rotate.block=128 does not divide .*K=64"):
        _call(case, torch.randn(3, 64, dtype=torch.bfloat16))


@pytest.mark.parametrize(("route", "kind", "want"), [
    ({"mxfp4": "mxfp8_e4m3"}, "mxfp4", "mxfp8_e4m3"),  # W4A8: MXFP4 weights, MXFP8 activations
    ({"nvfp4": "fp8_e4m3_per_token"}, "nvfp4", "fp8_e4m3_per_token"),  # NVFP4 weights, FP8 per-token
])
def test_w4a8_routes(install, route: dict, kind: str, want: str) -> None:
    install({"route": route})
    case = _case(kind)
    x = (torch.randn(5, 64) * torch.logspace(-2, 2, 64)).to(torch.bfloat16)
    _call(case, x)
    got = P.recorded_activation(case.wrapper)
    assert torch.equal(got, quantize_dequantize(x, want))
    assert not torch.equal(got, quantize_dequantize(x, kind))


# ----------------------------------------------------------------------------- the qdq method's tensors


def test_method_weight_is_rotated_qdq_per_shard() -> None:
    torch.manual_seed(0)
    w = torch.randn(48, 64)
    spec = QuantSpec("nvfp4", "four_over_six", "stochastic", 3, Rotation(block=32, seed=2))
    got = qdq_weight(w.clone(), spec, shards=[16, 32])
    kw = {"scale_rule": "four_over_six", "rounding": "stochastic", "seed": 3, "rotate": Rotation(block=32, seed=2)}
    want = torch.cat([quantize_dequantize(w[:16], "nvfp4", **kw), quantize_dequantize(w[16:], "nvfp4", **kw)])
    assert torch.equal(got, want)
    x = torch.randn(4, 64)
    assert torch.equal(qdq_act(x, spec), quantize_dequantize(x, "nvfp4", **kw))


def test_method_rotation_k_error_names_the_layer() -> None:
    spec = QuantSpec("mxfp4", rotate=Rotation(block=256))
    with pytest.raises(ConfigError, match=r"layer 'model.layers.0.mlp.down_proj' weight: rotate.block=256 does not divide K=192"):
        check_rotation(spec, 192, "layer 'model.layers.0.mlp.down_proj' weight")
    check_rotation(QuantSpec("mxfp4", rotate=Rotation(block=256, pad=True)), 192, "x")


def test_rotated_stochastic_wrapper_runs_inside_fullgraph_compile(install) -> None:
    """Dynamo inlines the wrapper with the options (the K check and the op's extra constant
    arguments): no graph break, one QDQ node, the same numbers as eager."""
    install({"linear": {"format": "mxfp4", "rotate": ROT, "rounding": "stochastic", "seed": 7}})
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    make = P._marlin("float4_e2m1f", torch.uint8, False)

    def fn(x):
        args, kw = make(x)
        return ops.marlin_gemm(*args, **kw) * 2

    torch._dynamo.reset()
    cfn = torch.compile(fn, fullgraph=True, backend=backend, dynamic=True)
    for m in (5, 7):
        x = (torch.randn(m, 64) * torch.logspace(-2, 2, 64)).to(torch.bfloat16)
        out = cfn(x)
        args, kw = make(quantize_dequantize(x, "mxfp4", rotate=ROT, rounding="stochastic", seed=7))
        assert torch.equal(out, vllm_patch._ORIGINALS["marlin_gemm"](*args, **kw) * 2)
    targets = [str(n.target).removesuffix(".default") for g in graphs for n in g.graph.nodes
               if n.op == "call_function"]
    assert targets.count("vllm_qdq.qdq") == 1
    torch._dynamo.reset()


@pytest.mark.parametrize(("obj", "msg"), [
    ({"linear": {"format": ["x"]}}, "linear.format=['x'] is not a known format; accepted: off, auto, mxfp4"),
    ({"route": {"mxfp4": ["x"]}}, "route.mxfp4=['x'] is not a known format; accepted: off, mxfp4"),
    ({"force": {}}, "force={} is not a known format; accepted: mxfp4"),
    ({"linear": {"format": "mxfp4", "scale_rule": ["x"]}}, "linear.scale_rule=['x']; accepted: floor"),
    ({"method": {"weight": {"format": {}}}}, "method.weight.format={} is not a known format; accepted: off, mxfp4"),
])
def test_values_of_the_wrong_json_type_are_config_errors(obj: dict, msg: str) -> None:
    """A list or object where a name belongs is a ConfigError naming it (not a TypeError)."""
    with pytest.raises(ConfigError) as e:
        config_from_dict(obj)
    assert str(e.value).startswith(msg), str(e.value)
