"""Container tests of the built image on a real Docker engine (docker-py), CPU only.

Container starts are few (each `vllm serve` takes about a minute on 2 cores):
  1. baseline server, plugin off, started as `docker run IMAGE MODEL ...` (entrypoint adds `vllm serve`);
     `vllm bench serve` runs against it from a second container;
  2. QDQ server, VLLM_QDQ=1 (+ `--quantization qdq`), started as `docker run IMAGE vllm serve MODEL ...`;
  3. a bad VLLM_QDQ_CONFIG: the container must exit non-zero with the message;
  plus short non-server containers (entry points, sage3 fallback).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .conftest import REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PORT_BASE, PORT_QDQ = 18350, 18351
MODEL_IN = "/model"
PROMPT = "the quick brown fox"
SERVE_ARGS = ["--served-model-name", "tiny", "--max-model-len", "128", "--max-num-seqs", "4",
              "--enforce-eager", "--host", "127.0.0.1"]
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
# Log lines the plugin writes (logger "vllm_qdq"; vLLM prefixes engine-core lines "(EngineCore... pid=N)").
ENGINE_LINE = re.compile(r"\(EngineCore[^)]*\).*vllm[-_]qdq", re.IGNORECASE)
RESULTS: dict[str, dict] = {}


def _run_detached(client, image: str, args: list[str], env: dict[str, str], model: Path):
    return client.containers.run(
        image, args, detach=True, network_mode="host", ipc_mode="host", environment={**ENV, **env},
        volumes={str(model): {"bind": MODEL_IN, "mode": "ro"}}, labels={"vllm-qdq-test": "1"})


def _logs(container) -> str:
    return container.logs().decode(errors="replace")


def _wait_healthy(container, port: int, timeout: float = 420) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        container.reload()
        if container.status != "running":
            pytest.fail(f"server exited ({container.attrs['State']['ExitCode']}):\n{_logs(container)[-6000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(2)
    pytest.fail(f"no /health within {timeout}s:\n{_logs(container)[-6000:]}")


def _complete(port: int) -> dict:
    r = requests.post(f"http://127.0.0.1:{port}/v1/completions", timeout=120, json={
        "model": "tiny", "prompt": PROMPT, "max_tokens": 12, "temperature": 0.0, "logprobs": 1,
        "ignore_eos": True})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    return {"text": choice["text"], "logprobs": choice["logprobs"]["token_logprobs"],
            "tokens": choice["logprobs"]["tokens"]}


def _serve(client, image: str, args: list[str], env: dict[str, str], model: Path, port: int):
    c = _run_detached(client, image, args, env, model)
    try:
        _wait_healthy(c, port)
    except BaseException:
        c.remove(force=True)
        raise
    return c


def _in_image(client, image: str, args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    c = client.containers.run(image, args, detach=True, network_mode="host",
                              environment={**ENV, **(env or {})}, labels={"vllm-qdq-test": "1"})
    try:
        code = c.wait(timeout=300)["StatusCode"]
        return code, _logs(c)
    finally:
        c.remove(force=True)


# ---------------------------------------------------------------- (c) labels and entry points


def test_labels_and_build_info(docker_client, image: str) -> None:
    import subprocess

    labels = docker_client.images.get(image).labels
    series = subprocess.run(["bash", "scripts/apply-patches.sh", "--list"], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    want = ";".join(ln.replace(" ", "=") for ln in series.splitlines()) or "none"
    assert labels["io.vllm-qdq.patches"] == want
    assert labels["io.vllm-qdq.build-mode"] == "offline"
    code, out = _in_image(docker_client, image, ["cat", "/opt/vllm-qdq/build-info.json"])  # pass-through
    assert code == 0, out
    info = json.loads(out)
    assert labels["io.vllm-qdq.overlay.version"] == info["vllm_qdq"]
    assert info["versions"]["vllm"].startswith("0.30.0") and info["versions"]["torch"].startswith("2.13.0")


def test_entry_points_registered(docker_client, image: str) -> None:
    code, out = _in_image(docker_client, image, ["python3", "-c", (
        "from importlib.metadata import entry_points as e\n"
        "print({g: sorted(x.value for x in e(group=g)) for g in "
        "('vllm.general_plugins', 'vllm_omni.general_plugins')})")])
    assert code == 0, out
    assert "vllm_qdq.plugin:register" in out and "vllm_qdq.sage3.plugin:register_omni" in out


# ---------------------------------------------------------------- baseline server (plugin off)


@pytest.fixture(scope="class")
def baseline_server(docker_client, image: str, tiny_model: Path) -> Iterator:
    # `docker run IMAGE MODEL ...`: the entrypoint turns it into `vllm serve MODEL ...`.
    c = _serve(docker_client, image, [MODEL_IN, "--port", str(PORT_BASE), *SERVE_ARGS], {}, tiny_model,
               PORT_BASE)
    yield c
    c.remove(force=True)


class TestBaseline:
    def test_serves_and_completes(self, baseline_server) -> None:
        out = _complete(PORT_BASE)
        assert len(out["tokens"]) == 12
        RESULTS["baseline"] = out

    def test_plugin_off_nothing_patched(self, baseline_server) -> None:
        # The off path says "nothing patched" at DEBUG only (not shown at vLLM's default level), so
        # the check is that no process of the server logged the enabled line or any patch.
        logs = _logs(baseline_server)
        assert "activation QDQ enabled" not in logs, "plugin off, yet a process logged 'activation QDQ enabled'"
        assert not re.search(r"vllm[-_]qdq.*\bpatched\b(?!.*nothing)", logs.replace("nothing patched", ""))

    def test_vllm_bench_serve(self, docker_client, image: str, tiny_model: Path, baseline_server) -> None:
        c = _run_detached(docker_client, image, [
            "vllm", "bench", "serve", "--backend", "vllm", "--base-url", f"http://127.0.0.1:{PORT_BASE}",
            "--model", "tiny", "--tokenizer", MODEL_IN, "--dataset-name", "random",
            "--random-input-len", "8", "--random-output-len", "4", "--num-prompts", "4"], {}, tiny_model)
        try:
            code = c.wait(timeout=300)["StatusCode"]
            logs = _logs(c)
        finally:
            c.remove(force=True)
        assert code == 0, logs[-4000:]
        assert re.search(r"Successful requests:\s+4", logs), logs[-4000:]


# ---------------------------------------------------------------- QDQ server


@pytest.fixture(scope="class")
def qdq_server(docker_client, image: str, tiny_model: Path) -> Iterator:
    extra = ["--quantization", "qdq"]
    # `docker run IMAGE vllm serve MODEL ...`: passed through as given (vllm-omni's `vllm` command).
    c = _serve(docker_client, image, ["vllm", "serve", MODEL_IN, "--port", str(PORT_QDQ), *SERVE_ARGS, *extra],
               {"VLLM_QDQ": "1"}, tiny_model, PORT_QDQ)
    yield c
    c.remove(force=True)


class TestQDQ:
    def test_plugin_loads_in_engine_and_serves(self, qdq_server) -> None:
        logs = _logs(qdq_server)
        assert ENGINE_LINE.search(logs), f"no vllm-qdq line from the engine process:\n{logs[-6000:]}"
        # the server log names the quantized layers and their formats (qdq method start-up summary)
        assert re.search(r"vllm-qdq: qdq .*mxfp4.* -> \d+ layer\(s\)", logs), logs[-6000:]
        out = _complete(PORT_QDQ)
        assert len(out["tokens"]) == 12
        RESULTS["qdq"] = out

    def test_qdq_method_changes_outputs(self, qdq_server) -> None:
        assert "baseline" in RESULTS and "qdq" in RESULTS, "needs the baseline and QDQ completions above"
        base, qdq = RESULTS["baseline"], RESULTS["qdq"]
        print(f"baseline {base['text']!r}\nqdq      {qdq['text']!r}")
        assert base["logprobs"] != qdq["logprobs"], "qdq method left the greedy outputs unchanged"


# ---------------------------------------------------------------- (b) fallbacks and errors


def test_bad_config_exits_nonzero(docker_client, image: str, tiny_model: Path) -> None:
    c = _run_detached(docker_client, image, [MODEL_IN, "--port", "18352", *SERVE_ARGS],
                      {"VLLM_QDQ": "1", "VLLM_QDQ_CONFIG": '{"no_such_key": 1}'}, tiny_model)
    try:
        code = c.wait(timeout=300)["StatusCode"]
        logs = _logs(c)
    finally:
        c.remove(force=True)
    assert code != 0, logs[-4000:]
    assert "VLLM_QDQ_CONFIG" in logs and "no_such_key" in logs, logs[-4000:]


def test_sage3_without_cuda_keeps_in_tree_backend(docker_client, image: str) -> None:
    code, out = _in_image(docker_client, image, ["python3", "-c", (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from vllm_omni.plugins import load_omni_general_plugins\n"
        "from vllm_omni.diffusion.attention.backends.registry import DiffusionAttentionBackendEnum as B\n"
        "load_omni_general_plugins()\n"
        "print('SAGE_ATTN ->', B.SAGE_ATTN.get_path(), 'overridden', B.SAGE_ATTN.is_overridden())")],
        {"VLLM_SAGE3_TRITON": "1"})
    assert code == 0, out
    assert "overridden False" in out and "vllm_omni.diffusion" in out, out
    why = [ln for ln in out.splitlines() if "sage3" in ln.lower() and "cuda" in ln.lower()]
    assert len(why) == 1, f"expected one clear line saying why sage3 stays off:\n{out}"


def test_stale_cache_images_are_pruned(docker_client, image: str, cpu_base: str) -> None:
    """scripts/prune-image-cache.sh (run by build.sh) removes cache tags a newer build made stale and
    keeps the current image, its base, and study images built on it; QDQ_KEEP_OLD_IMAGES=1 keeps all.
    The stale tags here are extra names of an image that stays tagged, so no layer is removed."""
    img_id = docker_client.images.get(image).id.removeprefix("sha256:")
    (cache,) = [t for t in docker_client.images.get(image).tags if t.startswith("vllm-qdq-cache:")]
    donor = docker_client.images.get(cpu_base)
    stale = ["vllm-qdq-cache:stale-test", "vllm-qdq-study:0000-000000000000"]
    fresh = f"vllm-qdq-study:test-{img_id[:12]}"
    for ref in (*stale, fresh):
        donor.tag(*ref.split(":"))

    def prune(**env: str) -> None:
        subprocess.run(["bash", str(REPO / "scripts" / "prune-image-cache.sh"), cache, cpu_base],
                       check=True, env={**os.environ, **env})

    def tags() -> set[str]:
        return {t for i in docker_client.images.list() for t in i.tags}

    try:
        prune(QDQ_KEEP_OLD_IMAGES="1")
        assert set(stale) <= tags()
        prune()
        now = tags()
        assert not set(stale) & now, now
        assert {cache, image, cpu_base, fresh} <= now
    finally:
        for ref in (*stale, fresh):
            if ref in tags():
                docker_client.images.remove(ref)
