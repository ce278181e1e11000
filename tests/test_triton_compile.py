"""Every Triton kernel of vllm_qdq compiles for the GPU with the GPU image's Triton, without a GPU.

The CPU tests run the kernels in Triton's interpreter, which accepts code the compiler rejects
(2026-12-04: a jit function held in a variable ran in the interpreter and failed to compile on the
H200, costing a GPU call). ``scripts/check_triton_compile.py`` captures every launch the package
makes (each QDQ recipe x rule x dtype, the issue-18 options, every two-pass path, sage3) and
compiles it for sm_90 down to a cubin with Triton 3.6.0, the GPU image's, which ``make env``
installs apart in ``<venv>/triton-gpu``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_TRITON = Path(sys.prefix) / "triton-gpu"
GPU_TRITON_VERSION = "3.6.0"


def test_every_kernel_compiles_for_sm90_with_the_gpu_images_triton() -> None:
    assert (GPU_TRITON / "triton").is_dir(), (
        f"{GPU_TRITON} holds no Triton: run `make env` (scripts/setup-env.sh installs triton=={GPU_TRITON_VERSION} there)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(GPU_TRITON), str(ROOT / "overlay")]))
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_triton_compile.py")], env=env,
                         capture_output=True, text=True, timeout=1500, cwd=ROOT)
    tail = (out.stdout + out.stderr)[-3000:]
    assert out.returncode == 0, tail
    assert f"triton {GPU_TRITON_VERSION}: compiled" in out.stdout and ", 0 failures" in out.stdout, tail
