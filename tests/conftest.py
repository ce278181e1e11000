"""Shared fixtures and markers: seeds every RNG; GPU and Docker gating lives here only."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

#: each test's time written as it ends, with QDQ_TEST_TIMES=FILE (the smoke suite's kernels step)
pytest_plugins = ["tests.support.timings"]

REPO = Path(__file__).resolve().parent.parent
#: The independent reference vectors (a copy of shared/qdq-vectors kept in the repo so CI runs
#: them); QDQ_VECTORS points elsewhere (e.g. a newer set).
VECTORS = Path(os.environ.get("QDQ_VECTORS", REPO / "tests" / "data" / "qdq-vectors"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_gpu = torch.cuda.is_available()
    require_docker = bool(os.environ.get("REQUIRE_DOCKER"))
    docker_ok = None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (run pytest -m gpu on the GPU host)"))
        if "docker" in item.keywords and not require_docker:
            if docker_ok is None:
                docker_ok = _docker_answers()
            if not docker_ok:
                item.add_marker(pytest.mark.skip(reason="no Docker engine and REQUIRE_DOCKER unset"))
