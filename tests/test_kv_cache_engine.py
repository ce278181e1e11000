"""KV-cache QDQ in the real vLLM CPU engine (marked ``slow``): the cache is read back.

Each engine runs in a subprocess (:mod:`vllm_qdq.study.llm_run`'s file form) with the engine in
that process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the hooks of
``tests/support/kv_cache_engine.py`` see the model: they record the raw keys / values each
attention layer hands to its backend's cache write (outside the QDQ hook), then read the cache
rows back through the backend's own layout and compare them, bit for bit, with the reference
KV QDQ of those raw values (:func:`vllm_qdq.numerics.kv.qdq_kv`, reference backend) for the
layers the *test* expects QDQ'd (``QDQ_TEST_KV_EXPECT``), with the raw values for the others.
Prefill and decode writes (4 generated tokens) are all checked. The attention query likewise:
the query the CPU attention kernel receives is compared with the reference QDQ of the raw one.

Runs: the plugin (``VLLM_QDQ=1``, ``kv_cache`` and ``attn_q`` in ``VLLM_QDQ_CONFIG``, layer rules
turning one layer's cache and the other's query off) eager and compiled (vLLM's default mode: the hook runs inside the opaque
``vllm::unified_kv_cache_update``), the plugin off (cache = raw values, no hook), the ``qdq``
method (weights and activations off, ``kv_cache`` from the run config), and a layer rule that
matches no attention layer (start-up error naming it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [[5, 10, 20, 30, 40, 50, 60, 70], [3, 100, 200, 150, 7, 9, 11, 250, 12]]
HOOKS = "tests.support.kv_cache_engine"
#: Smallest mean |logprob(KV QDQ) - logprob(off)| that shows the cache QDQ reached attention, nats.
MIN_EFFECT = 0.005

pytestmark = pytest.mark.slow


def _run(tmp: Path, tag: str, model: Path, runs: list[dict], env: dict[str, str], expect: dict) -> tuple[dict, str]:
    out = tmp / f"{tag}.json"
    e = dict(os.environ)
    e.pop("VLLM_QDQ_CONFIG", None)
    e.update(
        PYTHONPATH=os.pathsep.join([str(REPO / "overlay"), str(REPO), e.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CACHE_ROOT=str(tmp / f"vllm-cache-{tag}"),
        QDQ_TEST_KV_EXPECT=json.dumps(expect),
        **env,
    )
    spec = {"out": str(out), "prompts": PROMPTS,
            "sampling": {"temperature": 0.0, "max_tokens": 4, "prompt_logprobs": 0},
            "setup": f"{HOOKS}:stash_models", "before_prompt": f"{HOOKS}:record_writes",
            "after_prompt": f"{HOOKS}:check_writes",
            "runs": [{"name": r["name"], "llm": {"model": str(model), "dtype": "float32", "max_model_len": 128,
                                                 "enforce_eager": r.get("enforce_eager", True), "seed": 0,
                                                 **r.get("llm", {})}} for r in runs]}
    p = subprocess.run([sys.executable, "-m", "vllm_qdq.study.llm_run", json.dumps(spec)],
                       env=e, capture_output=True, text=True, timeout=900)
    log = p.stdout + p.stderr
    assert out.exists(), f"engine process failed (rc={p.returncode}):\n{log[-4000:]}"
    res = json.loads(out.read_text())
    for r in runs:
        assert r["name"] in res, f"run {r['name']} did not finish:\n{log[-4000:]}"
    return res, log


def _ok(res: dict, name: str) -> list[dict]:
    assert "error" not in res[name], res[name].get("traceback")
    return res[name]["results"]


def _check_cache(results: list[dict], *, qdq: bool, q_qdq: bool = False) -> None:
    for r in results:
        assert r["q_calls"] == 2 * 4, r  # every attention forward's query was seen, raw and at the kernel
        assert r["q_mismatch"] == {}, f"the query the kernel got differs from the expectation: {r['q_mismatch']}"
        assert (r["q_changed"] > 0) == q_qdq, r
        assert r["kv_writes"] == 2 * 4, r  # 2 layers x (prefill + 3 decode steps)
        assert r["kv_rows"] > 0
        assert r["kv_mismatch"] == {}, f"cached K/V differ from the expectation: {r['kv_mismatch']}"
        if qdq:
            assert r["kv_changed"] > 0, "the expected QDQ changed nothing: the check would not see a missing hook"
        else:
            assert r["kv_changed"] == 0


def _mean_diff(a: list[dict], b: list[dict]) -> float:
    d = [abs(x - y) for ra, rb in zip(a, b, strict=True)
         for x, y in zip(ra["prompt_logprobs"], rb["prompt_logprobs"], strict=True)]
    return sum(d) / len(d)


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    from vllm_qdq.study.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("kv_models") / "llama")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, llama: Path) -> list[dict]:
    """The plugin off (nothing in the environment): the cache holds the raw K/V."""
    tmp = tmp_path_factory.mktemp("kv_off")
    res, log = _run(tmp, "off", llama, [{"name": "off"}], {"VLLM_QDQ": "0"}, {"default": "off"})
    results = _ok(res, "off")
    _check_cache(results, qdq=False)
    assert "KV-cache QDQ" not in log
    return results


def test_plugin_kv_cache_qdq_eager_and_compiled(tmp_path: Path, llama: Path, baseline: list[dict]) -> None:
    """Plugin, NVFP4 keys/values with layer 1's cache off, MXFP4 queries with layer 0's off (layer
    rules): the cache of layer 0 holds the reference QDQ of what the model wrote, layer 1 the raw
    values; layer 1's attention kernel gets the reference QDQ of its query, layer 0's the raw one;
    eager and compiled alike; logprobs move away from the plugin-off run."""
    cfg = {"kv_cache": "nvfp4", "attn_q": "mxfp4",
           "layers": [{"pattern": "model.layers.1.self_attn.attn", "kv_cache": "off"},
                      {"pattern": "model.layers.0.*", "attn_q": "off"}]}
    expect = {"default": "nvfp4", "layers": {"model.layers.1.self_attn.attn": "off"},
              "q_default": "mxfp4", "q_layers": {"model.layers.0.self_attn.attn": "off"}}
    stats_dir = tmp_path / "stats"
    res, log = _run(tmp_path, "plugin", llama, [{"name": "eager"}, {"name": "compiled", "enforce_eager": False}],
                    {"VLLM_QDQ": "1", "VLLM_QDQ_CONFIG": json.dumps(cfg), "VLLM_QDQ_STATS": str(stats_dir)}, expect)
    eager, compiled = _ok(res, "eager"), _ok(res, "compiled")
    _check_cache(eager, qdq=True, q_qdq=True)
    _check_cache(compiled, qdq=True, q_qdq=True)
    assert re.search(r"KV-cache QDQ \(plugin\): nvfp4(/floor)?: 1 layer\(s\); off: 1 layer\(s\); "
                     r"attn_q off: 1 layer\(s\); attn_q mxfp4/floor: 1 layer\(s\)", log), log[-3000:]
    assert _mean_diff(eager, baseline) > MIN_EFFECT
    # Same model, same QDQ'd cache: compiled matches eager up to Inductor's fp32 reassociation.
    assert _mean_diff(eager, compiled) < 1e-3
    # The study's per-layer statistics: K and V of layer 0 (layer 1's cache is off), Q of layer 1
    # (layer 0's query is off), one call per served step: 2 runs x 2 prompts x 4 steps.
    from vllm_qdq.stats import load_stats

    got = {(k.op, k.fmt): k for k in load_stats(stats_dir)}
    a0, a1 = "model.layers.0.self_attn.attn", "model.layers.1.self_attn.attn"
    nv = next(f for (op, f) in got if op == f"{a0}.k_cache")
    assert set(got) == {(f"{a0}.k_cache", nv), (f"{a0}.v_cache", nv), (f"{a1}.q", "mxfp4")}, sorted(got)
    for k in got.values():
        assert k.calls == 2 * 2 * 4, k
        assert 5.0 < k.sqnr_db < 40.0, k  # 4-bit QDQ of random activations: ~10-20 dB


def test_method_kv_cache_qdq(tmp_path: Path, llama: Path, baseline: list[dict]) -> None:
    """The ``qdq`` method with weights and activations off and ``kv_cache`` per head FP8 from
    the run config (the plugin off): the cache holds the reference QDQ; logprobs move."""
    qc = {"quant_method": "qdq", "weight": "off", "act": "off", "kv_cache": "fp8_e4m3_per_head"}
    res, log = _run(tmp_path, "method", llama,
                    [{"name": "method", "llm": {"quantization": "qdq", "hf_overrides": {"quantization_config": qc}}}],
                    {"VLLM_QDQ": "0"}, {"default": "fp8_e4m3_per_head"})
    results = _ok(res, "method")
    _check_cache(results, qdq=True)
    assert "qdq KV-cache / attention-query QDQ: fp8_e4m3_per_head: 2 layer(s)" in log
    assert _mean_diff(results, baseline) > MIN_EFFECT / 10  # FP8 moves far less than NVFP4


def test_method_rotated_kv_and_query(tmp_path: Path, llama: Path, baseline: list[dict]) -> None:
    """Issue-18 options through the method's run config: random-Hadamard-32 MXFP4 keys / values
    (the cache holds ``R^T QDQ(R k)``) and a plain-Hadamard-32 MXFP4 query; both bit for bit
    against the reference, and the cache is not the unrotated MXFP4 QDQ."""
    kv = {"format": "mxfp4", "rotate": {"kind": "hadamard", "block": 32, "seed": 7}}
    q = {"format": "mxfp4", "rotate": {"kind": "hadamard", "block": 32}}
    qc = {"quant_method": "qdq", "weight": "off", "act": "off", "kv_cache": kv, "attn_q": q}
    run = [{"name": "rot", "llm": {"quantization": "qdq", "hf_overrides": {"quantization_config": qc}}}]
    res, log = _run(tmp_path, "rot", llama, run, {"VLLM_QDQ": "0"}, {"default": kv, "q_default": q})
    _check_cache(_ok(res, "rot"), qdq=True, q_qdq=True)
    assert "mxfp4/floor+hadamard32" in log, log[-3000:]
    # the same run checked against plain MXFP4: the rotation must show
    res2, _ = _run(tmp_path, "rot-vs-plain", llama, run, {"VLLM_QDQ": "0"}, {"default": "mxfp4", "q_default": q})
    assert all(r["kv_mismatch"] for r in _ok(res2, "rot")), "a rotated cache equal to the unrotated QDQ"
    assert _mean_diff(_ok(res, "rot"), baseline) > MIN_EFFECT


def test_kv_rule_matching_no_layer_stops_start_up(tmp_path: Path, llama: Path) -> None:
    """A ``kv_cache`` layer rule that matches no attention layer stops the plugin's start-up,
    naming the pattern and the attention layers there are."""
    cfg = {"kv_cache": "mxfp4", "layers": [{"pattern": "model.layers.*.mlp", "kv_cache": "off"}]}
    res, _ = _run(tmp_path, "bad", llama, [{"name": "bad"}],
                  {"VLLM_QDQ": "1", "VLLM_QDQ_CONFIG": json.dumps(cfg)}, {"default": "mxfp4"})
    err = res["bad"].get("error", "")
    assert "ConfigError" in err and "model.layers.*.mlp" in err and "model.layers.0.self_attn.attn" in err, err
