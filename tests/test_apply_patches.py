"""scripts/apply-patches.sh on a throwaway tree: apply, skip when applied, fail on mismatch/fuzz/missing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "apply-patches.sh"

ORIGINAL = "".join(f"line {i}\n" for i in range(1, 21))
PATCH = """\
why: test patch (a plugin cannot change a module-level constant before import)
--- a/pkg/mod.py
+++ b/pkg/mod.py
@@ -9,7 +9,7 @@
 line 9
 line 10
 line 11
-line 12
+line 12 patched
 line 13
 line 14
 line 15
"""


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "site"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text(ORIGINAL)
    pdir = tmp_path / "patches"
    pdir.mkdir()
    (pdir / "0001-test.patch").write_text(PATCH)
    (pdir / "series").write_text("# comment\n\n0001-test.patch\n")
    return root, pdir / "series"


def test_apply_then_skip(tree: tuple[Path, Path]) -> None:
    root, series = tree
    r = _run("--root", root, "--series", series)
    assert r.returncode == 0, r.stderr
    assert "applied 0001-test.patch" in r.stderr
    text = (root / "pkg" / "mod.py").read_text()
    assert "line 12 patched\n" in text and text.count("\n") == 20
    assert not list(root.rglob("*.orig")) and not list(root.rglob("*.rej"))
    r2 = _run("--root", root, "--series", series)
    assert r2.returncode == 0, r2.stderr
    assert "already applied, skipped: 0001-test.patch" in r2.stderr
    assert (root / "pkg" / "mod.py").read_text() == text


def test_mismatch_fails_and_leaves_tree(tree: tuple[Path, Path]) -> None:
    root, series = tree
    changed = ORIGINAL.replace("line 12\n", "line twelve\n")
    (root / "pkg" / "mod.py").write_text(changed)
    r = _run("--root", root, "--series", series)
    assert r.returncode == 1
    assert "does not apply" in r.stderr
    assert (root / "pkg" / "mod.py").read_text() == changed
    assert not list(root.rglob("*.rej"))


def test_context_change_needs_fuzz_fails(tree: tuple[Path, Path]) -> None:
    """A context line differs (would apply with fuzz 1): -F0 refuses it."""
    root, series = tree
    changed = ORIGINAL.replace("line 9\n", "line nine\n")
    (root / "pkg" / "mod.py").write_text(changed)
    r = _run("--root", root, "--series", series)
    assert r.returncode == 1, r.stderr
    assert (root / "pkg" / "mod.py").read_text() == changed


def test_shifted_lines_apply_with_note(tree: tuple[Path, Path]) -> None:
    root, series = tree
    (root / "pkg" / "mod.py").write_text("extra\n" + ORIGINAL)
    r = _run("--root", root, "--series", series)
    assert r.returncode == 0, r.stderr
    assert "shifted lines" in r.stderr
    assert "line 12 patched\n" in (root / "pkg" / "mod.py").read_text()


def test_missing_patch_and_bad_args(tree: tuple[Path, Path]) -> None:
    root, series = tree
    series.write_text("0001-test.patch\n0002-missing.patch\n")
    r = _run("--root", root, "--series", series)
    assert r.returncode == 1 and "0002-missing.patch" in r.stderr
    assert (root / "pkg" / "mod.py").read_text() == ORIGINAL  # checked before touching anything
    r = _run("--bogus")
    assert r.returncode == 2 and "--bogus" in r.stderr


def test_list_and_empty_series(tree: tuple[Path, Path]) -> None:
    root, series = tree
    r = _run("--series", series, "--list")
    assert r.returncode == 0
    name, digest = r.stdout.split()
    assert name == "0001-test.patch" and len(digest) == 64
    series.write_text("# nothing\n")
    r = _run("--root", root, "--series", series)
    assert r.returncode == 0 and "series is empty" in r.stderr


def test_repo_series_is_consistent() -> None:
    """Every patch in the repo's series exists, and each states why a plugin cannot do the job."""
    r = _run("--list")
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines():
        name = line.split()[0]
        head = (REPO / "patches" / name).read_text().split("\n---", 1)[0].lower()
        assert "plugin" in head, f"{name}: header must say why a plugin cannot do the job"
