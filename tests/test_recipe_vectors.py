"""Issue 18 recipes (rotation, stochastic rounding, four_over_six, nvfp4_e5m3) against the
independent oracle's vectors (tests/data/recipe-vectors, made by tests/support/recipe_vectors.py),
bit for bit, plus the statistical and structural properties of stochastic rounding."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from vllm_qdq.numerics.formats import ELEMENTS, FORMATS
from vllm_qdq.numerics.reference import philox_uniform
from vllm_qdq.numerics.rotation import (
    Rotation,
    hadamard_scaled_signs,
    hadamard_sign_bits,
    hadamard_sign_words,
    hadamard_signs,
    inv_sqrt_f32,
    rotate_rows,
)
from vllm_qdq.qdq import quantize, quantize_dequantize

from .support import oracle
from .support.recipe_vectors import RECIPES

DATA = Path(__file__).resolve().parent / "data" / "recipe-vectors"
MANIFEST = json.loads((DATA / "manifest.json").read_text())


def bf16(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16)


def kwargs(recipe: dict) -> dict:
    return {k: v for k, v in recipe.items() if k != "fmt"}


def test_manifest_lists_every_recipe() -> None:
    assert {f["file"] for f in MANIFEST["files"]} == {f"{n}.npz" for n in RECIPES}
    assert {f["file"] for f in MANIFEST["files"]} == {p.name for p in DATA.glob("*.npz")}


@pytest.mark.parametrize("entry", MANIFEST["files"], ids=lambda e: e["file"])
def test_reference_matches_oracle_vectors(entry: dict) -> None:
    d = np.load(DATA / entry["file"])
    x, y = bf16(d["x_bf16_bits"]), bf16(d["y_bf16_bits"])
    recipe = entry["recipe"]
    if "signs" in d:  # the stored signs are the contract's generator's
        rot = Rotation(block=recipe["rotate"]["block"], seed=recipe["rotate"]["seed"])
        kp = rot.padded(x.shape[-1])
        assert torch.equal(hadamard_signs(rot, kp), torch.from_numpy(d["signs"]))
    out = quantize_dequantize(x, recipe["fmt"], backend="reference", **kwargs(recipe))
    differ = bits(out) != bits(y)
    assert not differ.any(), f"{int(differ.sum())} of {differ.numel()} elements differ"


def test_vectors_exercise_the_options() -> None:
    """Each option changes the result on these rows (the vectors are not trivially equal)."""
    x = bf16(np.load(DATA / "nvfp4_four_over_six.npz")["x_bf16_bits"])
    for fmt, a, b in [
        ("nvfp4", {}, {"scale_rule": "four_over_six"}),
        ("mxfp4", {}, {"rotate": {"block": 32}}),
        ("mxfp4", {"rotate": {"block": 128}}, {"rotate": {"block": 128, "seed": 7}}),
        ("mxfp4", {}, {"rounding": "stochastic"}),
        ("nvfp4", {}, {"fmt": "nvfp4_e5m3"}),
    ]:
        fb = b.pop("fmt", fmt)
        assert not torch.equal(quantize_dequantize(x, fmt, **a), quantize_dequantize(x, fb, **b))


def test_ue5m3_grid_matches_bit_definition() -> None:
    assert [Fraction(v) for v in ELEMENTS["ue5m3"].grid()] == oracle.UE5M3_GRID
    assert ELEMENTS["ue5m3"].max_normal == 114688.0 == float(oracle.UE5M3_GRID[-1])
    assert FORMATS["nvfp4_e5m3"].scale_elem is ELEMENTS["ue5m3"]


def test_nvfp4_e5m3_scales_on_ue5m3_grid() -> None:
    x = torch.randn(8, 256, dtype=torch.bfloat16) * torch.logspace(-6, 6, 256).to(torch.bfloat16)
    q = quantize(x, "nvfp4_e5m3")
    grid = set(ELEMENTS["ue5m3"].grid())
    assert q.scales.dtype == torch.float32
    assert set(q.scales.flatten().tolist()) <= grid


def test_philox_matches_python_integer_oracle() -> None:
    idx = torch.tensor([0, 1, 2, 511, 2**31, 2**32 + 5, 2**40 + 12345], dtype=torch.int64)
    for seed in (0, 1, 1234, 2**32 + 7):
        want = [Fraction(oracle.philox_u32(seed, int(i)) >> 8, 2**24) for i in idx]
        got = [Fraction(float(v)) for v in philox_uniform(seed, idx)]
        assert got == want


# ----------------------------------------------------------------------------- stochastic rounding


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "mxfp8_e4m3"])
def test_sr_lands_on_a_neighbour_and_is_reproducible(fmt: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 512, dtype=torch.float32)
    near = quantize(x, fmt)
    a = quantize_dequantize(x, fmt, rounding="stochastic", seed=11)
    b = quantize_dequantize(x, fmt, rounding="stochastic", seed=11)
    c = quantize_dequantize(x, fmt, rounding="stochastic", seed=12)
    assert torch.equal(bits32(a), bits32(b))
    assert not torch.equal(a, c)
    # every SR draw is one of the two grid neighbours of x / scale: |q_sr - x/s| < one quantum,
    # checked through the codes: SR and RNE codes differ by at most one grid step
    qs = quantize(x, fmt, rounding="stochastic", seed=11)
    mag_n = near.codes.to(torch.int64) & ((1 << (near.spec.elem.bits - 1)) - 1)
    mag_s = qs.codes.to(torch.int64) & ((1 << (qs.spec.elem.bits - 1)) - 1)
    assert (mag_n - mag_s).abs().max() <= 1
    assert torch.equal(near.scales.to(torch.float32), qs.scales.to(torch.float32))  # scales do not depend on rounding


def bits32(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def test_sr_neighbours_exact_against_grid() -> None:
    """Element by element: the SR result is the lower or upper grid neighbour of x / 2**e (MX)."""
    torch.manual_seed(1)
    x = torch.randn(4, 256, dtype=torch.float32)
    y = quantize_dequantize(x, "mxfp4", rounding="stochastic", seed=3)
    g = x.reshape(4, -1, 32)
    amax = g.abs().amax(-1, keepdim=True)
    e = torch.floor(torch.log2(amax)) - 2
    v = (g / 2**e).flatten().tolist()
    q = (y.reshape(4, -1, 32) / 2**e).flatten().tolist()
    grid = [float(f) for f in oracle.E2M1_GRID]
    for vi, qi in zip(v, q, strict=True):
        a = min(abs(vi), 6.0)
        lo = max(t for t in grid if t <= a)
        hi = min(t for t in grid if t >= a)
        assert abs(qi) in (lo, hi) and (qi == 0 or np.sign(qi) == np.sign(vi))


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_sr_is_unbiased(fmt: str) -> None:
    """Mean over 400 seeds of (SR(x) - x) is within 4.5 standard errors of 0 for every element
    (the per-element variance of SR is frac * (1 - frac) * quantum**2), while RNE's is not."""
    torch.manual_seed(2)
    x = torch.randn(2, 64, dtype=torch.float32)
    x[0, 0] = 5.0  # the block max: its scale is fixed for every draw
    draws = torch.stack([quantize_dequantize(x, fmt, rounding="stochastic", seed=s) for s in range(400)]).double()
    lo = draws.min(0).values
    hi = draws.max(0).values
    assert torch.all((draws == lo) | (draws == hi))  # two outcomes per element at most
    p = (x.double() - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    var = p * (1 - p) * (hi - lo) ** 2
    se = (var / draws.shape[0]).sqrt()
    err = draws.mean(0) - x.double()
    both = hi > lo
    assert both.sum() > 50
    assert torch.all(err[both].abs() <= 4.5 * se[both] + 1e-12)
    bias_rne = (quantize_dequantize(x, fmt).double() - x.double()).abs()
    assert err[both].abs().mean() < 0.25 * bias_rne[both].mean()


# ----------------------------------------------------------------------------- rotation / four over six


def test_rotation_is_orthonormal_and_block_diagonal() -> None:
    torch.manual_seed(3)
    x = torch.randn(3, 256)
    for block in (16, 32, 64, 128, 256):
        for seed in (None, 9):
            rot = Rotation(block=block, seed=seed)
            s = hadamard_signs(rot, 256)
            r = rotate_rows(x, rot, s)
            assert torch.allclose(r.norm(dim=1), x.norm(dim=1), rtol=1e-5)
            assert torch.allclose(rotate_rows(r, rot, s, inverse=True), x, atol=1e-5)
            e = torch.zeros(1, 512)
            e[0, block] = 1.0  # a unit vector in the second block stays in it
            re = rotate_rows(e, rot, hadamard_signs(rot, 512))
            assert torch.all(re[0, :block] == 0) and torch.all(re[0, 2 * block:] == 0)


def test_kernel_sign_tensors_hold_the_signs_and_pad_with_plus_one() -> None:
    """The Triton kernels' forms of a random rotation's signs: 16-bit sign masks (0x8000 where
    the sign is -1: XORed into a bf16 / fp16 value it is the sign product, bit for bit) and the
    inverse's multipliers (sign x fp32 scale), both padded with +1 past ``kp`` to whole tiles;
    ``None`` for a plain rotation; a length shorter than ``kp`` is refused."""
    rot = Rotation(block=128, seed=5)
    d = hadamard_signs(rot, 384)
    bits = hadamard_sign_bits(rot, 384, "cpu", 1024)
    assert bits.dtype == torch.int16 and bits.shape == (1024,)
    assert torch.equal(bits[:384] != 0, d < 0) and not bits[384:].any()
    assert set(bits.tolist()) <= {0, -0x8000}
    v = torch.randn(384).to(torch.bfloat16)
    flipped = (v.view(torch.int16) ^ bits[:384]).view(torch.bfloat16)
    assert torch.equal(flipped.view(torch.int16), (v * d.to(torch.bfloat16)).view(torch.int16))
    scale = inv_sqrt_f32(128)
    m = hadamard_scaled_signs(rot, 384, "cpu", scale, 1024)
    assert m.dtype == torch.float32 and torch.equal(m[:384], d * scale) and torch.all(m[384:] == scale)
    assert torch.equal(hadamard_scaled_signs(rot, 384, "cpu", scale), d * scale)
    assert hadamard_sign_bits(Rotation(block=128), 384, "cpu", 1024) is None
    with pytest.raises(ValueError, match="length 256 is shorter than the 384 signs"):
        hadamard_sign_bits(Rotation(block=128, seed=6), 384, "cpu", 256)


def test_sign_words_pack_each_column_in_its_half() -> None:
    """The packed form (``SIGN_WORDS``): column ``j`` of each 32-column word at bit ``j // 2`` (even
    columns) or ``16 + j // 2`` (odd), 1 for -1; +1 past ``kp``; the kernels' two shifts (a 16-bit
    pair's signs at bits 15 and 31 of one word, an fp32 value's at bit 31) give the signs back;
    refused lengths name the value; ``None`` for a plain rotation."""
    rot = Rotation(block=128, seed=5)
    d = hadamard_signs(rot, 384)
    w = hadamard_sign_words(rot, 384, "cpu", 1024)
    assert w.dtype == torch.int32 and w.shape == (32,)
    w64 = w.to(torch.int64) & 0xFFFFFFFF
    j = torch.arange(1024) % 32
    at = j // 2 + 16 * (j % 2)  # each column's bit in its word
    word = w64[torch.arange(1024) // 32]  # each column's word
    bit = (word >> at) & 1
    assert torch.equal(bit[:384] == 1, d < 0) and not bit[384:].any()
    # the 16-bit form: word << (15 - p) holds column 2p's sign at bit 15 and column 2p + 1's at 31
    p = torch.arange(16)
    pairs = (w64[:, None] << (15 - p)) & 0x80008000  # [words, pairs]
    lo, hi = (pairs >> 15) & 1, (pairs >> 31) & 1
    assert torch.equal(torch.stack((lo, hi), dim=-1).reshape(-1), bit)
    # the fp32 form: word << (31 - bit index) holds the column's sign at bit 31
    top = ((word << (31 - at)) >> 31) & 1
    assert torch.equal(top, bit)
    assert hadamard_sign_words(Rotation(block=128), 384, "cpu", 1024) is None
    with pytest.raises(ValueError, match="length 400 is not a multiple of 32"):
        hadamard_sign_words(rot, 384, "cpu", 400)
    with pytest.raises(ValueError, match="length 256 is shorter than the 384 signs"):
        hadamard_sign_words(rot, 384, "cpu", 256)


def test_rotation_needs_a_dividing_block_unless_padded() -> None:
    x = torch.randn(2, 500, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"K=500 is not a multiple of the Hadamard block 128.*\"pad\": true"):
        quantize_dequantize(x, "mxfp4", rotate={"block": 128})
    assert quantize_dequantize(x, "mxfp4", rotate={"block": 128, "pad": True}).shape == x.shape
    with pytest.raises(ValueError, match=r"rotate.block=48; accepted: 16, 32, 64, 128, 256"):
        quantize_dequantize(x, "mxfp4", rotate={"block": 48})


def test_rotated_product_equals_rotated_system() -> None:
    """x_sim . w_sim with x_sim = R^T Q(R x), w_sim = R^T Q(R w) equals Q(R x) . Q(R w)."""
    torch.manual_seed(4)
    x, w = torch.randn(4, 256), torch.randn(8, 256)
    rot = Rotation(block=64, seed=3)
    s = hadamard_signs(rot, 256)
    xs = quantize_dequantize(x, "mxfp4", rotate=rot)
    ws = quantize_dequantize(w, "mxfp4", rotate=rot)
    qx = quantize_dequantize(rotate_rows(x, rot, s), "mxfp4")
    qw = quantize_dequantize(rotate_rows(w, rot, s), "mxfp4")
    assert torch.allclose(xs @ ws.T, qx @ qw.T, rtol=1e-4, atol=1e-3)


def test_four_over_six_picks_lower_error_and_keeps_six_on_ties() -> None:
    torch.manual_seed(5)
    x = torch.randn(64, 256)
    y6 = quantize_dequantize(x, "nvfp4")
    y46 = quantize_dequantize(x, "nvfp4", scale_rule="four_over_six")
    e6 = ((y6 - x) ** 2).reshape(-1, 16).sum(-1)
    e46 = ((y46 - x) ** 2).reshape(-1, 16).sum(-1)
    assert torch.all(e46 <= e6 * (1 + 1e-5))
    assert (e46 < e6).any()
    # a block whose values are all on both grids (0 and the block max) ties: 6 is kept
    t = torch.zeros(1, 16)
    t[0, 0] = 3.0
    assert torch.equal(quantize(t, "nvfp4", scale_rule="four_over_six").scales, quantize(t, "nvfp4").scales)
