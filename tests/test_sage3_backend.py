"""sage3 registration and fallback rules against the real vllm-omni 0.30.0 (CPU).

One subprocess (``tests/support/sage3_omni_script.py``, TRITON_INTERPRET=1) walks through: the entry
point with ``VLLM_SAGE3_TRITON`` unset (vllm-omni untouched, the in-tree CUDA platform check
still demands ``sageattention``), bad settings (ConfigError at registration), enabled without a
usable device (in-tree kept, one warning), enabled (registry, selector and CUDA platform resolve
SAGE_ATTN to sage3 on a Hopper capability), a real ``Attention`` layer running the kernel, and
the SDPA fallbacks with their one-time log lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAGE3 = "vllm_qdq.sage3.backend.Sage3AttentionBackend"
IN_TREE = "vllm_omni.diffusion.attention.backends.sage_attn.SageAttentionBackend"


@pytest.fixture(scope="module")
def omni() -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO / "overlay"))
    for var in ("VLLM_SAGE3_TRITON", "SAGE3_QUANT_FORMAT", "SAGE3_ACC_DTYPE", "VLLM_PLUGINS"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "support" / "sage3_omni_script.py")],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")][-1]
    return json.loads(line[4:])


def test_disabled_leaves_vllm_omni_untouched(omni: dict) -> None:
    assert omni["off_path"] == IN_TREE
    assert omni["off_platform_patched"] is False
    # the in-tree CUDA platform check is what a Hopper user meets without the plugin
    assert omni["off_resolve"].startswith("ImportError") and "sageattention" in omni["off_resolve"]


def test_bad_settings_refused_at_registration(omni: dict) -> None:
    assert omni["bad_SAGE3_QUANT_FORMAT"] == (
        "ConfigError: SAGE3_QUANT_FORMAT='fp3'; accepted: mxfp4, nvfp4, mxfp8_s1, mxfp4_s1"
    )
    assert omni["bad_SAGE3_ACC_DTYPE"] == (
        "ConfigError: SAGE3_ACC_DTYPE='fp16'; accepted: fp32, bf16_both_dot, bf16_pv_only"
    )


def test_unusable_backend_keeps_in_tree_with_one_warning(omni: dict) -> None:
    assert omni["unusable_path"] == IN_TREE
    assert len(omni["unusable_lines"]) == 1
    assert "no CUDA device" in omni["unusable_lines"][0] and "in-tree SAGE_ATTN is kept" in omni["unusable_lines"][0]


def test_enabled_resolves_sage_attn_to_sage3(omni: dict) -> None:
    assert omni["on_path"] == SAGE3
    assert omni["on_class"] == SAGE3
    assert omni["on_resolve"] == SAGE3  # selector -> CudaOmniPlatform (sm_90, no sageattention)
    assert omni["on_platform"] == SAGE3
    assert omni["on_platform_other"].endswith("SDPABackend")  # other selections unchanged
    assert len(omni["register_lines"]) == 1 and "format=nvfp4, acc=fp32" in omni["register_lines"][0]


def test_attention_layer_runs_the_kernel(omni: dict) -> None:
    assert omni["layer_impl"] == "Sage3AttentionImpl"
    assert omni["layer_fallback_lines"] == []
    assert omni["layer_diff"] <= 1e-5


def test_fallbacks_equal_sdpa_and_log_once(omni: dict) -> None:
    assert omni["fallback_diff"] == {"mask": 0.0, "cross": 0.0, "head_dim": 0.0, "dtype": 0.0}
    lines = omni["fallback_lines"]
    assert len(lines) == 4, lines  # the repeated cross-attention call logs nothing new
    assert "attention mask" in lines[0]
    assert "cross-attention (query length 40 != key length 24)" in lines[1]
    assert "head dim 80" in lines[2]
    assert "torch.float64" in lines[3]


def test_kernel_path_gqa_causal(omni: dict) -> None:
    assert omni["kernel_gqa_causal"] <= 1e-5
    assert len(omni["kernel_lines_after"]) == 3  # no new fallback for the supported call
