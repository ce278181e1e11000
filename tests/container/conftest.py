"""Session fixtures for the container tests: engine, base, the real image, a tiny model, GPU mode.

Everything is built inside the test run (what `make test` / CI does) and cached by content:
scripts/build-cpu-base.sh tags vllm-qdq/cpu-base:<hash>, scripts/build.sh tags vllm-qdq-cache:<hash>,
so a re-run with nothing changed only checks tags. Build times are printed (pytest -s or the log).

Two modes, chosen once per session (``QDQ_CONTAINER_GPU``: ``auto``, the default, ``1`` or ``0``):

* CPU mode (no GPU in the Docker engine, or ``0``): the image is built offline on the CPU stand-in
  base (scripts/build-cpu-base.sh), as CI here does;
* GPU mode (``auto`` when the engine can give a container a GPU, or ``1``, which fails when it
  cannot): the image is built by scripts/build.sh (online, the GPU workflow's command, so its cache
  entry is reused) on the real base ``VLLM_QDQ_TEST_BASE`` (default vllm/vllm-omni:v0.30.0), and
  every container gets ``device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])]``.
  The engine can give a GPU when it has an NVIDIA runtime (``docker info``) or the NVIDIA container
  toolkit is installed, and a container from the base with that device request runs ``nvidia-smi``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE_TAG = os.environ.get("VLLM_QDQ_TEST_IMAGE", "vllm-qdq:test")
GPU_BASE = os.environ.get("VLLM_QDQ_TEST_BASE", "vllm/vllm-omni:v0.30.0")
GPU_MODES = ("auto", "1", "0")
TIMINGS: dict[str, float] = {}


@dataclass
class GpuMode:
    """Whether the session's containers get the engine's GPUs, and why (shown in skip reasons)."""

    on: bool = False
    reason: str = "not decided yet (the docker_gpu fixture decides)"


#: set once per session by the ``docker_gpu`` fixture (every container test depends on it via ``image``)
GPU = GpuMode()


def gpu_run_kwargs() -> dict:
    """Extra ``client.containers.run`` arguments: every GPU of the engine in GPU mode, nothing in CPU mode."""
    if not GPU.on:
        return {}
    from docker.types import DeviceRequest

    return {"device_requests": [DeviceRequest(count=-1, capabilities=[["gpu"]])]}


def _gpu_hint(info: dict) -> str | None:
    """What suggests the engine can give containers a GPU, or None."""
    runtimes = sorted((info.get("Runtimes") or {}).keys())
    if any("nvidia" in r for r in runtimes):
        return f"docker info runtimes {runtimes}"
    cdi = [str(d) for d in (info.get("DiscoveredDevices") or []) if "nvidia" in str(d).lower()]
    if cdi:
        return f"docker info CDI devices {cdi}"
    tools = [t for t in ("nvidia-container-runtime-hook", "nvidia-container-cli", "nvidia-ctk") if shutil.which(t)]
    if tools:
        return f"NVIDIA container toolkit on PATH ({', '.join(tools)})"
    return None


def _probe_gpu(client, base: str) -> tuple[bool, str]:
    """Run ``nvidia-smi -L`` in a container of ``base`` with every GPU requested."""
    import docker

    try:
        client.images.get(base)
    except docker.errors.ImageNotFound:
        print(f"\n[docker fixture] pulling {base} for the GPU probe", file=sys.stderr)
        client.images.pull(base)
    try:
        out = client.containers.run(
            base, ["-L"], entrypoint=["nvidia-smi"], remove=True, stdout=True, stderr=True,
            device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])],
            labels={"vllm-qdq-test": "1"})
    except docker.errors.DockerException as e:
        return False, f"a container of {base} with device_requests gpu did not run nvidia-smi: {e}"
    gpus = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("GPU ")]
    if not gpus:
        return False, f"nvidia-smi -L in {base} listed no GPU: {out.decode(errors='replace')[-500:]}"
    return True, f"{len(gpus)} GPU(s) in containers: {gpus[0]}"


def _script(name: str, *args: str) -> str:
    """Run scripts/<name> with the repo's python first on PATH; return its last stdout line."""
    env = dict(os.environ, PYTHON=sys.executable)
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(REPO / "scripts" / name), *args], cwd=REPO, env=env,
                       stdout=subprocess.PIPE, text=True)
    TIMINGS[name] = time.monotonic() - t0
    print(f"\n[docker fixture] {name} {' '.join(args)}: {TIMINGS[name]:.0f} s", file=sys.stderr)
    assert r.returncode == 0, f"scripts/{name} failed (exit {r.returncode}); its stderr is above"
    return r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def docker_client():
    import docker

    subprocess.run(["bash", str(REPO / "scripts" / "docker-engine.sh")], check=True)
    client = docker.from_env(timeout=600)
    assert client.ping()
    return client


@pytest.fixture(scope="session")
def docker_gpu(docker_client) -> GpuMode:
    """Decide CPU or GPU mode for the session (module docstring); sets :data:`GPU`."""
    want = os.environ.get("QDQ_CONTAINER_GPU", "auto").strip().lower() or "auto"
    if want not in GPU_MODES:
        raise ValueError(f"QDQ_CONTAINER_GPU={want!r}; accepted: {', '.join(GPU_MODES)}")
    if want == "0":
        GPU.on, GPU.reason = False, "QDQ_CONTAINER_GPU=0"
        return GPU
    hint = _gpu_hint(docker_client.info())
    if hint is None:
        on, why = False, ("the Docker engine has no NVIDIA runtime or CDI device (docker info) and no NVIDIA "
                          "container toolkit is on PATH")
    else:
        on, why = _probe_gpu(docker_client, GPU_BASE)
        why = f"{hint}; {why}"
    if want == "1" and not on:
        pytest.fail(f"QDQ_CONTAINER_GPU=1 but the Docker engine gives containers no GPU: {why}")
    GPU.on, GPU.reason = on, why
    print(f"\n[docker fixture] container tests in {'GPU' if on else 'CPU'} mode: {why}", file=sys.stderr)
    return GPU


@pytest.fixture(scope="session")
def cpu_base(docker_client) -> str:
    return _script("build-cpu-base.sh")


@pytest.fixture(scope="session")
def base_image(docker_gpu: GpuMode, request: pytest.FixtureRequest) -> str:
    """The image's base: the real upstream one in GPU mode, the CPU stand-in otherwise."""
    return GPU_BASE if docker_gpu.on else request.getfixturevalue("cpu_base")


@pytest.fixture(scope="session")
def image(base_image: str, docker_gpu: GpuMode, docker_client) -> str:
    if docker_gpu.on:  # the GPU workflow's build (online): a cache hit when the workflow built it first
        return _script("build.sh", "--base", base_image, "--tag", IMAGE_TAG)
    return _script("build.sh", "--offline", "--base", base_image, "--tag", IMAGE_TAG)


@pytest.fixture()
def cpu_mode_only(docker_gpu: GpuMode) -> None:
    """Skip a test that needs the CPU stand-in (CPU engine, no CUDA) when the session is in GPU mode."""
    if docker_gpu.on:
        pytest.skip(f"CPU-mode test; the session is in GPU mode ({docker_gpu.reason}); QDQ_CONTAINER_GPU=0 runs it")


@pytest.fixture()
def gpu_mode_only(docker_gpu: GpuMode) -> None:
    """Skip a GPU-mode test, saying why, when the Docker engine gives containers no GPU."""
    if not docker_gpu.on:
        pytest.skip(f"GPU mode only: {docker_gpu.reason}")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama (hidden 64) with a byte-level BPE tokenizer, built here (no download)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["the quick brown fox jumps over the lazy dog", "hello world, numbers 0 1 2 3 4 5 6 7 8 9"]
    tok.train_from_iterator(corpus * 8, trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(path))
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                      max_position_embeddings=256, bos_token_id=0, eos_token_id=1,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # wider than the default init, so QDQ moves the logits visibly
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.1)
    model.to(torch.bfloat16).save_pretrained(str(path))
    os.chmod(path, 0o755)
    for f in path.iterdir():
        os.chmod(f, 0o644)
    return path


@pytest.fixture(scope="session", autouse=True)
def _report_timings() -> Iterator[None]:
    yield
    if TIMINGS:
        print("\n[docker fixture] timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in TIMINGS.items()),
              file=sys.stderr)
