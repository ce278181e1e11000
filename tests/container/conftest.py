"""Session fixtures for the container tests: engine, CPU stand-in base, the real image, a tiny model.

Everything is built inside the test run (what `make test` / CI does) and cached by content:
scripts/build-cpu-base.sh tags vllm-qdq/cpu-base:<hash>, scripts/build.sh tags vllm-qdq-cache:<hash>,
so a re-run with nothing changed only checks tags. Build times are printed (pytest -s or the log).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE_TAG = os.environ.get("VLLM_QDQ_TEST_IMAGE", "vllm-qdq:test")
TIMINGS: dict[str, float] = {}


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
def cpu_base(docker_client) -> str:
    return _script("build-cpu-base.sh")


@pytest.fixture(scope="session")
def image(cpu_base: str, docker_client) -> str:
    return _script("build.sh", "--offline", "--base", cpu_base, "--tag", IMAGE_TAG)


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
