"""The Triton QDQ kernels, run on CPU under ``TRITON_INTERPRET=1``, against the reference.

Same kernel source as on the GPU; every comparison is bit for bit (integer views of the
outputs, NaN positions equal). Shapes are small because the interpreter is slow.
"""

from __future__ import annotations

import importlib
import os
import re

import numpy as np
import pytest
import torch
from vllm_qdq.numerics.formats import FORMATS, SCALE_RULES, FormatSpec, get_format
from vllm_qdq.numerics.reference import qdq_reference

from tests.support import two_pass
from tests.support.bits import assert_same_bits
from tests.support.narrow_pairs import (
    amax_values,
    fp16_amax_sample,
    fp16_amax_thin,
    narrow_pairs,
    scale_amaxes,
)

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
CASES = [
    (name, rule)
    for name, spec in FORMATS.items()
    for rule in (SCALE_RULES if spec.takes_scale_rule else ("floor",))
]


@pytest.fixture(scope="module")
def tq():
    """``vllm_qdq.numerics.triton_qdq`` with its kernels built for the interpreter (restored after)."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton's first import where possible
    pytest.importorskip("triton")
    import vllm_qdq.numerics.triton_primitives as prims
    import vllm_qdq.numerics.triton_qdq as mod

    importlib.reload(prims)  # re-decorate the shared helpers, then the kernels that call them,
    mod = importlib.reload(mod)  # as interpreted functions
    assert mod.available()
    np_err = np.seterr(divide="ignore", invalid="ignore", over="ignore")  # numpy warnings of masked lanes
    yield mod
    np.seterr(**np_err)
    if old is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = old
    importlib.reload(prims)
    importlib.reload(mod)


def _tie_row(spec: FormatSpec, k: int) -> torch.Tensor:
    """Grid midpoints (exact RNE ties) next to the group maximum, so the scale is known."""
    grid = torch.tensor(spec.elem.grid(), dtype=torch.float64)
    mids = (grid[:-1] + grid[1:]) / 2
    top = spec.elem.max_normal
    if spec.family.value == "scaled":  # scale = amax / qmax = 1 with amax = qmax
        scale = 1.0
    elif spec.family.value == "nvfp4":
        scale = 1.0
    else:  # MX floor/even: 2**e with e = floor(log2 amax) - emax = 0 when amax = max_normal
        scale = 1.0
    vals = torch.cat([torch.tensor([top]), mids, -mids]) * scale
    reps = vals.repeat(k // vals.numel() + 1)[:k]
    return reps


def nasty(spec: FormatSpec, dtype: torch.dtype, k: int, seed: int = 0) -> torch.Tensor:
    """Rows: wide-range normals, NaN, +-Inf, signed zeros, subnormals, saturation, ties, tiny."""
    g = torch.Generator().manual_seed(seed)
    info = torch.finfo(dtype)
    rows = []
    mag = torch.logspace(-4, 4, k, dtype=torch.float64)
    rows.append(torch.randn(k, generator=g, dtype=torch.float64) * mag[torch.randperm(k, generator=g)])
    rows.append(torch.randn(k, generator=g, dtype=torch.float64))
    r = torch.randn(k, generator=g, dtype=torch.float64)
    r[k // 2] = float("nan")
    rows.append(r)
    r = torch.randn(k, generator=g, dtype=torch.float64)
    r[1], r[-1] = float("inf"), float("-inf")
    rows.append(r)
    r = torch.zeros(k, dtype=torch.float64)
    r[::3] = -0.0
    rows.append(r)
    sub = info.smallest_normal * torch.rand(k, generator=g, dtype=torch.float64)
    rows.append(torch.where(torch.arange(k) % 2 == 0, sub, -sub))
    big = info.max * (0.5 + 0.5 * torch.rand(k, generator=g, dtype=torch.float64))
    big[::5] = -info.max
    rows.append(big)
    rows.append(_tie_row(spec, k))
    # tiny values: amax under FP8 per-group's amax floor (1e-10), exact f64 constants matter
    rows.append(torch.randn(k, generator=g, dtype=torch.float64) * 3e-11)
    # a row whose one large element sits in the padded tail's group
    r = torch.randn(k, generator=g, dtype=torch.float64) * 1e-3
    r[-1] = 300.0
    rows.append(r)
    return torch.stack(rows).to(dtype)


def _run(tq, x, spec, rule="floor", axis=-1, global_amax=None):
    y = tq.qdq(x, spec, rule, axis, global_amax)
    r = qdq_reference(x, spec, rule, axis, global_amax)
    assert_same_bits(y, r)
    return y


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("name,rule", CASES, ids=[f"{n}-{r}" for n, r in CASES])
def test_every_format_rule_dtype(tq, name: str, rule: str, dtype: torch.dtype) -> None:
    spec = FORMATS[name]
    _run(tq, nasty(spec, dtype, 77), spec, rule)


@pytest.mark.parametrize("name", list(FORMATS))
def test_layouts(tq, name: str) -> None:
    """Odd K, multi-tile K, strided rows, batched axis != -1, 1-D, unfoldable strides."""
    spec = FORMATS[name]
    rule = "even" if spec.takes_scale_rule else "floor"
    g = torch.Generator().manual_seed(1)

    def rnd(*shape, dtype=torch.bfloat16):
        return (torch.randn(*shape, generator=g) * 3).to(dtype)

    _run(tq, rnd(2, 33), spec, rule)
    _run(tq, rnd(2, 1100), spec, rule)  # several K tiles for block recipes
    _run(tq, rnd(1, 300, dtype=torch.float16), spec, rule)  # a decode row
    _run(tq, rnd(3, 200)[:, ::2], spec, rule)  # element stride 2
    _run(tq, rnd(3, 160)[:, 5:105], spec, rule)  # row stride != K
    _run(tq, rnd(40, 3).t(), spec, rule)  # transposed: K runs along stride 3
    _run(tq, rnd(50, 4), spec, rule, axis=0)  # scale along the first axis
    _run(tq, rnd(2, 45, 3), spec, rule, axis=1)  # batched, axis in the middle
    _run(tq, rnd(2, 3, 37).permute(1, 0, 2), spec, rule, axis=-1)  # permuted leading dims
    _run(tq, rnd(4, 3, 5, 40)[::2, :, ::2], spec, rule, axis=-1)  # unfoldable: copy path
    _run(tq, rnd(70), spec, rule, axis=0)  # 1-D
    y = tq.qdq(rnd(2, 33).t().contiguous().t(), spec, rule, -1, None)
    assert y.stride() == (1, 2)  # output keeps a dense input's layout


def test_long_rows_two_sweeps(tq) -> None:
    """Per-row recipes above the single-tile limit sweep the row twice."""
    x = (torch.randn(2, tq._ROW_SINGLE_MAX + 300) * 5).to(torch.bfloat16)
    x[1, tq._ROW_SINGLE_MAX + 100] = float("nan")
    for name in ("fp8_e4m3_per_token", "int8_per_channel"):
        y = _run(tq, x, FORMATS[name])
        assert torch.isnan(y[1]).all() and not torch.isnan(y[0]).any()


@pytest.mark.parametrize("block", [16, 64])
def test_mx_block_sizes(tq, block: int) -> None:
    spec = get_format("mxfp8_e4m3", block)
    _run(tq, nasty(spec, torch.bfloat16, 100), spec, "rceil")


def test_nvfp4_global_amax(tq) -> None:
    spec = FORMATS["nvfp4"]
    x = nasty(spec, torch.bfloat16, 50)
    _run(tq, x, spec, global_amax=3.0)
    _run(tq, x, spec, global_amax=torch.tensor(1e4))
    # not fp32 values: rounded to fp32 as the reference does (an fp32 argument; a converted tensor)
    _run(tq, x, spec, global_amax=0.1)
    _run(tq, x, spec, global_amax=torch.tensor(0.3, dtype=torch.float64))
    _run(tq, x, spec, global_amax=torch.tensor([7.5], dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="global_amax must hold one value"):
        tq.qdq(x, spec, global_amax=torch.ones(2))
    _run(tq, torch.zeros(2, 32, dtype=torch.float16), spec)  # amax 0: zeros
    z = torch.zeros(2, 32)
    z[0, 3] = float("nan")  # NaN block only; the rest of the (all-zero) tensor gives zeros
    y = _run(tq, z, spec)
    assert torch.isnan(y[0, :16]).all() and not torch.isnan(y[0, 16:]).any()


def test_per_tensor_nan_poisons_whole_tensor(tq) -> None:
    x = torch.randn(3, 40, dtype=torch.bfloat16)
    x[2, 7] = float("inf")
    y = _run(tq, x, FORMATS["fp8_e4m3_per_tensor"])
    assert torch.isnan(y).all()


@pytest.mark.parametrize(("partials_max", "slots"), [(256, 32), (0, 32), (0, 3)],
                         ids=["partials", "atomics", "atomics-wrapping-slots"])
@pytest.mark.parametrize("tpp", [1, 3], ids=["tile-a-program", "3-tiles-a-program"])
@pytest.mark.parametrize("name", ["nvfp4", "fp8_e4m3_per_tensor"])
def test_amax_pass_reads_every_tile(tq, name: str, tpp: int, partials_max: int, slots: int, monkeypatch) -> None:
    """The amax pass folds every tile's result: a tensor of many tiles whose largest element, and
    then a NaN, sit in the last tile still gets the whole tensor's amax and flag; both ways of
    folding (one partial pair per program, reduced by the QDQ pass; ``atomic_max`` into
    ``ATOMIC_SLOTS`` zeroed pairs, fewer than the programs in the last case, reduced the same way),
    with one tile a program or three (``AMAX_TILES_PER_PROGRAM``; the last program's third tile
    past the end)."""
    monkeypatch.setattr(tq, "PARTIALS_MAX", partials_max)
    monkeypatch.setattr(tq, "ATOMIC_SLOTS", slots)
    monkeypatch.setattr(tq, "AMAX_TILES_PER_PROGRAM", tpp)
    spec = FORMATS[name]
    x = torch.randn(112, 2048, dtype=torch.bfloat16)
    tiles = tuple(tq.TILE_CONFIG[tq.kernel_class(spec)]), tuple(tq.TILE_CONFIG["amax"])
    a_r, a_k, _ = tq._plan(spec, "floor", 2048, 1, False, False, True, *tiles)[2]  # the amax pass's tile
    n_tiles = tq._cdiv(112, a_r) * tq._cdiv(2048, a_k)
    assert tq._cdiv(n_tiles, tpp) > 1 + slots * (slots < 8) and (tpp == 1 or n_tiles % tpp)  # slots reused
    x[-1, -1] = 900.0
    _run(tq, x, spec)
    x[0, 0] = 1000.0  # first tile
    _run(tq, x, spec)
    x[-1, -2] = float("nan")
    y = _run(tq, x, spec)
    assert torch.isnan(y).all() if name.endswith("per_tensor") else torch.isnan(y[-1, -16:]).all()


def test_mx_scale_extremes(tq) -> None:
    """amax at the fp32 top (e clamps at +127 - emax region) and at 2**-127 (e = -127)."""
    x = torch.zeros(2, 64, dtype=torch.float32)
    x[0, :32] = 3.0e38
    x[0, 32:] = torch.linspace(-1e38, 1e38, 32)
    x[1, :32] = 2.0**-127  # subnormal amax
    x[1, 32:] = 2.0**-149 * torch.arange(32)
    for name in ("mxfp4", "mxfp8_e5m2", "mxint8"):
        for rule in SCALE_RULES:
            _run(tq, x, FORMATS[name], rule)


def test_errors(tq) -> None:
    spec = FORMATS["mxfp4"]
    with pytest.raises(ValueError, match="unsupported input"):
        tq.qdq(torch.zeros(2, 32, dtype=torch.int32), spec)
    with pytest.raises(ValueError, match="global_amax"):
        tq.qdq(torch.zeros(2, 32), spec, "floor", -1, 1.0)
    with pytest.raises(ValueError, match="scale_rule"):
        tq.qdq(torch.zeros(2, 32), FORMATS["int8_per_token"], "ceil")
    with pytest.raises(ValueError, match="axis"):
        tq.qdq(torch.zeros(2, 32), spec, "floor", 2)
    assert tq.qdq(torch.zeros(0, 32), spec).shape == (0, 32)


def test_dispatch_switch(tq) -> None:
    """``backend="triton"`` reaches the kernels; the answer equals the reference backend's."""
    from vllm_qdq.qdq import quantize_dequantize

    x = torch.randn(3, 64, dtype=torch.bfloat16)
    a = quantize_dequantize(x, "mxfp6_e3m2", scale_rule="ceil", backend="triton")
    b = quantize_dequantize(x, "mxfp6_e3m2", scale_rule="ceil", backend="reference")
    assert_same_bits(a, b)


def test_custom_op_in_compiled_graph() -> None:
    """``torch.ops.vllm_qdq.qdq`` inside ``torch.compile(fullgraph=True)`` gives the same bits."""
    import vllm_qdq.activation.ops  # noqa: F401  (registers the op)
    from vllm_qdq.qdq import quantize_dequantize

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.vllm_qdq.qdq(x * 2, "mxfp4", "even", -1, None, None) + 1

    x = torch.randn(4, 70, dtype=torch.bfloat16)
    y = torch.compile(f, fullgraph=True)(x)
    assert_same_bits(y, quantize_dequantize(x * 2, "mxfp4", scale_rule="even") + 1)
    xt = torch.randn(64, 3).t()  # non-contiguous input: output strides match the fake impl
    y = torch.ops.vllm_qdq.qdq(xt, "nvfp4", "floor", -1, 2.0, None)
    assert y.stride() == torch.empty_like(xt).stride()
    assert_same_bits(y, quantize_dequantize(xt, "nvfp4", global_amax=2.0))
    torch.library.opcheck(torch.ops.vllm_qdq.qdq.default, (x, "int8_per_token", "floor", -1, None, None))


def test_ops_schema_and_no_gradient() -> None:
    """The ops keep the schema and tags they had as ``torch.library.custom_op`` ops (what compiled
    graphs and the compile cache's digest see), and refuse an input that needs a gradient with
    grad mode on, naming the fix; under no_grad the same input is served."""
    import vllm_qdq.activation.ops  # noqa: F401  (registers the ops)

    qdq, stats = torch.ops.vllm_qdq.qdq.default, torch.ops.vllm_qdq.qdq_stats.default
    assert str(qdq._schema) == (
        'vllm_qdq::qdq(Tensor x, str fmt, str scale_rule="floor", SymInt axis=-1, float? global_amax=None, '
        'SymInt? block_size=None, str rounding="nearest", SymInt? seed=None, str? rotate=None) -> Tensor')
    assert str(stats._schema) == (
        'vllm_qdq::qdq_stats(Tensor x, str fmt, str scale_rule, SymInt axis, str name, str rounding="nearest", '
        'SymInt? seed=None, str? rotate=None) -> Tensor')
    assert qdq.tags == stats.tags == [torch.Tag.pt2_compliant_tag]
    x = torch.randn(4, 64, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"no gradient.*torch\.no_grad"):
        torch.ops.vllm_qdq.qdq(x, "mxfp4", "floor", -1, None, None)
    with torch.no_grad():
        y = torch.ops.vllm_qdq.qdq(x, "mxfp4", "floor", -1, None, None)
    assert not y.requires_grad
    assert_same_bits(y, torch.ops.vllm_qdq.qdq(x.detach(), "mxfp4", "floor", -1, None, None))


def test_contiguous_rows_match_the_stride_walk(tq):
    """The eager fast path (contiguous, last axis) describes the rows exactly as ``_fold_rows``."""
    for shape in [(1, 64), (7, 64), (2, 3, 64), (1, 1, 64), (64,), (5, 1, 32), (3, 1), (1, 4, 1, 16)]:
        x = torch.zeros(shape)
        y = torch.empty_like(x)
        assert tq._rows(x, y, x.ndim - 1) == tq._fold_rows(x, y, x.ndim - 1), shape
    x = torch.zeros(1, 4).t()  # contiguous, last dim 1 with stride 4
    assert tq._rows(x, torch.empty_like(x), 1) == tq._fold_rows(x, torch.empty_like(x), 1)


def test_bad_recipe_raises_every_time_and_names_it(tq):
    """The recipe checks are cached per recipe, errors are not: a bad rule fails on every call,
    an unhashable one with the same ValueError, and a CPU tensor outside the interpreter says so."""
    x = torch.zeros(2, 32)
    for _ in range(2):
        with pytest.raises(ValueError, match="unknown scale_rule 'nope'"):
            tq.qdq(x, get_format("mxfp4"), "nope")
    with pytest.raises(ValueError, match="unknown scale_rule"):
        tq.qdq(x, get_format("mxfp4"), ["floor"])
    with pytest.raises(ValueError, match="global_amax applies to the NVFP4 family only"):
        tq.qdq(x, get_format("mxfp4"), global_amax=1.0)
    mp = pytest.MonkeyPatch()
    mp.setattr(tq, "interpreting", lambda: False)
    try:
        with pytest.raises(RuntimeError, match=r"needs Triton and a CUDA tensor .*got a cpu tensor"):
            tq.qdq(x, get_format("mxfp4"))
    finally:
        mp.undo()


def test_tile_tables_by_architecture(tq, tmp_path, monkeypatch):
    """The shipped tile tables load and name known classes; the first CUDA launch's architecture
    picks its table once per process (classes it leaves out keep the defaults); an unknown
    architecture keeps the defaults; a bad entry is a ValueError naming it."""
    import json

    shipped = tq.tile_configs()
    assert "sm_90" in shipped and all(set(t) <= set(tq.TILE_CONFIG) for t in shipped.values())
    f = tmp_path / "tiles.json"
    f.write_text(json.dumps({"_about": "x", "sm_100": {"mx": [8192, 8]}}))
    defaults = dict(tq.TILE_CONFIG)
    monkeypatch.setattr(tq, "TILE_CONFIG", dict(defaults))
    real = tq.tile_configs
    monkeypatch.setattr(tq, "tile_configs", lambda path=f: real(path))
    monkeypatch.setattr(tq, "_tiles_arch", [])
    monkeypatch.setattr(tq, "arch_key", lambda device=None: "sm_100")
    assert tq.use_tiles_for() == "sm_100"
    assert tq.TILE_CONFIG == {**defaults, "mx": (8192, 8)}
    monkeypatch.setattr(tq, "arch_key", lambda device=None: "sm_90")
    assert tq.use_tiles_for() == "sm_100"  # once per process
    monkeypatch.setattr(tq, "TILE_CONFIG", dict(defaults))
    monkeypatch.setattr(tq, "_tiles_arch", [])
    monkeypatch.setattr(tq, "arch_key", lambda device=None: "sm_75")
    assert tq.use_tiles_for() is None and tq.TILE_CONFIG == defaults
    for bad, name in (({"sm_90": {"mx": [0, 4]}}, "sm_90.mx=[0, 4]"), ({"sm_90": {"mix": [4096, 4]}}, "sm_90.mix"),
                      ({"sm_90": [1]}, "sm_90 must be an object")):
        f.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=re.escape(name)):
            real(f)


def test_div_rn_f64_is_division(tq) -> None:
    """The float64 quotient of the scaled recipes (a reciprocal pair, a faithful first quotient,
    one FMA correction: ``triton_qdq._div_rn_f64``) equals ``a / b`` bit for bit in the interpreter (its
    FMA is fused): 1M pairs in the recipes' domain (``b = amax / qmax``, ``|a| <= amax``, signed
    zeros), where the product alone is off in about a quarter of them."""
    import tests.support.triton_qdq_kernels as k

    k = importlib.reload(k)
    g = torch.Generator().manual_seed(5)
    n = 1 << 20
    amax = torch.exp2(torch.empty(n, dtype=torch.float64).uniform_(-120, 120, generator=g)).float()
    a = (amax * torch.empty(n).uniform_(-1, 1, generator=g)).float()
    a[:500], a[500:1000] = 0.0, -0.0
    qmax = torch.tensor([448.0, 127.0, 57344.0], dtype=torch.float64)[torch.randint(0, 3, (n,), generator=g)]
    b = amax.double() / qmax
    q = torch.empty(n, dtype=torch.float64)
    k.div_f64_kernel[(16,)](a, b, q, n, BLOCK=n // 16)
    assert_same_bits(q, a.double() / b)
    assert torch.equal(torch.signbit(q[500:1000]), torch.ones(500, dtype=torch.bool))


def test_div_rn_f32_is_division(tq) -> None:
    """The fp32 quotient of the per-token FP8 recipe (reciprocal once, then a product and two FMA
    corrections: ``triton_qdq._div_rn``) equals ``a / b`` bit for bit in the interpreter (its
    FMA is fused): every finite bf16 and fp16 value as ``a`` against 48 scales each, and 1M fp32
    pairs, all in the recipe's domain (``b = fp32(amax / 448)`` at least its scale floor, ``|a| <=
    amax``, signed zeros): bit for bit from ``|a / b| >= 2**-60``; below, where the remainders can
    underflow, within an ulp and of ``a``'s sign (the recipe's grid, from 2**-9, rounds it to zero)."""
    import tests.support.triton_qdq_kernels as k

    k = importlib.reload(k)
    g = torch.Generator().manual_seed(7)
    bits = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16)
    halves = [v for v in (bits.view(torch.bfloat16).float(), bits.view(torch.float16).float())]
    a_small = torch.cat([v[torch.isfinite(v)] for v in halves])
    amax = a_small.abs().max().item()
    n_b = 48  # per value: amax from |a| (the row's largest element) up to 2**20 |a| above it
    a1 = a_small.repeat(n_b)
    grow = torch.exp2(torch.empty(a1.numel(), dtype=torch.float64).uniform_(0, 20, generator=g))
    grow[: a_small.numel()] = 1.0
    row_amax = torch.where(a1 == 0, torch.tensor(1.0, dtype=torch.float64), a1.abs().double() * grow)
    b1 = torch.maximum((row_amax.clamp(max=3.4e38) / 448.0).float(), torch.tensor(1.0 / (448.0 * 512.0)))
    n = 1 << 20
    amax2 = torch.exp2(torch.empty(n, dtype=torch.float64).uniform_(-120, 120, generator=g)).float()
    a2 = (amax2 * torch.empty(n).uniform_(-1, 1, generator=g)).float()
    a2[:500], a2[500:1000] = 0.0, -0.0
    b2 = torch.maximum((amax2.double() / 448.0).float(), torch.tensor(1.0 / (448.0 * 512.0)))
    a, b = torch.cat([a1, a2]), torch.cat([b1, b2])
    q = torch.empty_like(a)
    block = 1 << 18
    k.div_f32_kernel[(-(-a.numel() // block),)](a, b, q, a.numel(), BLOCK=block)
    assert amax > 6e4 and a1.numel() > 6_000_000
    ref = a / b
    big = ref.abs() >= 2.0**-60  # below, the remainders can underflow: an ulp off, far under any grid
    assert big.float().mean() > 0.85  # (bf16 spans 2**-133 .. 2**128: some of its values are tiny)
    assert_same_bits(q[big], ref[big])
    assert (q[~big].abs() < 2.0**-59).all() and torch.equal(torch.signbit(q[~big]), torch.signbit(ref[~big]))
    assert torch.equal(torch.signbit(q[a1.numel() + 500:a1.numel() + 1000]), torch.ones(500, dtype=torch.bool))


def test_tile_amax_bits_from_signed_and_unsigned_maxima(tq) -> None:
    """``_tile_amax_bits`` (the amax pass's tile maximum: signed and unsigned integer maxima of the
    raw fp32 patterns, in runs of ``PART``; the finite maximum reduced again only where a NaN or
    Inf is) gives what the plain form gives, ``(max finite |x| pattern, some |x| not finite)``, for
    tiles all negative, all zero of either sign, all NaN of either sign, all Inf, subnormal, mixed,
    and random patterns, in runs of 1 to the whole tile."""
    import tests.support.triton_qdq_kernels as k

    k = importlib.reload(k)
    pool = np.array([0, 0x80000000, 1, 0x80000001, 0x3F800000, 0xBF800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000,
                     0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF, 0x00400000, 0x80400000],
                    dtype=np.uint32).view(np.int32)
    rng = np.random.default_rng(5)
    n = 16
    tiles = [np.full(n, v, dtype=np.uint32).view(np.int32) for v in (0, 0x80000000, 0x7FC00000, 0xFFC00000,
                                                                       0xFF800000, 0x80000001)]
    tiles.append((-np.abs(rng.standard_normal(n)).astype(np.float32)).view(np.int32))  # all negative
    tiles += [pool[rng.integers(0, len(pool), n)] for _ in range(40)]
    tiles += [rng.integers(-(2**31), 2**31, n, dtype=np.int64).astype(np.int32) for _ in range(20)]
    for i, b in enumerate(tiles):
        a = b & 0x7FFFFFFF
        want = [int(np.where(a <= 0x7F7FFFFF, a, 0).max()), int(a.max() > 0x7F7FFFFF)]
        part = (1, 2, 4, 8, 16)[i % 5]
        o = torch.zeros(2, dtype=torch.int32)
        k.tile_amax_bits_kernel[(1,)](torch.from_numpy(b.copy()).view(torch.float32), o, n, part)
        assert o.tolist() == want, (i, part, [hex(v & 0xFFFFFFFF) for v in b], o.tolist(), want)


#: the two-pass cases, rotated ones in both whole-blocks-per-thread layouts (``ROT_COALESCE``)
TWO_PASS = [(n, o, c) for n, o in two_pass.CASES for c in ((True, False) if "rotate" in o else (True,))]
TWO_PASS_IDS = [f"{i}{'' if c else '-uncoalesced'}" for i, (n, o) in zip(two_pass.IDS, two_pass.CASES, strict=True)
                for c in ((True, False) if "rotate" in o else (True,))]


@pytest.mark.parametrize("path", two_pass.PATHS)
@pytest.mark.parametrize(("name", "opts", "coalesce"), TWO_PASS, ids=TWO_PASS_IDS)
def test_two_pass_paths_agree(tq, name: str, opts: dict, coalesce: bool, path: str, monkeypatch) -> None:
    """The four ways a two-pass recipe gets its tensor amax (one tile reducing its own amax, an
    amax pass of partial pairs, of atomics, the streaming amax pass) give the reference's bits, NaN/Inf rows
    included (NVFP4's global amax is over the finite elements); rotated, with the tile loaded
    coalesced (where the recipe takes it) and in the blocks' own layout."""
    from vllm_qdq.numerics.qdq import quantize_dequantize

    two_pass.force_path(tq, path, monkeypatch)
    monkeypatch.setattr(tq, "ROT_COALESCE", coalesce)
    streamed = []
    if path == "stream":  # small amax tiles: 8 of them, 4 programs (2 "SMs" here), 2 tiles a program
        monkeypatch.setitem(tq.TILE_CONFIG, "amax", (256, 1))
        sms = tq._sm_count
        monkeypatch.setattr(tq, "_sm_count", lambda d: streamed.append(d) or sms(d))
    spec = FORMATS[name]
    x = nasty(spec, torch.bfloat16, 256)[:8]  # 8 rows x 256: one tile of 2048 when allowed
    assert tq._one_tile(spec, 8, 256, 64) == (path == "one_tile")
    for xi in (x, x[2:], x.abs()[5:7] * 1e-3):
        assert_same_bits(quantize_dequantize(xi, name, backend="triton", **opts),
                         quantize_dequantize(xi, name, backend="reference", **opts))
    if path == "stream":  # taken by the unrotated calls (rotated ones keep the atomics' pass)
        assert bool(streamed) == ("rotate" not in opts), streamed


#: The float64 recipes (scale amax / qmax, not a power of two, not fp32 math): FP8 per-tensor,
#: per-channel, per-group128 and INT8 run in fp32 for 16-bit tensors (``_scaled_qdq_narrow``).
F64_RECIPES = ["fp8_e4m3_per_tensor", "fp8_e4m3_per_channel", "fp8_e4m3_per_group128", "int8_per_token",
               "int8_per_channel"]


@pytest.mark.parametrize("name", ["fp8_e4m3_per_channel", "fp8_e4m3_per_group128", "int8_per_channel"])
def test_narrow_form_equals_float64_form(tq, name: str) -> None:
    """The fp32 form of a float64 recipe (``_scaled_qdq_narrow``: ``x * qmax / amax`` and ``q *
    amax / qmax`` as faithful fp32 quotients, INT8's ``|x| = amax / 2`` from the float64 order)
    gives the float64 form's bits (``_scaled_qdq_f64``, the reference's order) after the 16-bit
    output cast: every bf16 ``amax`` of three binades (1, 2**-32 and 2**99: the ends of the range
    the form is taken for) against every bf16 ``x`` with ``amax * 2**-40 <= |x| <= amax``, signed
    zeros; fp16 ``amax`` in [1, 2) and in [2**-10, 2**-9) (subnormal fp16 outputs; those a factor
    of 7 or 127 divides, and 32 more) against every fp16 ``x`` up to it. ``QDQ_EXHAUSTIVE=1``:
    every bf16 ``amax`` in [2**-32, 2**100] (x down to ``amax * 2**-45``), every fp16 ``amax`` in
    [1, 2), below 2**-14 and above 2**15, and every binade between thinned (``fp16_amax_thin``, x
    down to ``amax * 2**-21``) (2026-12-04, FP8 per-channel and INT8: none differ; counts in the
    README). For bf16, scaling ``x`` and ``amax`` by a power of two changes no operation's rounding
    inside that range, which is why three binades stand for it in the quick run; fp16 outputs turn
    subnormal below 2**-14, so there each binade is its own case."""
    import tests.support.triton_qdq_kernels as k

    k = importlib.reload(k)
    spec = FORMATS[name]
    full = os.environ.get("QDQ_EXHAUSTIVE") == "1"
    if full:
        cases = [(torch.bfloat16, [(2.0**-32, 2.0**100 * 1.001)], 2.0**-45, None),
                 (torch.float16, [(1, 2), (0, 2.0**-14), (2.0**15, 7e4)], 0.0, None),
                 (torch.float16, [(2.0**-14, 1), (2, 2.0**15)], 2.0**-21, fp16_amax_thin)]
    else:
        cases = [(torch.bfloat16, [(1, 2), (2.0**-32, 2.0**-31), (2.0**99, 2.0**100 * 1.001)], 2.0**-40, None),
                 (torch.float16, [(1, 2)], 0.0, fp16_amax_sample),
                 (torch.float16, [(2.0**-10, 2.0**-9)], 0.0, fp16_amax_sample)]  # subnormal fp16 outputs
    for dtype, ranges, rel, pick in cases:
        x, amax = narrow_pairs(dtype, ranges, rel, pick)
        n = x.numel()
        fast, slow = torch.empty(n, dtype=dtype), torch.empty(n, dtype=dtype)
        block = 1 << 20
        k.scaled_paths_kernel[(-(-n // block),)](x, amax, fast, slow, n, SPEC=spec, BLOCK=block)
        diff = (fast.view(torch.int16) != slow.view(torch.int16)).nonzero().flatten()
        where = [(x[i].item(), amax[i].item(), fast[i].item(), slow[i].item()) for i in diff[:4].tolist()]
        assert diff.numel() == 0, f"{dtype}: {diff.numel()} of {n} differ, (x, amax, fp32 form, float64 form): {where}"
        if not full:
            assert n > 300_000


@pytest.mark.parametrize("name", F64_RECIPES)
def test_narrow_form_taken_where_it_applies(tq, name: str, monkeypatch) -> None:
    """16-bit tensors take the fp32 form of the float64 recipes, tile by tile where every group's
    amax is 0 or in [2**-32, 2**100]; other tiles, fp32 tensors and rotated ones keep the float64
    form. Shown with the float64 form replaced by NaN: the kernels then match the reference
    exactly where the fp32 form ran and give NaN where the float64 form did."""
    import tests.support.triton_qdq_kernels as k

    k = importlib.reload(k)
    monkeypatch.setattr(tq, "_scaled_qdq_f64", k.nan_qdq_f64)
    spec = FORMATS[name]
    g = torch.Generator().manual_seed(3)
    for dtype in (torch.bfloat16, torch.float16):
        x = (torch.randn(16, 512, generator=g) * 3).to(dtype)
        x[3] = 0.0
        assert_same_bits(tq.qdq(x, spec), qdq_reference(x, spec))
    x = (torch.randn(16, 512, generator=g) * 3).float()
    assert tq.qdq(x, spec).isnan().all()  # fp32 in: the float64 form
    x = (torch.randn(64, 512, generator=g) * 3).to(torch.bfloat16)
    if spec.granularity.value == "tensor":
        assert tq.qdq(x * 2.0**-40, spec).isnan().all()  # tensor amax under 2**-32: the float64 form
        return
    x[5] *= 2.0**-40  # a row (and its groups) under 2**-32: its tile takes the float64 form
    y = tq.qdq(x, spec)
    fine = ~y.isnan()
    assert not fine[5].any() and fine.sum() >= x.numel() // 2  # the other tiles: the fp32 form
    assert_same_bits(y[fine], qdq_reference(x, spec)[fine])
    if spec.granularity.value == "row":  # rows longer than one tile: two sweeps, the same choice per row
        x = (torch.randn(3, 8200, generator=g) * 3).to(torch.bfloat16)
        x[1] *= 2.0**120
        y = tq.qdq(x, spec)
        assert y[1].isnan().all() and not y[[0, 2]].isnan().any()
        assert_same_bits(y[[0, 2]], qdq_reference(x, spec)[[0, 2]])


def test_pow2_scale_from_bits(tq) -> None:
    """The power-of-two scale of FP8 per-group128 UE8M0 from the amax's bits (``_scaled_scale``
    with ``pow2_seven_shift``: ``e - 8 + (m > 1.75)``, the floor's code under 1e-10) equals the
    reference's float64 ``2**ceil(log2(max(amax, 1e-10) / 448))``: every bf16 and fp16 amax, and
    every fp32 exponent with significands around 1.75 and at random (~1.1M values)."""
    from vllm_qdq.numerics.reference import _scaled_scale

    import tests.support.triton_qdq_kernels as k

    k = importlib.reload(k)
    for name in ("fp8_e4m3_per_group128_ue8m0", "fp8_e4m3_per_group128"):
        spec = FORMATS[name]
        assert (spec.pow2_seven_shift >= 0) == spec.pow2_scale
        a = amax_values()
        s = torch.empty(a.numel(), dtype=torch.float64)
        k.scale_kernel[(-(-a.numel() // (1 << 18)),)](a, s, a.numel(), SPEC=spec, BLOCK=1 << 18)
        assert_same_bits(s, _scaled_scale(a.double(), spec))
        assert a.numel() > 1_000_000


def test_fp32_scale_of_per_token(tq) -> None:
    """FP8 per-token's scale in fp32 (``_scaled_scale`` with ``fp32_scale_floor``: ``max(RN32(amax
    / 448), RN32(floor))`` by the fp32 division helper) equals the reference's ``RN32(max(RN64(amax
    / 448), floor))``: every bf16 and fp16 amax, every fp32 exponent with significands around
    1.75 and at random, and every 8th significand of three binades above the floor (the
    quotient's double rounding)."""
    from vllm_qdq.numerics.reference import _scaled_scale

    import tests.support.triton_qdq_kernels as k

    k = importlib.reload(k)
    spec = FORMATS["fp8_e4m3_per_token"]
    assert spec.fp32_scale_floor > 0 and all(f.fp32_scale_floor < 0 for n, f in FORMATS.items() if n != spec.name)
    a = scale_amaxes()
    s = torch.empty(a.numel(), dtype=torch.float64)
    k.scale_kernel[(-(-a.numel() // (1 << 18)),)](a, s, a.numel(), SPEC=spec, BLOCK=1 << 18)
    assert_same_bits(s, _scaled_scale(a.double(), spec).float().double())
    assert a.numel() > 4_000_000
