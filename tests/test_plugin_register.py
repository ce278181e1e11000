"""``vllm_qdq.plugin:register`` as vLLM loads it: entry point, settings validation, logging,
idempotency, disabled = untouched, and the compile-cache key (vLLM's own code computes it)."""

from __future__ import annotations

import json
import logging

import pytest
import vllm.envs as envs
import vllm.plugins as vplugins
from vllm.config.utils import hash_factors
from vllm_qdq import plugin
from vllm_qdq.activation import vllm_patch
from vllm_qdq.config import ConfigError

from tests.support import plugin_cpu_ops as P

P.ensure_ops()
import vllm._custom_ops as ops  # noqa: E402

QDQ_ENV = ("VLLM_QDQ", "VLLM_QDQ_CONFIG", "VLLM_QDQ_TRACE", "VLLM_QDQ_BACKEND", "VLLM_QDQ_STATS",
           "VLLM_QDQ_GRID_SYNC", "VLLM_MARLIN_MOE_QDQ_MODE")


@pytest.fixture
def clean(monkeypatch):
    """No QDQ variables set; plugin state, vLLM's loader flag and env-factor table restored."""
    for name in QDQ_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VLLM_PLUGINS", "qdq")  # only our entry point from vLLM's loader
    monkeypatch.setattr(plugin, "_logged", False)
    monkeypatch.setattr(vplugins, "plugins_loaded", False)
    saved = dict(envs.environment_variables)
    yield monkeypatch
    vllm_patch.uninstall()
    envs.environment_variables.clear()
    envs.environment_variables.update(saved)


def test_entry_point_found_by_vllm_loader(clean):
    found = vplugins.load_plugins_by_group(vplugins.DEFAULT_PLUGINS_GROUP)
    assert "qdq" in found
    assert found["qdq"] is plugin.register  # resolves to this package's register


def test_load_general_plugins_patches(clean, caplog):
    clean.setenv("VLLM_QDQ", "1")
    original = ops.marlin_gemm
    with caplog.at_level(logging.INFO, logger="vllm_qdq"):
        vplugins.load_general_plugins()
    assert vllm_patch.is_wrapped(ops.marlin_gemm) and ops.marlin_gemm.__wrapped__ is original
    lines = [r.getMessage() for r in caplog.records if r.name == "vllm_qdq" and r.levelno == logging.INFO]
    assert len(lines) == 1
    msg = lines[0]
    for s in ("activation QDQ enabled in pid", "marlin_gemm", "moe_wna16_marlin_gemm", "machete_mm",
              "route={'mxfp4': 'mxfp4', 'nvfp4': 'nvfp4', 'fp8': 'mxfp8_e4m3', 'int': 'off'}", "VLLM_QDQ_DIGEST"):
        assert s in msg, s
    # a second registration in the same process: no second wrapper, no second INFO line
    with caplog.at_level(logging.INFO, logger="vllm_qdq"):
        plugin.register()
    assert ops.marlin_gemm.__wrapped__ is original
    assert len([r for r in caplog.records if r.name == "vllm_qdq" and r.levelno == logging.INFO]) == 1


def test_disabled_leaves_everything_untouched(clean):
    before = {s.name: getattr(ops, s.name) for s in vllm_patch.COVERED}
    env_before = set(envs.environment_variables)
    clean.setenv("VLLM_QDQ", "0")
    clean.setenv("VLLM_QDQ_CONFIG", '{"force": "mxfp4"}')
    vplugins.load_general_plugins()
    assert {s.name: getattr(ops, s.name) for s in vllm_patch.COVERED} == before
    assert set(envs.environment_variables) == env_before


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ({"VLLM_QDQ": "maybe"}, ["VLLM_QDQ='maybe'", "accepted", "true"]),
        ({"VLLM_QDQ_CONFIG": '{"linear": {"format": "mxfp5"}}'}, ["linear.format='mxfp5'", "accepted", "mxfp4"]),
        ({"VLLM_QDQ_CONFIG": '{"moe": {"format": "mxfp4", "scale_rule": "up"}}'}, ["'up'", "floor, ceil"]),
        ({"VLLM_QDQ_CONFIG": '{"route": {"fp6": "mxfp4"}}'}, ["fp6", "accepted: mxfp4, nvfp4, fp8, int"]),
        ({"VLLM_QDQ_CONFIG": '{"force": "auto"}'}, ["force='auto'", "accepted"]),
        ({"VLLM_QDQ_CONFIG": '{"lineer": {}}'}, ["lineer", "accepted: linear, moe"]),
        ({"VLLM_QDQ_CONFIG": "/nonexistent/qdq.json"}, ["neither inline JSON nor an existing file"]),
        ({"VLLM_MARLIN_MOE_QDQ_MODE": "force_nvfp8"}, ["'force_nvfp8'", "FORCE_MXFP4"]),
        ({"VLLM_QDQ_BACKEND": "cuda"}, ["'cuda'", "auto, reference, triton"]),
        ({"VLLM_QDQ_GRID_SYNC": "always"}, ["VLLM_QDQ_GRID_SYNC='always'", "off, eager, on"]),
    ],
)
def test_bad_settings_stop_startup(clean, env, needles):
    clean.setenv("VLLM_QDQ", "1")
    for k, v in env.items():
        clean.setenv(k, v)
    original = ops.marlin_gemm
    with pytest.raises(ConfigError) as e:
        vplugins.load_general_plugins()  # vLLM does not swallow errors raised by register()
    for n in needles:
        assert n in str(e.value), (n, str(e.value))
    assert ops.marlin_gemm is original


def _key() -> str:
    """The environment part of vLLM's compile-cache key, computed by vLLM."""
    return hash_factors(envs.compile_factors())


def test_compile_cache_key_follows_settings(clean, tmp_path):
    without = _key()
    clean.setenv("VLLM_QDQ", "1")
    plugin.register()
    on_default = _key()
    assert on_default != without
    assert "VLLM_QDQ_DIGEST" in envs.compile_factors()
    clean.setenv("VLLM_QDQ_CONFIG", '{"route": {"fp8": "mxfp8_e5m2"}}')
    plugin.register()
    assert _key() not in (without, on_default)
    clean.delenv("VLLM_QDQ_CONFIG")
    plugin.register()
    assert _key() == on_default  # stable for equal settings
    # a settings file edited in place changes the key though the variable does not
    f = tmp_path / "qdq.json"
    f.write_text(json.dumps({"force": "mxfp4"}))
    clean.setenv("VLLM_QDQ_CONFIG", str(f))
    plugin.register()
    k1 = _key()
    f.write_text(json.dumps({"force": "nvfp4"}))
    plugin.register()
    assert _key() != k1
    # trace changes what Dynamo traces (the trace call), so it is part of the key too
    clean.setenv("VLLM_QDQ_TRACE", "1")
    plugin.register()
    assert _key() != k1
    # our variables are known to vLLM now: no "unknown VLLM_ variable" warning
    envs.validate_environ(hard_fail=True)
