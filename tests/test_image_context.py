"""The image's build context carries the whole GPU smoke suite (no Docker needed).

docker/smoke-files.txt names what docker/install-overlay.sh copies to /opt/vllm-qdq/smoke; the
build context is a whitelist (.dockerignore). Checked here: every listed path exists and is let in,
and everything the suite needs is listed: each script scripts/gpu-smoke.sh runs, each script or test
file those name, and each local module they import, followed transitively. The image itself is
checked in tests/container/test_image.py.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOKE_LIST = REPO / "docker" / "smoke-files.txt"
#: a path under scripts/ or tests/ written in source, as "scripts/x.py" or REPO / "tests" / "support" / "x.py"
PATH_REF = re.compile(r"""\b(scripts|tests)["']?\s*/\s*["']?((?:(?:gpu|support)["']?\s*/\s*["']?)?[\w.-]+\.(?:py|sh))\b""")
#: the quotes and blanks of a path written as REPO / "tests" / "support" / "x.py"
QUOTES = re.compile(r"""["'\s]""")


def _entries() -> list[str]:
    lines = (ln.strip() for ln in SMOKE_LIST.read_text().splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _listed(rel: str, entries: list[str]) -> bool:
    return any(rel == e or (e.endswith("/") and rel.startswith(e)) for e in entries)


def _local_module(name: str) -> str | None:
    """The repo file an import name resolves to on the suite's sys.path (the tree root, put there
    by pytest: ``tests.support.bits`` is tests/support/bits.py, a package its __init__.py), or None
    (installed packages: vllm_qdq, ...). Scripts and tests edit no sys.path, so a bare name of
    scripts/ or tests/ resolves to nothing of the repo."""
    parts = name.split(".")
    if parts[0] != "tests":
        return None
    for n in range(len(parts), 1, -1):
        rel = "/".join(parts[:n])
        if (REPO / f"{rel}.py").is_file():
            return f"{rel}.py"
        if (REPO / rel / "__init__.py").is_file():
            return f"{rel}/__init__.py"
    return None


def _needs(rel: str) -> set[str]:
    """Files of the repo that ``rel`` names (as a path) or imports (as a local module)."""
    text = (REPO / rel).read_text()
    found = {m.group(1) + "/" + QUOTES.sub("", m.group(2)) for m in PATH_REF.finditer(text)}
    if rel.endswith(".py"):
        for node in ast.walk(ast.parse(text)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for n in names:
                f = _local_module(n)
                if f:
                    found.add(f)
    return {f for f in found if (REPO / f).is_file()}


def test_smoke_files_exist_and_enter_the_build_context() -> None:
    allowed = {ln[1:].strip().rstrip("/") for ln in (REPO / ".dockerignore").read_text().splitlines()
               if ln.startswith("!")}
    for e in _entries():
        assert (REPO / e).exists(), f"docker/smoke-files.txt: {e} does not exist"
        parts = e.rstrip("/").split("/")
        assert any("/".join(parts[:i]) in allowed for i in range(1, len(parts) + 1)), \
            f"docker/smoke-files.txt: {e} is not let into the build context: add !{e} to .dockerignore"


def test_smoke_files_hold_everything_the_suite_runs() -> None:
    entries = _entries()
    todo = ["scripts/gpu-smoke.sh", *(str(p.relative_to(REPO)) for p in (REPO / "tests" / "gpu").glob("*.py"))]
    seen: set[str] = set()
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        todo.extend(_needs(rel) - seen)
    missing = sorted(f for f in seen if not _listed(f, entries))
    assert not missing, f"the smoke suite needs {missing}: add them to docker/smoke-files.txt and .dockerignore"
    # the pytest configuration (markers, --strict-markers) and the rootdir's conftest
    for f in ("pyproject.toml", "tests/conftest.py", "tests/__init__.py", "tests/support/__init__.py"):
        assert _listed(f, entries), f


def test_smoke_pytest_pinned_as_the_lock() -> None:
    def pins(path: Path) -> dict[str, str]:
        out = {}
        for ln in path.read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", ln.strip())
            if m:
                out[m.group(1).lower()] = m.group(2)
        return out

    smoke, lock = pins(REPO / "docker" / "smoke-requirements.txt"), pins(REPO / "scripts" / "constraints-cpu.txt")
    assert {"pytest", "pytest-xdist"} <= set(smoke), smoke
    for name, version in smoke.items():
        if name in lock:
            assert lock[name] == version, f"{name}: docker/smoke-requirements.txt {version}, lock {lock[name]}"
