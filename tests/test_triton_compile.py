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


def test_direct_replay_layout_is_the_gpu_images_launcher() -> None:
    """The eager fast path calls the generated C launcher of Triton 3.6 itself
    (``triton_qdq._make_replay``): its leading-argument layout is the one that Triton's own
    ``CudaLauncher.__call__`` passes and its generated ``launch`` parses."""
    from vllm_qdq.numerics import triton_qdq

    assert (GPU_TRITON / "triton").is_dir(), f"{GPU_TRITON} holds no Triton: run `make env`"
    assert GPU_TRITON_VERSION.startswith(triton_qdq._DIRECT_TRITON)
    probe = (
        "import inspect\n"
        "from triton.backends.nvidia import driver as d\n"
        "print(d._BASE_ARGS_FORMAT)\n"
        "print(' '.join(inspect.getsource(d.CudaLauncher.__call__).split()))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(GPU_TRITON))
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    fmt, call = out.stdout.splitlines()[:2]
    assert fmt == triton_qdq._DIRECT_LAYOUT
    assert ("self.launch(gridX, gridY, gridZ, stream, function, self.launch_cooperative_grid, self.launch_pdl, "
            "global_scratch, profile_scratch, *args)") in call, call
