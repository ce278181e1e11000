"""compose.yaml / compose.cpu.yaml on a real Docker engine with the Compose v2 plugin.

* `docker compose config` validates every profile, GPU file alone and with the CPU override, and the
  resolved services carry what the study needs (GPU reservation, ipc: host, HF cache volume,
  healthchecks on /health, depends_on: service_healthy, profiles).
* `docker compose -f compose.yaml -f compose.cpu.yaml up`: make-model builds the tiny random model,
  both CPU servers become healthy, bench / eval / logprobs complete against them, and the report is
  written with non-empty tables and plots.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, _script

pytestmark = pytest.mark.docker

GPU = ["-f", str(REPO / "compose.yaml")]
CPU = [*GPU, "-f", str(REPO / "compose.cpu.yaml")]
PROFILES = ([], ["study"], ["diffusion"], ["study", "diffusion"])
SERVERS = {"serve-qdq", "serve-baseline"}
STUDY = {"bench", "eval", "logprobs", "report"}
DIFFUSION = {"serve-diffusion-sage3", "serve-diffusion-baseline"}
PNG = b"\x89PNG\r\n\x1a\n"
PROJECT = "vllm-qdq-study-test"
QDQ_PORT, BASELINE_PORT = 18441, 18442  # the study helper's range (18400-18499)


@pytest.fixture(scope="module")
def compose() -> list[str]:
    subprocess.run(["bash", str(REPO / "scripts" / "install-compose.sh")], check=True)
    return ["docker", "compose"]


def _config(compose: list[str], files: list[str], profiles: list[str], env: dict | None = None) -> dict:
    args = [*compose, *files]
    for p in profiles:
        args += ["--profile", p]
    r = subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, cwd=REPO)
    assert r.returncode == 0, f"docker compose {' '.join(args[2:])} config failed:\n{r.stderr}"
    return json.loads(r.stdout)


@pytest.mark.parametrize("profiles", PROFILES, ids=lambda p: "+".join(p) or "default")
def test_config_every_profile_gpu(compose: list[str], profiles: list[str]) -> None:
    cfg = _config(compose, GPU, profiles)
    want = set(SERVERS)
    if "study" in profiles:
        want |= STUDY
    if "diffusion" in profiles:
        want |= DIFFUSION
    services = cfg["services"]
    assert set(services) == want
    for name in want & (SERVERS | DIFFUSION):
        s = services[name]
        assert s["ipc"] == "host"
        (dev,) = s["deploy"]["resources"]["reservations"]["devices"]
        assert dev["capabilities"] == ["gpu"] and dev["driver"] == "nvidia"
        assert "/health" in " ".join(s["healthcheck"]["test"])
        assert any(v["target"] == "/root/.cache/huggingface" and v["type"] == "volume" for v in s["volumes"])
        assert "depends_on" not in s  # `docker compose up serve-qdq` starts that server alone
    if "study" in profiles:
        for name in ("bench", "eval", "logprobs"):
            deps = services[name]["depends_on"]
            assert deps["serve-qdq"]["condition"] == deps["serve-baseline"]["condition"] == "service_healthy"
        assert {d: c["condition"] for d, c in services["report"]["depends_on"].items()} == {
            "bench": "service_completed_successfully", "eval": "service_completed_successfully",
            "logprobs": "service_completed_successfully"}
    if "diffusion" in profiles:
        on, off = services["serve-diffusion-sage3"], services["serve-diffusion-baseline"]
        assert on["environment"]["VLLM_SAGE3_TRITON"] == "1"
        assert on["environment"]["DIFFUSION_ATTENTION_BACKEND"] == "SAGE_ATTN"
        assert off["environment"]["VLLM_SAGE3_TRITON"] == "0"
        assert "--omni" in on["command"] and "--omni" in off["command"]
    qdq = services["serve-qdq"]
    assert qdq["environment"]["VLLM_QDQ"] == "1" and qdq["environment"]["VLLM_QDQ_STATS"] == "/out/stats/qdq"
    assert services["serve-baseline"]["environment"]["VLLM_QDQ"] == "0"
    assert "--quantization qdq" in " ".join(qdq["command"])
    assert "--quantization" not in " ".join(services["serve-baseline"]["command"])


@pytest.mark.parametrize("profiles", PROFILES, ids=lambda p: "+".join(p) or "default")
def test_config_every_profile_cpu(compose: list[str], profiles: list[str]) -> None:
    cfg = _config(compose, CPU, profiles)
    services = cfg["services"]
    want = SERVERS | STUDY | {"make-model"} | (DIFFUSION if "diffusion" in profiles else set())
    assert set(services) == want
    for name, s in services.items():
        assert s.get("network_mode") == "host", name
        assert not s.get("ports"), name
        assert "deploy" not in s, name  # no GPU reservation on the CPU stand-in
    for name in SERVERS:
        assert services[name]["depends_on"]["make-model"]["condition"] == "service_completed_successfully"
        assert "--enforce-eager" not in " ".join(services[name]["command"]), name  # vLLM's default: compiled
    assert services["eval"]["environment"]["STUDY_TASKS"] == "local"


@pytest.mark.parametrize("files", [GPU, CPU], ids=["gpu", "cpu"])
def test_exposure_defaults_and_opt_ins(compose: list[str], files: list[str]) -> None:
    """Published ports bind to 127.0.0.1 unless QDQ_BIND_ADDR says otherwise (CPU: the servers' --host on
    the host network); VLLM_API_KEY reaches every server and every study client (empty when unset: vLLM
    then requires no key); each study server writes its log to /out/logs/serve-<name>.log for the report."""
    profiles = ["study", "diffusion"]
    servers = SERVERS | DIFFUSION
    for env, addr, key in (({"QDQ_BIND_ADDR": "", "VLLM_API_KEY": ""}, "127.0.0.1", ""),
                           ({"QDQ_BIND_ADDR": "0.0.0.0", "VLLM_API_KEY": "k-123"}, "0.0.0.0", "k-123")):
        services = _config(compose, files, profiles, env)["services"]
        for name in servers | STUDY:
            assert services[name]["environment"]["VLLM_API_KEY"] == key, (name, env)
        if files == GPU:
            for name in servers:
                (port,) = services[name]["ports"]
                assert port["host_ip"] == addr, (name, port)
        else:
            for name in SERVERS:
                assert f"--host {addr} " in " ".join(services[name]["command"]), name
        for name in SERVERS:
            label = name.removeprefix("serve-")
            cmd = " ".join(services[name]["command"])
            assert f"tee /out/logs/serve-{label}.log" in cmd and " exec vllm serve " in cmd, cmd
            assert any(v["target"] == "/out" for v in services[name]["volumes"]), name


def test_compose_files_parse_as_yaml() -> None:
    for f in ("compose.yaml", "compose.cpu.yaml"):
        text = (REPO / f).read_text()
        assert yaml.load(text, Loader=_ResetLoader), f


def test_build_contexts_hold_what_their_dockerfiles_copy() -> None:
    """Every `build:` in the compose files names a context that holds each COPY source of its Dockerfile
    (compose builds the study image on a GPU host; CI builds it with scripts/build-study-image.sh)."""
    seen = 0
    for f in ("compose.yaml", "compose.cpu.yaml"):
        doc = yaml.load((REPO / f).read_text(), Loader=_ResetLoader)
        blocks = [v.get("build") for v in {**doc.get("services", {}), **{k: v for k, v in doc.items()
                                                                          if k.startswith("x-")}}.values()
                  if isinstance(v, dict) and isinstance(v.get("build"), dict)]
        for b in blocks:
            ctx = REPO / b["context"]
            dockerfile = ctx / b.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), (f, b)
            for line in dockerfile.read_text().splitlines():
                if line.startswith("COPY ") and "--from" not in line:
                    for src in line.split()[1:-1]:
                        assert (ctx / src).exists(), f"{f}: {src} is not in build context {b['context']}"
                        seen += 1
    assert seen, "no COPY checked: the compose files lost their study build"


def _image_bytes(ref: str) -> int:
    r = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", ref], capture_output=True, text=True)
    assert r.returncode == 0, f"docker image inspect {ref}: {r.stderr}"
    return int(r.stdout.strip())


def _assert_disk_for_containers(image: str, study_image: str) -> str:
    """Fail early, with the figures, when the engine's disk cannot hold the study's containers.

    Under the vfs storage driver every container is two full copies of its image (the init layer
    and the writable layer). The peak is make-model + both servers (3 containers of the image), or
    both servers + one study container (the vfs path of test_cpu_study_up). Returns the driver.

    A full disk does not fail where it should: in a run of 2026-12-01 every streamed request to the
    QDQ server (the one that writes VLLM_QDQ_STATS) failed while ~17 GB of orphaned vfs layers
    filled the disk; the stats writer raised OSError into the forward pass then (it now logs the
    error and goes on), and a later run there ran out of disk creating a study container.
    """
    info = subprocess.run(["docker", "info", "-f", "{{.Driver}} {{.DockerRootDir}}"], capture_output=True,
                          text=True, check=True).stdout.split()
    driver, root = info[0], info[1]
    copies = 2 if driver == "vfs" else 0
    img, study = _image_bytes(image), _image_bytes(study_image)
    need = int(copies * max(3 * img, 2 * img + study) * 1.1) + (2 << 30)  # + 2 GiB for logs and results
    free = shutil.disk_usage(root).free
    assert free >= need, (
        f"{root} ({driver}) has {free / 2**30:.1f} GiB free; the CPU compose study needs about "
        f"{need / 2**30:.1f} GiB for its containers. Remove stopped containers and unused images "
        f"(docker container prune; docker image prune) or give the engine more disk.")
    return driver


class _ResetLoader(yaml.SafeLoader):
    """SafeLoader that accepts compose's `!reset` tag."""


_ResetLoader.add_constructor("!reset", lambda loader, node: None)


@pytest.mark.slow
@pytest.mark.usefixtures("cpu_mode_only")  # the CPU stand-in image (tests/container/conftest.py)
@pytest.mark.timeout(2400, func_only=True)  # the image builds in the fixtures have their own budget
def test_cpu_study_up(compose: list[str], image: str, tmp_path: Path) -> None:
    """The CPU study on the real engine: `docker compose -f compose.yaml -f compose.cpu.yaml up`.

    With a layer-sharing storage driver (overlay2, what scripts/docker-engine.sh starts where an
    overlay mount works) this is the documented command itself: `up -d` creates every service and
    follows the depends_on chain (make-model, both servers healthy, bench, eval, logprobs, report),
    then `wait report` gives the report's exit code. Under vfs every container is two full copies
    of its ~5 GB image and seven at once do not fit a small disk, so there `up -d --wait` starts
    make-model and the servers, and each study service runs with `docker compose run --rm --no-deps`
    in the order of that chain (the same services, one study container at a time).
    """
    study_image = _script("build-study-image.sh", image)
    driver = _assert_disk_for_containers(image, study_image)
    out = tmp_path / "study"
    out.mkdir()
    env = {**os.environ, "QDQ_IMAGE": image, "QDQ_STUDY_IMAGE": study_image, "STUDY_OUT": str(out),
           "CPU_QDQ_PORT": str(QDQ_PORT), "CPU_BASELINE_PORT": str(BASELINE_PORT), "CPU_NUM_PROMPTS": "8"}
    base = [*compose, *CPU, "-p", PROJECT]

    def dc(*args: str, check: bool = True, timeout: float = 1200) -> subprocess.CompletedProcess:
        r = subprocess.run([*base, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        if check:
            logs = subprocess.run([*base, "logs", "--no-color", "--tail", "40"], env=env, cwd=REPO,
                                  capture_output=True, text=True).stdout
            assert r.returncode == 0, (f"docker compose {' '.join(args)}: exit {r.returncode}\n{r.stdout[-4000:]}\n"
                                       f"{r.stderr[-4000:]}\n--- logs ---\n{logs[-6000:]}")
        return r

    def states() -> dict[str, tuple]:
        ps = [json.loads(line) for line in dc("ps", "-a", "--format", "json").stdout.splitlines() if line.strip()]
        return {r["Service"]: (r["State"], r.get("ExitCode"), r.get("Health", "")) for r in ps}

    timings: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        if driver != "vfs":
            dc("up", "-d", "--no-build", timeout=2400)  # returns once report has started
            timings["up (through report start)"] = time.monotonic() - t0
            dc("wait", "report", check=False, timeout=600)  # its exit code is checked in the states below
            timings["report"] = time.monotonic() - t0 - timings["up (through report start)"]
            state = states()
            for svc in ("make-model", *sorted(STUDY)):
                assert state[svc][:2] == ("exited", 0), state
        else:
            dc("up", "-d", "--no-build", "--wait", "--wait-timeout", "900", "serve-qdq", "serve-baseline")
            timings["servers healthy"] = time.monotonic() - t0
            state = states()
            assert state["make-model"][:2] == ("exited", 0), state
            dc("rm", "-f", "make-model")
            for svc in ("bench", "eval", "logprobs", "report"):
                t1 = time.monotonic()
                dc("run", "--rm", "--no-deps", svc)
                timings[svc] = time.monotonic() - t1
        for svc in SERVERS:
            assert state[svc][0] == "running" and state[svc][2] == "healthy", state
    finally:
        # keep every service's log with the results (`down -v` removes the containers and their logs)
        (out / "logs").mkdir(exist_ok=True)
        (out / "logs" / "compose.log").write_text(dc("logs", "--no-color", check=False).stdout)
        dc("down", "-v", "--remove-orphans", "-t", "20", check=False)
        print("\n[compose] CPU study timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()),
              file=sys.stderr)
    text = (out / "report.md").read_text()
    for label in ("baseline", "qdq"):
        assert json.loads((out / "bench" / f"{label}.json").read_text())["completed"] == 8
        assert json.loads((out / "eval" / f"{label}.json").read_text())["results"]
    assert "| qdq_tiny_mc | acc |" in text and "| requests/s |" in text and "| TTFT p50 |" in text
    assert "| KL mean (nats) |" in text and "Not run" not in text
    assert "each after 8 untimed warm-up requests" in text
    assert "## Per-layer QDQ numerics" in text and "| mxfp4 | 8 |" in text  # 2 layers x 4 linears
    assert list((out / "stats" / "qdq").glob("qdq-stats-*.jsonl"))
    log = (out / "logs" / "compose.log").read_text()
    assert "vllm-qdq stats: cannot write" not in log and "activation QDQ enabled" in log
    # the report's head: what the servers ran, from the logs they wrote to /out/logs; the random model
    head = text.split("## Accuracy")[0]
    qdq_log = (out / "logs" / "serve-qdq.log").read_text()
    method = next(line for line in qdq_log.splitlines() if "vllm-qdq: qdq method " in line)
    assert f"`{method.split('vllm-qdq: ', 1)[1].strip()}`" in head, head
    assert "quantization='qdq'" in head and "enforce_eager" not in head  # compiled, as users run it
    assert "no vllm-qdq line (QDQ off)" in head and "**The model has random weights**" in head
    assert "| engine prefill (scheduled -> first token) |" in text
    for name in ("accuracy", "throughput", "latency", "kl"):
        png = out / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000, name
