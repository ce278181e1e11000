"""Bit-exact agreement with the independent QDQ vectors (tests/data/qdq-vectors, from shared/)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from vllm_qdq.numerics.formats import ELEMENTS
from vllm_qdq.qdq import quantize, quantize_dequantize

from .conftest import VECTORS

MX_NAMES = {
    "fp4_e2m1": "mxfp4",
    "fp6_e2m3": "mxfp6_e2m3",
    "fp6_e3m2": "mxfp6_e3m2",
    "fp8_e4m3": "mxfp8_e4m3",
    "fp8_e5m2": "mxfp8_e5m2",
}
SCALED = {
    "fp8e4m3_per_tensor": "fp8_e4m3_per_tensor",
    "fp8e4m3_per_token": "fp8_e4m3_per_token",
    "fp8e4m3_per_block1x128": "fp8_e4m3_per_group128",
    "fp8e4m3_per_block1x128_ue8m0": "fp8_e4m3_per_group128_ue8m0",
    "int8_per_token_sym": "int8_per_token",
}


def bf16(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16)


def test_manifest_covers_every_file() -> None:
    manifest = json.loads((VECTORS / "manifest.json").read_text())
    names = {f["file"] for f in manifest["files"]}
    expected = {f"dev_mx_{e}_{r}.npz" for e in MX_NAMES for r in ("floor", "ceil", "even", "rceil")}
    expected |= {f"dev_{n}.npz" for n in SCALED} | {"dev_nvfp4.npz"}
    assert names == expected


@pytest.mark.parametrize("rule", ["floor", "ceil", "even", "rceil"])
@pytest.mark.parametrize("elem", list(MX_NAMES))
def test_mx_vectors(elem: str, rule: str) -> None:
    d = np.load(VECTORS / f"dev_mx_{elem}_{rule}.npz")
    x, y = bf16(d["x_bf16_bits"]), bf16(d["y_bf16_bits"])
    out = quantize_dequantize(x, MX_NAMES[elem], scale_rule=rule)
    assert torch.equal(bits(out), bits(y)), f"{int((bits(out) != bits(y)).sum())} elements differ"
    q = quantize(x, MX_NAMES[elem], scale_rule=rule)
    assert np.array_equal(q.scales.numpy(), d["scale_e8m0"])


@pytest.mark.parametrize("name", list(SCALED))
def test_scaled_vectors(name: str) -> None:
    d = np.load(VECTORS / f"dev_{name}.npz")
    x, y = bf16(d["x_bf16_bits"]), bf16(d["y_bf16_bits"])
    out = quantize_dequantize(x, SCALED[name])
    assert torch.equal(bits(out), bits(y)), f"{int((bits(out) != bits(y)).sum())} elements differ"


def test_nvfp4_vectors() -> None:
    d = np.load(VECTORS / "dev_nvfp4.npz")
    x = bf16(d["x_bf16_bits"])
    mask = torch.from_numpy(d["order_sensitive_mask"])
    ref = bf16(d["y_vllm_fp32order_bf16_bits"])
    out = quantize_dequantize(x, "nvfp4")
    # given the same global amax explicitly, the same answer
    assert torch.equal(bits(out), bits(quantize_dequantize(x, "nvfp4", global_amax=float(d["global_amax"]))))
    differ = bits(out) != bits(ref)
    assert not (differ & ~mask).any(), f"{int((differ & ~mask).sum())} differ outside the mask"
    # inside the mask: within one E2M1 step of both the vLLM-order and the exact result
    q = quantize(x, "nvfp4")
    step = _e2m1_step_at(x, q)
    for key in ("y_vllm_fp32order_bf16_bits", "y_ideal_bf16_bits"):
        want = bf16(d[key]).float()
        err = (out.float() - want).abs()[mask]
        assert (err <= step[mask] * 1.0001).all(), key


def _e2m1_step_at(x: torch.Tensor, q) -> torch.Tensor:
    """Size of one E2M1 step at each element (largest grid gap, 2, times the block's scale)."""
    mult = (q.scales.float() / q.global_scale).repeat_interleave(16, dim=1)
    grid = torch.tensor(ELEMENTS["e2m1"].grid())
    return mult * float((grid[1:] - grid[:-1]).max()) + 1e-30
