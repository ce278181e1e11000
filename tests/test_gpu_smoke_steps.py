"""Every GPU test file is run by a step of ``scripts/gpu-smoke.sh`` (a file no step names would
never run on the GPU host or in the GPU CI), and every file a step names exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "scripts" / "gpu-smoke.sh"


def _named() -> set[str]:
    """The ``tests/gpu/*.py`` paths in the commands of gpu-smoke.sh (comments left out)."""
    code = "\n".join(ln for ln in SMOKE.read_text().splitlines() if not ln.lstrip().startswith("#"))
    return set(re.findall(r"tests/gpu/test_\w+\.py", code))


def test_every_gpu_test_file_has_a_step() -> None:
    files = {str(p.relative_to(REPO)) for p in (REPO / "tests" / "gpu").glob("test_*.py")}
    missing = sorted(files - _named())
    assert not missing, f"no step of scripts/gpu-smoke.sh runs {missing}: add them to a step"


def test_every_named_file_exists() -> None:
    gone = sorted(n for n in _named() if not (REPO / n).is_file())
    assert not gone, f"scripts/gpu-smoke.sh names missing files {gone}"
