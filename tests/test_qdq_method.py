"""The ``qdq`` method without an engine: registration, settings precedence, format checks, weight QDQ."""

from __future__ import annotations

import json

import pytest
import torch
from vllm_qdq.config import ConfigError, QuantSpec, load_config
from vllm_qdq.method.policy import compact_names, moe_weight_format_problem, settings_from_run
from vllm_qdq.method.qdq_tensors import qdq_act, qdq_weight
from vllm_qdq.qdq import quantize_dequantize


@pytest.fixture(scope="module")
def qm():
    from vllm_qdq.method import quant_config

    return quant_config


def test_registered_by_plugin_even_when_off(qm, monkeypatch):
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, get_quantization_config
    from vllm_qdq import plugin

    monkeypatch.delenv("VLLM_QDQ", raising=False)
    plugin.register()
    plugin.register()  # idempotent
    assert QUANTIZATION_METHODS.count("qdq") == 1
    assert get_quantization_config("qdq") is qm.QDQQuantConfig


def test_defaults_are_mxfp4_floor(qm):
    s = settings_from_run(None, load_config({}))
    assert (s.weight, s.act) == (QuantSpec("mxfp4", "floor"), QuantSpec("mxfp4", "floor"))
    assert s.moe_weight is None and s.layers == ()


def test_precedence_run_over_env_over_defaults(qm):
    env = {
        "VLLM_QDQ_CONFIG": json.dumps(
            {
                "method": {"weight": "nvfp4", "act": {"format": "mxfp8_e4m3", "scale_rule": "even"}},
                "layers": [{"pattern": "lm_head", "skip": True}],
            }
        )
    }
    s = settings_from_run(None, load_config(env))
    assert s.weight.format == "nvfp4" and s.act == QuantSpec("mxfp8_e4m3", "even")
    s = settings_from_run({"quant_method": "qdq", "act": "off", "layers": []}, load_config(env))
    assert s.weight.format == "nvfp4"  # from the environment
    assert not s.act.enabled  # per-run wins: weight-only
    assert s.layers == ()  # per-run list replaces the environment's


@pytest.mark.parametrize(
    ("run", "needle"),
    [
        ({"weight": "mxfp5"}, "mxfp5"),
        ({"act": {"format": "mxfp4", "scale_rule": "round"}}, "round"),
        ({"bogus": 1}, "bogus"),
        ({"quant_method": "fp8"}, "fp8"),
        ({"weight": "fp8_e4m3_per_token"}, "fp8_e4m3_per_channel"),
        ({"act": "int8_per_channel"}, "int8_per_token"),
        ({"moe_weight": "fp8_e4m3_per_tensor"}, "fp8_e4m3_per_tensor"),
        ({"layers": [{"pattern": "x", "weight": "nope"}]}, "nope"),
    ],
)
def test_bad_run_config_names_the_value(qm, run, needle):
    with pytest.raises(ConfigError, match=needle):
        settings_from_run(run, load_config({}))


def test_moe_weight_formats(qm):
    accepted = [
        f
        for f in (
            "mxfp4",
            "mxfp8_e4m3",
            "nvfp4",
            "fp8_e4m3_per_channel",
            "int8_per_channel",
            "fp8_e4m3_per_group128",
            "off",
        )
    ]
    assert all(moe_weight_format_problem(f) is None for f in accepted)
    assert "per tensor" in moe_weight_format_problem("fp8_e4m3_per_tensor")
    assert moe_weight_format_problem("int8_per_token") is not None


def test_weight_qdq_runs_along_k_per_shard(qm):
    w = torch.randn(48, 64, dtype=torch.float32)
    w[:16] *= 100.0  # shard 0 has a much larger amax than shard 1
    got = qdq_weight(w, QuantSpec("nvfp4"), shards=[16, 32])
    want = torch.cat([quantize_dequantize(w[:16], "nvfp4"), quantize_dequantize(w[16:], "nvfp4")])
    assert torch.equal(got, want)
    assert not torch.equal(got, quantize_dequantize(w, "nvfp4"))  # one global scale would differ
    # block formats: along K, independent of shards; per-channel: one scale per output row
    assert torch.equal(
        qdq_weight(w, QuantSpec("mxfp4"), [16, 32]), quantize_dequantize(w, "mxfp4", axis=-1)
    )
    pc = qdq_weight(w, QuantSpec("fp8_e4m3_per_channel"))
    assert torch.equal(pc[3], quantize_dequantize(w[3:4], "fp8_e4m3_per_channel")[0])
    # experts [E, N, K]: each expert is its own tensor
    we = torch.randn(3, 8, 32)
    we[1] *= 50
    ge = qdq_weight(we, QuantSpec("nvfp4"))
    assert all(torch.equal(ge[e], quantize_dequantize(we[e], "nvfp4")) for e in range(3))


def test_act_qdq_is_a_compilable_op(qm):
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    want = quantize_dequantize(x, "mxfp4", scale_rule="floor")
    assert torch.equal(qdq_act(x, QuantSpec("mxfp4")), want)
    f = torch.compile(lambda t: qdq_act(t, QuantSpec("mxfp4")) * 2, backend="eager", fullgraph=True)
    assert torch.equal(f(x), want * 2)
    assert qdq_act(x, QuantSpec("off")) is x


def test_log_names_compact_indices_and_name_the_unnamed(qm):
    """The start-up log groups numbered layers; a layer vLLM built without a prefix shows as
    ``<unnamed>``, never as an empty name."""
    names = compact_names(["", "lm_head", "model.layers.0.mlp", "model.layers.1.mlp", "model.layers.0.attn"])
    assert names == ["<unnamed>", "lm_head", "model.layers.*.mlp (2)", "model.layers.0.attn"]


def test_compile_cache_key_follows_method_settings(qm, monkeypatch, tmp_path):
    """vLLM's compile-cache key (``vllm.envs.compile_factors()``) changes with the method's
    environment settings and with statistics on/off while the plugin is disabled: vLLM's own
    key holds only ``quantization='qdq'``, and ``VLLM_QDQ_CONFIG`` / ``VLLM_QDQ_STATS`` entered it
    only through the plugin's factors, so a graph compiled with other formats (or with the
    ``qdq`` op where statistics need ``qdq_stats``) could be loaded from the cache."""
    import vllm.envs as envs
    from vllm_qdq import stats
    from vllm_qdq.activation.compile_cache import METHOD_VAR

    for var in ("VLLM_QDQ", "VLLM_QDQ_CONFIG", "VLLM_QDQ_STATS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(envs, "environment_variables", dict(envs.environment_variables))
    monkeypatch.setattr(stats, "enable", lambda **kw: True)  # no worker hooks in the test process

    def key(**env: str) -> str:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        qm.QDQQuantConfig()._worker_setup()
        return envs.compile_factors()[METHOD_VAR]

    base = key()
    assert key() == base  # deterministic
    fp8 = key(VLLM_QDQ_CONFIG=json.dumps({"method": {"act": "mxfp8_e4m3"}}))
    with_stats = key(VLLM_QDQ_STATS=str(tmp_path / "stats"))
    assert len({base, fp8, with_stats}) == 3
