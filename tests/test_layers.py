"""The package's layers, checked from the source: no lower layer imports a higher one.

Every module of ``overlay/vllm_qdq`` is parsed (``ast``; imports inside functions and under
``TYPE_CHECKING`` count too) and mapped to its layer by :data:`LAYER_OF` (longest prefix wins).
A module may import the ``vllm_qdq`` layers in its row of :data:`MAY_IMPORT` and none of the
third-party packages in :data:`MUST_NOT_IMPORT`. The README's Layout section says the same, one
line per package. A module that matches no layer fails too: a new module gets a layer here.

Also checked here: no module outside ``vllm_qdq/config.py`` reads the environment (settings
are read and validated once there and passed down; the study's command-line defaults and the
GPU test engines' memory settings too, from its tooling section).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "overlay" / "vllm_qdq"

#: Module prefix -> layer (longest matching prefix wins).
LAYER_OF: dict[str, str] = {
    "vllm_qdq.numerics": "numerics",
    "vllm_qdq.sage3.numerics": "sage3.numerics",
    "vllm_qdq": "base",  # the package root and vllm_qdq.qdq (the public re-export)
    "vllm_qdq.config": "base",
    "vllm_qdq.log": "base",
    "vllm_qdq.errors": "base",
    "vllm_qdq.sage3_route": "base",
    "vllm_qdq.schema": "base",
    "vllm_qdq.stats": "stats",
    "vllm_qdq.activation": "activation",
    "vllm_qdq.method": "method",
    "vllm_qdq.sage3": "sage3",
    "vllm_qdq.plugin": "entry",
    "vllm_qdq.cpu_compat": "entry",
    "vllm_qdq.vllm_cli": "entry",
    "vllm_qdq.study": "study",
}

#: Layer -> the vllm_qdq layers it may import (its own included). Lowest first.
MAY_IMPORT: dict[str, set[str]] = {
    "numerics": {"numerics"},
    "sage3.numerics": {"numerics", "sage3.numerics"},
    "base": {"numerics", "sage3.numerics", "base"},
    "stats": {"numerics", "base", "stats"},
    "activation": {"numerics", "base", "stats", "activation"},
    "method": {"numerics", "base", "stats", "activation", "method"},
    "sage3": {"numerics", "sage3.numerics", "base", "sage3"},
    "entry": {"numerics", "sage3.numerics", "base", "stats", "activation", "method", "sage3", "entry"},
    "study": {"numerics", "sage3.numerics", "base", "stats", "activation", "method", "sage3", "entry", "study"},
}

#: Layer -> third-party top-level packages it must not import.
MUST_NOT_IMPORT: dict[str, set[str]] = {
    "numerics": {"vllm", "vllm_omni"},
    "sage3.numerics": {"vllm", "vllm_omni"},
    "base": {"vllm", "vllm_omni"},
    "stats": {"vllm_omni"},
    "activation": {"vllm_omni"},
    "method": {"vllm_omni"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def layer_of(module: str) -> str | None:
    """The layer of a ``vllm_qdq`` module (longest prefix of :data:`LAYER_OF`), or None."""
    best = None
    for prefix in LAYER_OF:
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best)):
            best = prefix
    return LAYER_OF[best] if best is not None else None


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every import in ``path``, relative ones resolved."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            for a in node.names:  # `from . import ops` imports the module vllm_qdq.<pkg>.ops
                if f"{target}.{a.name}" in MODULES:
                    out.append((node.lineno, f"{target}.{a.name}"))
    return out


def test_every_module_has_a_layer() -> None:
    assert set(MAY_IMPORT) == set(LAYER_OF.values())
    missing = [m for m in MODULES if layer_of(m) is None]
    assert not missing, f"modules with no layer in tests/test_layers.py LAYER_OF: {missing}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_lower_layer_imports_a_higher_one(module: str) -> None:
    layer = layer_of(module)
    wrong = []
    for line, target in imports_of(module, MODULES[module]):
        top = target.split(".")[0]
        if top == "vllm_qdq":
            theirs = layer_of(target)
            if theirs not in MAY_IMPORT[layer]:
                wrong.append(f"line {line}: {target} (layer {theirs})")
        elif top in MUST_NOT_IMPORT.get(layer, set()):
            wrong.append(f"line {line}: {target}")
    assert not wrong, f"{module} (layer {layer}, may import {sorted(MAY_IMPORT[layer])}) imports " + "; ".join(wrong)


def test_the_layer_check_catches_a_violation(tmp_path: Path) -> None:
    """The checker itself: numerics importing vllm, the method or the study is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("import vllm\nfrom ..method import quant_config\nfrom vllm_qdq.study import run\n")
    found = imports_of("vllm_qdq.numerics.bad", bad)
    assert [t for _, t in found] == ["vllm", "vllm_qdq.method", "vllm_qdq.method.quant_config", "vllm_qdq.study",
                                  "vllm_qdq.study.run"]
    assert layer_of("vllm_qdq.method.quant_config") not in MAY_IMPORT["numerics"]
    assert layer_of("vllm_qdq.study.run") not in MAY_IMPORT["numerics"]


def _env_reads(path: Path) -> list[int]:
    """Lines that read the environment: ``os.environ`` anywhere but as an assignment target,
    ``os.getenv`` / ``getenv``, ``from os import environ``."""
    tree = ast.parse(path.read_text(), str(path))
    stores = {
        id(t.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Subscript)
    }
    lines = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and n.attr in ("environ", "getenv") and id(n) not in stores:
            lines.append(n.lineno)
        elif isinstance(n, ast.ImportFrom) and n.module == "os" and any(a.name in ("environ", "getenv") for a in n.names):
            lines.append(n.lineno)
    return lines


def test_settings_are_read_only_in_config() -> None:
    readers = {
        m: lines
        for m, p in MODULES.items()
        if m != "vllm_qdq.config" and (lines := _env_reads(p))
    }
    assert not readers, f"environment read outside vllm_qdq/config.py (take the settings from config): {readers}"
