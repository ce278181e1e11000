"""The repository's ``scripts/*.py`` loaded as modules in tests (the scripts are not a package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def script_module(name: str, as_name: str | None = None) -> ModuleType:
    """``scripts/<name>.py``, executed afresh as a module named ``as_name`` (default ``name``):
    each call a new module object, so that a test's monkeypatching stays its own."""
    spec = importlib.util.spec_from_file_location(as_name or name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
