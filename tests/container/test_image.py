"""Container tests of the built image on a real Docker engine (docker-py).

CPU mode (CI here: the image on the CPU stand-in base) or GPU mode (the real image on
vllm/vllm-omni:v0.30.0, every container given the engine's GPUs); tests/container/conftest.py
chooses. Container starts are few (each `vllm serve` takes about a minute on 2 cores):
  1. baseline server, plugin off, started as `docker run IMAGE MODEL ...` (entrypoint adds `vllm serve`);
     `vllm bench serve` runs against it from a second container;
  2. QDQ server, VLLM_QDQ=1 (+ `--quantization qdq`), started as `docker run IMAGE vllm serve MODEL ...`;
  3. a bad VLLM_QDQ_CONFIG: the container must exit non-zero with the message;
  plus short non-server containers (entry points, plugin off/on patching, a bad sage3 setting, the
  smoke suite in the image; CPU mode: sage3 without CUDA, the suite's "no GPU" exit; GPU mode:
  activation QDQ under vLLM's defaults in the engine process, sage3's SDPA fallback on CUDA).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .conftest import REPO, gpu_run_kwargs

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
SMOKE = "/opt/vllm-qdq/smoke"


def _run_detached(client, image: str, args: list[str], env: dict[str, str], model: Path):
    return client.containers.run(
        image, args, detach=True, network_mode="host", ipc_mode="host", environment={**ENV, **env},
        volumes={str(model): {"bind": MODEL_IN, "mode": "ro"}}, labels={"vllm-qdq-test": "1"},
        **gpu_run_kwargs())


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


def _in_image(client, image: str, args: list[str], env: dict[str, str] | None = None, *,
              workdir: str | None = None, timeout: float = 300) -> tuple[int, str]:
    """Run ``args`` in a container of ``image`` (the session's GPUs in GPU mode); exit code and logs."""
    c = client.containers.run(image, args, detach=True, network_mode="host", ipc_mode="host",
                              environment={**ENV, **(env or {})}, labels={"vllm-qdq-test": "1"},
                              working_dir=workdir, **gpu_run_kwargs())
    try:
        code = c.wait(timeout=timeout)["StatusCode"]
        return code, _logs(c)
    finally:
        c.remove(force=True)


def _json_line(out: str, tag: str = "JSON") -> dict:
    """The payload of the last ``<tag>{...}`` line of a container's output."""
    found = [ln[len(tag):] for ln in out.splitlines() if ln.startswith(tag + "{")]
    assert found, f"no {tag} line in the output:\n{out[-6000:]}"
    return json.loads(found[-1])


# ---------------------------------------------------------------- (c) labels and entry points


def test_labels_and_build_info(docker_client, image: str, docker_gpu) -> None:
    labels = docker_client.images.get(image).labels
    series = subprocess.run(["bash", "scripts/apply-patches.sh", "--list"], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    want = ";".join(ln.replace(" ", "=") for ln in series.splitlines()) or "none"
    assert labels["io.vllm-qdq.patches"] == want
    assert labels["io.vllm-qdq.build-mode"] == ("online" if docker_gpu.on else "offline")
    code, out = _in_image(docker_client, image, ["cat", "/opt/vllm-qdq/build-info.json"])  # pass-through
    assert code == 0, out
    info = json.loads(out)
    assert labels["io.vllm-qdq.overlay.version"] == info["vllm_qdq"]
    assert info["versions"]["vllm"].startswith("0.30.0"), info
    if not docker_gpu.on:  # the CPU stand-in's torch; the real base's is whatever it ships (unchanged)
        assert info["versions"]["torch"].startswith("2.13.0"), info


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


@pytest.mark.usefixtures("cpu_mode_only")
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


def test_stale_cache_images_are_pruned(docker_client, image: str, base_image: str) -> None:
    """scripts/prune-image-cache.sh (run by build.sh) removes cache tags a newer build made stale and
    keeps the current image, its base, and study images built on it; QDQ_KEEP_OLD_IMAGES=1 keeps all.
    The stale tags here are extra names of an image that stays tagged, so no layer is removed."""
    img_id = docker_client.images.get(image).id.removeprefix("sha256:")
    (cache,) = [t for t in docker_client.images.get(image).tags if t.startswith("vllm-qdq-cache:")]
    donor = docker_client.images.get(base_image)
    stale = ["vllm-qdq-cache:stale-test", "vllm-qdq-study:0000-000000000000"]
    fresh = f"vllm-qdq-study:test-{img_id[:12]}"
    for ref in (*stale, fresh):
        donor.tag(*ref.split(":"))

    def prune(**env: str) -> None:
        subprocess.run(["bash", str(REPO / "scripts" / "prune-image-cache.sh"), cache, base_image],
                       check=True, env={**os.environ, **env})

    def tags() -> set[str]:
        return {t for i in docker_client.images.list() for t in i.tags}

    try:
        prune(QDQ_KEEP_OLD_IMAGES="1")
        assert set(stale) <= tags()
        prune()
        now = tags()
        assert not set(stale) & now, now
        assert {cache, image, base_image, fresh} <= now
    finally:
        for ref in (*stale, fresh):
            if ref in tags():
                docker_client.images.remove(ref)


# ---------------------------------------------------------------- plugin off / on, bad sage3 setting

#: Loads vLLM's general plugins the way every vLLM process does, then reports which covered
#: wrappers of vllm._custom_ops are ours and whether the compile-cache digest was added.
PATCH_CHECK = """
import json
import vllm._custom_ops as ops
import vllm.envs as envs
from vllm.plugins import load_general_plugins
load_general_plugins()
from vllm_qdq.activation.vllm_patch import COVERED, is_wrapped
print("JSON" + json.dumps({
    "present": [s.name for s in COVERED if hasattr(ops, s.name)],
    "wrapped": [s.name for s in COVERED if is_wrapped(getattr(ops, s.name, None))],
    "digest": "VLLM_QDQ_DIGEST" in envs.environment_variables}))
"""


def test_plugin_off_patches_nothing_on_patches_all(docker_client, image: str, docker_gpu) -> None:
    """VLLM_QDQ=0: vLLM's plugin loader runs our entry point and no wrapper of vllm._custom_ops is
    replaced, no compile-cache factor added; VLLM_QDQ=1 (the positive control): every covered wrapper
    present in this vLLM build is (on the GPU image: Marlin dense and MoE among them)."""
    res = {}
    for q in ("0", "1"):
        code, out = _in_image(docker_client, image, ["python3", "-c", PATCH_CHECK], {"VLLM_QDQ": q})
        assert code == 0, out[-4000:]
        res[q] = _json_line(out)
    off, on = res["0"], res["1"]
    assert off["present"], off
    assert off["wrapped"] == [] and off["digest"] is False, off
    assert on["wrapped"] == on["present"] and on["digest"] is True, on
    if docker_gpu.on:
        assert {"marlin_gemm", "moe_wna16_marlin_gemm"} <= set(on["wrapped"]), on


def test_bad_sage3_setting_exits_nonzero(docker_client, image: str) -> None:
    code, out = _in_image(docker_client, image, ["python3", "-c", (
        "from vllm_omni.plugins import load_omni_general_plugins\nload_omni_general_plugins()")],
        {"VLLM_SAGE3_TRITON": "1", "SAGE3_QUANT_FORMAT": "fp3"})
    assert code != 0, out[-4000:]
    assert "SAGE3_QUANT_FORMAT" in out and "fp3" in out and "mxfp4" in out, out[-4000:]


# ---------------------------------------------------------------- the GPU smoke suite in the image


def _smoke_entries() -> list[str]:
    lines = (ln.strip() for ln in (REPO / "docker" / "smoke-files.txt").read_text().splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _host_gpu_test_ids() -> list[str]:
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                        "tests/gpu"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return [ln for ln in r.stdout.splitlines() if "::" in ln]


def test_image_holds_the_smoke_suite(docker_client, image: str) -> None:
    """/opt/vllm-qdq/smoke holds every file of docker/smoke-files.txt, pytest and pytest-xdist import,
    and pytest collects there the same GPU tests as in this checkout."""
    entries = _smoke_entries()
    checks = " && ".join(f"test -e {SMOKE}/{e}" for e in entries)
    code, out = _in_image(docker_client, image, ["bash", "-c", (
        f"set -e; {checks}; python3 -c 'import pytest, xdist; print(\"PYTEST\", pytest.__version__, xdist.__version__)'; "
        "python3 -m pytest --collect-only -q -m gpu -p no:cacheprovider tests/gpu")], workdir=SMOKE, timeout=600)
    assert code == 0, out[-6000:]
    assert re.search(r"^PYTEST \d", out, re.M), out[-2000:]
    in_image = [ln for ln in out.splitlines() if "::" in ln and ln.startswith("tests/gpu/")]
    host = _host_gpu_test_ids()
    assert len(host) > 100, host[-5:]
    assert sorted(in_image) == sorted(host), (
        f"{len(in_image)} GPU tests collected in the image, {len(host)} here; only here: "
        f"{sorted(set(host) - set(in_image))[:10]}; only in the image: {sorted(set(in_image) - set(host))[:10]}")


@pytest.mark.usefixtures("cpu_mode_only")
def test_smoke_suite_without_gpu_says_so_and_fails(docker_client, image: str) -> None:
    """`bash scripts/gpu-smoke.sh kernels` in the CPU image exits non-zero (3) with the "no GPU" reason
    as its last line, records FAIL for the step, and the summary then exits non-zero too."""
    code, out = _in_image(docker_client, image, ["bash", "-c", (
        "bash scripts/gpu-smoke.sh kernels > /tmp/smoke.out 2>&1; rc=$?; cat /tmp/smoke.out; "
        "echo \"SMOKE_RC=$rc\"; cat gpu-smoke-out/kernels.result; "
        "bash scripts/gpu-smoke.sh summary; echo \"SUMMARY_RC=$?\"")], workdir=SMOKE)
    assert code == 0, out[-4000:]
    smoke, _, rest = out.partition("SMOKE_RC=")
    rc = int(rest.split()[0])
    last = [ln for ln in smoke.splitlines() if ln.strip()][-1]
    assert rc == 3, out[-4000:]
    assert last.startswith("gpu-smoke: no GPU:"), f"last line {last!r}:\n{out[-4000:]}"
    assert re.search(r"^FAIL .*no GPU", rest, re.M), rest
    assert re.search(r"^kernels\s+FAIL", rest, re.M) and "SUMMARY_RC=1" in rest, rest


# ---------------------------------------------------------------- GPU mode: the real image with a GPU

#: vllm_qdq.study.llm_run runs under vLLM's defaults (torch.compile + CUDA graphs: no enforce_eager)
ACTIVATION_SPEC = {"model": "/tmp/gptoss", "runs": [{"name": "defaults", "llm": {"moe_backend": "marlin"}}]}
TRACE = "[vllm_qdq trace]"


@pytest.mark.usefixtures("gpu_mode_only")
def test_gpu_activation_qdq_in_the_engine_process(docker_client, image: str) -> None:
    """A tiny gpt-oss with MXFP4 experts (vllm_qdq.study.tiny) on Marlin MoE, inside the image with
    the GPUs, QDQ on then off in one container (one engine on the GPU at a time): QDQ on prints trace
    lines for moe_wna16_marlin_gemm from the engine process (not the driver), QDQ off none, and
    the prompt logprobs differ."""
    script = (
        "set -e\n"
        "python3 -c 'from vllm_qdq.study.tiny import build_tiny_gptoss_mxfp4; "
        "build_tiny_gptoss_mxfp4(\"/tmp/gptoss\", hidden=256, experts=4, layers=2)'\n"
        "for q in 1 0; do echo \"=== VLLM_QDQ=$q\"; VLLM_QDQ=$q python3 -m vllm_qdq.study.llm_run \"$SPEC\" 2>&1; done\n")
    code, out = _in_image(docker_client, image, ["bash", "-c", script],
                          {"VLLM_QDQ_TRACE": "1", "SPEC": json.dumps(ACTIVATION_SPEC), "QDQ_TEST_GPU_UTIL": "0.3",
                           "VLLM_WORKER_MULTIPROC_METHOD": "spawn"},
                          workdir=SMOKE, timeout=1500)
    assert code == 0, out[-8000:]
    runs = {}
    for part in out.split("=== VLLM_QDQ=")[1:]:
        q = part[0]
        driver = int(re.search(r"^DRIVER_PID (\d+)", part, re.M).group(1))
        trace = [ln[ln.index(TRACE):] for ln in part.splitlines() if TRACE in ln]
        runs[q] = {"driver": driver, "trace": trace, **_json_line(part, "RESULT defaults ")}
    assert set(runs) == {"1", "0"}, out[-8000:]
    on, off = runs["1"], runs["0"]
    moe = [ln for ln in on["trace"] if "moe_wna16_marlin_gemm" in ln and "mxfp4" in ln]
    assert moe, "no trace line for moe_wna16_marlin_gemm with QDQ on:\n" + "\n".join(on["trace"][:20])
    pids = {int(re.search(r"pid=(\d+)", ln).group(1)) for ln in moe}
    assert pids - {on["driver"]}, f"trace lines only from the driver process {on['driver']}: {sorted(pids)}"
    assert not off["trace"], "QDQ off wrapped calls:\n" + "\n".join(off["trace"][:20])
    diff = max(abs(a - b) for ra, rb in zip(on["logprobs"], off["logprobs"], strict=True)
               for a, b in zip(ra, rb, strict=True))
    print(f"\nGPU activation QDQ: max |on - off| prompt logprob {diff:.4g}; {len(moe)} MoE trace lines")
    assert diff > 1e-3, f"QDQ on left the prompt logprobs unchanged (max diff {diff})"


#: sage3 in vllm-omni's SAGE_ATTN slot on CUDA: a cross-attention call (not taken by the kernel) falls
#: back to SDPA with one log line however often it comes; a self-attention call runs the kernel.
SAGE3_CHECK = """
import json, logging
import torch
lines = []
class Capture(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger("vllm_qdq").addHandler(Capture(logging.INFO))
logging.getLogger("vllm_qdq").setLevel(logging.INFO)
from vllm_omni.diffusion.attention.backends.registry import DiffusionAttentionBackendEnum as B
from vllm_omni.plugins import load_omni_general_plugins
load_omni_general_plugins()
impl = B.SAGE_ATTN.get_class().get_impl_cls()(num_heads=4, head_size=64, softmax_scale=0.125, causal=False,
                                              num_kv_heads=4, prefix="test")
g = torch.Generator().manual_seed(0)
def rnd(*shape):
    return torch.randn(*shape, generator=g).to("cuda", torch.bfloat16)
def sdpa(q, k, v):
    t = lambda x: x.transpose(1, 2)
    return t(torch.nn.functional.scaled_dot_product_attention(t(q), t(k), t(v), scale=0.125))
q, k, v = rnd(1, 64, 4, 64), rnd(1, 48, 4, 64), rnd(1, 48, 4, 64)
n0 = len(lines)
out, again = impl.forward(q, k, v, None), impl.forward(q, k, v, None)
fallback = [ln for ln in lines[n0:] if "sage3" in ln]
qs, ks, vs = rnd(1, 64, 4, 64), rnd(1, 64, 4, 64), rnd(1, 64, 4, 64)
n1 = len(lines)
y = impl.forward(qs, ks, vs, None)
torch.cuda.synchronize()
print("JSON" + json.dumps({
    "path": B.SAGE_ATTN.get_path(), "fallback_lines": fallback,
    "fallback_diff": (out.float() - sdpa(q, k, v).float()).abs().max().item(),
    "repeat_diff": (again.float() - out.float()).abs().max().item(),
    "kernel_lines": [ln for ln in lines[n1:] if "sage3" in ln], "kernel_finite": bool(torch.isfinite(y).all()),
    "kernel_vs_sdpa": (y.float() - sdpa(qs, ks, vs).float()).abs().max().item()}))
"""


@pytest.mark.usefixtures("gpu_mode_only")
def test_gpu_sage3_falls_back_to_sdpa_with_one_line(docker_client, image: str) -> None:
    code, out = _in_image(docker_client, image, ["python3", "-c", SAGE3_CHECK], {"VLLM_SAGE3_TRITON": "1"})
    assert code == 0, out[-6000:]
    r = _json_line(out)
    assert r["path"] == "vllm_qdq.sage3.backend.Sage3AttentionBackend", r
    assert len(r["fallback_lines"]) == 1 and "cross-attention" in r["fallback_lines"][0], r
    assert r["fallback_diff"] == 0.0 and r["repeat_diff"] == 0.0, r  # the fallback is SDPA itself
    assert r["kernel_lines"] == [] and r["kernel_finite"] and r["kernel_vs_sdpa"] > 0.0, r  # the kernel ran
