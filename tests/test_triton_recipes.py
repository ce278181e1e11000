"""Issue 18 options in the Triton kernels (CPU interpreter): bit for bit with the oracle's vectors
and with the reference (rotation fused into block kernels, composed around per-row kernels;
stochastic rounding independent of the tiling; four over six; nvfp4_e5m3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from vllm_qdq.numerics.formats import FORMATS, Family, Granularity
from vllm_qdq.numerics.qdq import quantize_dequantize

from tests.support.bits import assert_same_bits

from .test_recipe_vectors import DATA, bf16, bits
from .test_triton_qdq import tq  # noqa: F401  (the interpreter fixture)

MANIFEST = json.loads((DATA / "manifest.json").read_text())


@pytest.mark.parametrize("entry", MANIFEST["files"], ids=lambda e: e["file"])
def test_triton_matches_oracle_vectors(tq, entry: dict) -> None:  # noqa: F811
    d = np.load(DATA / entry["file"])
    x, y = bf16(d["x_bf16_bits"]), bf16(d["y_bf16_bits"])
    recipe = dict(entry["recipe"])
    fmt = recipe.pop("fmt")
    out = quantize_dequantize(x, fmt, backend="triton", **recipe)
    differ = bits(out) != bits(y)
    assert not differ.any(), f"{int(differ.sum())} of {differ.numel()} elements differ"


CASES = [
    ("mxfp4", {"rotate": {"block": 128, "seed": 3}}),
    ("mxfp8_e4m3", {"rotate": {"block": 16}, "scale_rule": "rceil"}),
    ("nvfp4", {"rotate": {"block": 64, "seed": 1}}),  # tensor amax of R x: the rotating amax pass
    ("nvfp4_e5m3", {"scale_rule": "four_over_six", "rounding": "stochastic", "seed": 8}),
    ("fp8_e4m3_per_tensor", {"rotate": {"block": 32}}),
    ("fp8_e4m3_per_token", {"rotate": {"block": 32, "pad": True}}),  # per-row: composed in torch
    ("fp8_e4m3_per_group128", {"rotate": {"block": 256, "pad": True}}),
    ("mxint8", {"rounding": "stochastic", "seed": 2**40 + 3}),
    ("mxfp6_e2m3", {"rounding": "stochastic", "rotate": {"block": 32, "seed": 0}}),
    ("mxfp4", {"rotate": {"block": 64, "seed": 2, "pad": True}}),  # K = 300: padded, blocks in a thread
    ("nvfp4", {"rotate": {"block": 32, "pad": True}, "rounding": "stochastic", "seed": 4}),
    ("mxfp4", {"rotate": {"block": 64, "seed": 6}, "rounding": "stochastic", "seed": 11}),  # coalesced, stochastic
    ("nvfp4", {"rotate": {"block": 128, "pad": True}}),  # coalesced, the anchor, K = 300 padded
    ("nvfp4", {"rotate": {"block": 128, "seed": 5, "pad": True}}),  # the inverse's multipliers past K
    ("mxfp4", {"rotate": {"block": 256, "seed": 4}}),  # split over threads (ROT_SPLIT: halves or quarters), random
    ("nvfp4", {"rotate": {"block": 256}}),  # split, the rotating amax pass too
    ("mxfp8_e4m3", {"rotate": {"block": 256, "pad": True}, "scale_rule": "rceil"}),  # split, padded
]


#: (ROT_TILE_MAX, ROT_COALESCE, every part size: HELD_SWITCHES) of each rotation layout: whole
#: blocks (up to 128) in a thread, loaded and stored coalesced where the recipe takes it (MX, NVFP4:
#: blocks of 64 and up); the same, loaded and stored in that layout; the tile's own layout; and
#: blocks of 128 and up held in parts of 64 (Hadamard-128 as halves, Hadamard-256 as quarters:
#: ROT_SPLIT's stages across lanes; the MX recipes' default)
LAYOUTS = {"blocks-in-thread": (128, True, 128), "uncoalesced": (128, False, 128), "tile-layout": (0, True, 128),
           "held-64": (128, True, 64), "held-32": (128, True, 32)}


def _layout_cases(cases: list) -> list:
    """``(layout, case)`` params: every case in each layout but ``held-64`` and ``held-32``, which
    take only the cases they change (rotation blocks larger than the part)."""
    return [pytest.param(layout, *case, id=f"{layout}-{case[0]}-{i}") for layout in LAYOUTS
            for i, case in enumerate(cases)
            if not layout.startswith("held-") or case[1].get("rotate", {}).get("block", 0) > LAYOUTS[layout][2]]


def _set_layout(tq, monkeypatch, layout: str) -> tuple[int, bool]:  # noqa: F811
    """Set ``layout``'s switches on ``tq``; returns ``(ROT_TILE_MAX, ROT_COALESCE)``."""
    rot_tile_max, coalesce, held_max = LAYOUTS[layout]
    monkeypatch.setattr(tq, "ROT_TILE_MAX", rot_tile_max)
    monkeypatch.setattr(tq, "ROT_COALESCE", coalesce)
    for name in tq.HELD_SWITCHES:
        monkeypatch.setattr(tq, name, held_max)
    return rot_tile_max, coalesce


def _spy_plan(tq, monkeypatch, take) -> list:  # noqa: F811  (tq: the fixture's module, passed on)
    """Spy on ``tq._plan``: the list it returns gets ``take(plan)`` per plan worked out (``_plan``'s
    tuple; ``take`` may return None to record nothing)."""
    seen: list = []
    plan = tq._plan

    def spy(*args, **kwargs):
        out = plan(*args, **kwargs)
        if (got := take(out)) is not None:
            seen.append(got)
        return out

    monkeypatch.setattr(tq, "_plan", spy)
    return seen


def _record_plan(tq, monkeypatch, *keys: str) -> list[tuple]:  # noqa: F811
    """:func:`_spy_plan` of the constexpr values of ``keys`` (``_plan``'s last item)."""
    return _spy_plan(tq, monkeypatch, lambda out: tuple(out[-1].get(k) for k in keys))


def test_lane_shuffles_where_a_thread_holds_whole_parts(tq, monkeypatch) -> None:  # noqa: F811
    """``ROT_SHFL`` (a split block's cross-lane stages by ``shfl.sync.bfly`` in PTX on the GPU): set
    in a pass's constexprs when its block is split over lanes in the coalesced layout (MX, NVFP4)
    and its tile gives every thread whole parts, for the QDQ pass and the rotating amax pass each by
    its own tile; not in the blocks' own layout (FP8 per-tensor: its layout follows the rows'
    alignment), not for a block held
    whole, not for a decode-sized two-pass call's one tile (a part's chunks spread over lanes there), not
    with the switch off. The interpreter takes the reductions either way: the same bits."""
    planned = _record_plan(tq, monkeypatch, "ROT_SHFL", "BLOCK_R", "num_warps")
    # the amax pass's (block_r, block_k, kwargs), where the call has one
    amax_planned = _spy_plan(tq, monkeypatch, lambda out: None if out[2] is None else out[2][2].get("ROT_SHFL"))
    planned_q = _record_plan(tq, monkeypatch, "ROT_SHFL")
    cases = (("mxfp4", 256, 128, True, True), ("mxfp4", 64, 128, True, False), ("nvfp4", 256, 128, True, True),
             ("fp8_e4m3_per_tensor", 256, 128, True, False), ("mxfp4", 256, 1, True, True), ("nvfp4", 256, 1, True, False),
             ("mxfp4", 256, 128, False, False))
    for fmt, block, rows, switch, want in cases:
        monkeypatch.setattr(tq, "ROT_SHFL", switch)
        planned.clear()
        planned_q.clear()
        amax_planned.clear()
        x = torch.randn(rows, 256).to(torch.bfloat16)
        kw = {"rotate": {"block": block}}
        assert_same_bits(quantize_dequantize(x, fmt, backend="triton", **kw),
                         quantize_dequantize(x, fmt, backend="reference", **kw))
        assert set(planned_q) == {(want,)}, (fmt, block, rows, switch, planned_q)
        if amax_planned and rows > 1:  # a two-pass recipe's rotating amax pass (launched: not one tile)
            assert set(amax_planned) == {want}, (fmt, block, rows, switch, amax_planned)
    assert tq._shfl_ok(True, 4096, 2, 128, 2, 6) and not tq._shfl_ok(True, 2048, 2, 128, 2, 6)
    assert not tq._shfl_ok(True, 4096, 2, 128, 0, 6) and not tq._shfl_ok(True, 4096, 2, 64, 2, 6)


def test_coalesced_rotation_anchor_has_its_own_base(tq, monkeypatch) -> None:  # noqa: F811
    """The coalesced layout's anchor load (``_block_anchor``, which reads nothing) takes its base
    from ``_anchor_base`` (ours, aligned), not from the buffer a given NVFP4 global amax tensor
    fills (the caller's, possibly a view 4 bytes into its storage), so its layout, which the lane
    shuffles are planned for, does not follow the caller's pointer; the bits stay the reference's."""
    launched: list = []
    real = tq._qdq_block_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launched.append(args[3])  # sign_ptr
                return real[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(tq, "_qdq_block_kernel", Spy())
    g = torch.tensor([0.0, 700.0])[1:]
    x = torch.randn(4, 512).to(torch.bfloat16)
    kw = {"rotate": {"block": 256}, "global_amax": g}
    assert_same_bits(quantize_dequantize(x, "nvfp4", backend="triton", **kw),
                     quantize_dequantize(x, "nvfp4", backend="reference", **kw))
    assert launched and all(a is tq._anchor_base(x.device) for a in launched), launched


def test_part_held_follows_rot_split_and_is_checked(tq, monkeypatch) -> None:  # noqa: F811
    """The part of a block a thread holds (``ROT_HELD``): MX parts of 64 by default; with
    ``ROT_SPLIT`` off, blocks up to ``ROT_TILE_MAX`` held whole and larger ones in the tile's layout
    (none split); a part size other than 32, 64 or 128 stops the call, naming the setting."""
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 0)
    planned = _record_plan(tq, monkeypatch, "ROT_TILE", "ROT_HELD")
    x = torch.randn(4, 512).to(torch.bfloat16)
    for split, block, want in ((True, 128, (2, 6)), (True, 256, (2, 6)), (False, 128, (2, 7)), (False, 256, (0, 0))):
        monkeypatch.setattr(tq, "ROT_SPLIT", split)
        planned.clear()
        assert_same_bits(quantize_dequantize(x, "mxfp4", backend="triton", rotate={"block": block, "seed": 1}),
                         quantize_dequantize(x, "mxfp4", backend="reference", rotate={"block": block, "seed": 1}))
        assert set(planned) == {want}, (split, block, planned)
    monkeypatch.setattr(tq, "ROT_SPLIT", True)
    monkeypatch.setattr(tq, "ROT_HELD_MAX_MX", 16)
    with pytest.raises(ValueError, match=r"ROT_HELD_MAX_MX = 16; accepted: 32, 64, 128"):
        quantize_dequantize(x, "mxfp4", backend="triton", rotate={"block": 128})


def test_amax_pass_holds_its_own_part(tq, monkeypatch) -> None:  # noqa: F811
    """The amax pass of a rotated two-pass recipe holds blocks in parts of ``ROT_HELD_MAX_AMAX``
    where that is larger than the QDQ pass's ``ROT_HELD_MAX_NVFP4`` (0: the QDQ pass's), with a tile of at
    least a part a thread; the bits stay the reference's, on rows of one sign before the rotation,
    of zeros, and with NaN and Inf (the finite maximum reduced again; the tile maximum's cases:
    ``test_triton_qdq.py::test_tile_amax_bits_from_signed_and_unsigned_maxima``); a part size other
    than 0, 32, 64 or 128 stops the call, naming the setting."""
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 0)
    monkeypatch.setattr(tq, "ROT_HELD_MAX_NVFP4", 32)

    def amax_part(out):  # (the amax pass's part, the QDQ pass's, a part a thread at least) or None
        if out[2] is None:
            return None
        a_r, a_k, a_kw = out[2]
        return a_kw["ROT_HELD"], out[-1]["ROT_HELD"], a_r * a_k >= (32 << a_kw["ROT_HELD"]) * a_kw["num_warps"]

    seen = _spy_plan(tq, monkeypatch, amax_part)
    torch.manual_seed(3)
    x = torch.randn(6, 512)
    x[1] = -x[1].abs()  # a row of one sign (the rotation mixes the signs)
    x[2] = 0.0
    x[3, 9], x[4, 100] = float("nan"), float("-inf")
    x = x.to(torch.bfloat16)
    for amax_held, want in ((0, 5), (32, 5), (64, 6), (128, 7)):
        monkeypatch.setattr(tq, "ROT_HELD_MAX_AMAX", amax_held)
        for xi in (x, x[1:2], x[:3], x[3:5]):
            seen.clear()
            for kw in ({"rotate": {"block": 128, "seed": 1}}, {"rotate": {"block": 256}}):
                assert_same_bits(quantize_dequantize(xi, "nvfp4", backend="triton", **kw),
                                 quantize_dequantize(xi, "nvfp4", backend="reference", **kw))
            assert seen and set(seen) == {(want, 5, True)}, (amax_held, seen)
    monkeypatch.setattr(tq, "ROT_HELD_MAX_NVFP4", 64)  # never less than the QDQ pass's part
    monkeypatch.setattr(tq, "ROT_HELD_MAX_AMAX", 32)
    seen.clear()
    quantize_dequantize(x, "nvfp4", backend="triton", rotate={"block": 128})
    assert set(seen) == {(6, 6, True)}, seen
    monkeypatch.setattr(tq, "ROT_HELD_MAX_AMAX", 48)
    with pytest.raises(ValueError, match=r"ROT_HELD_MAX_AMAX = 48; accepted: 0 \(the QDQ pass's part size\), 32, 64, 128"):
        quantize_dequantize(x, "nvfp4", backend="triton", rotate={"block": 128})


@pytest.mark.parametrize("cap", [168, 200])
def test_register_cap_reaches_the_plan(tq, cap: int, monkeypatch) -> None:  # noqa: F811
    """A register cap set (``ROT_MAXNREG``; 0, none, by default since 2026-12-06) reaches the QDQ
    pass's launch options where blocks of 128 and up are held whole and loaded coalesced, and
    nowhere else (Hadamard-64, the amax pass); the bits stay the reference's (a cap moves values,
    it does not round them; the bench's "cap" columns time it)."""
    monkeypatch.setattr(tq, "ROT_MAXNREG", cap)
    monkeypatch.setattr(tq, "ROT_HELD_MAX_MX", 128)  # blocks of 128 held whole (the MX default holds 64s,
    monkeypatch.setattr(tq, "ROT_HELD_MAX_NVFP4", 128)  # NVFP4's 32s)
    monkeypatch.setattr(tq, "ROT_TILE_MAX", 128)
    monkeypatch.setattr(tq, "ROT_COALESCE", True)
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 0)
    planned = _record_plan(tq, monkeypatch, "ROT_TILE", "maxnreg")
    torch.manual_seed(1)
    x = torch.randn(4, 512).to(torch.bfloat16)
    for fmt, rot, want in (("mxfp4", {"block": 128, "seed": 3}, cap), ("nvfp4", {"block": 128, "seed": 3}, cap),
                           ("mxfp4", {"block": 64, "seed": 3}, None)):
        planned.clear()
        assert_same_bits(quantize_dequantize(x, fmt, backend="triton", rotate=rot),
                         quantize_dequantize(x, fmt, backend="reference", rotate=rot))
        assert (2, want) in planned and all(p[1] in (want, None) for p in planned), (fmt, rot, planned)


def test_parts_of_64_register_cap_reaches_the_plan(tq, monkeypatch) -> None:  # noqa: F811
    """``ROT_MAXNREG_64`` (0, none, by default) caps the QDQ pass where a thread holds a part of 64
    of a larger block loaded coalesced (NVFP4 with ``ROT_HELD_MAX_NVFP4 = 64``; MX's parts), and
    nowhere else (blocks of 64 held whole, parts of 32, the amax pass); the bits stay the
    reference's (the bench's "held 64 cap 96" column times it)."""
    monkeypatch.setattr(tq, "ROT_MAXNREG_64", 96)
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 0)
    seen = _spy_plan(tq, monkeypatch, lambda out: (out[-1].get("maxnreg"),
                                                   None if out[2] is None else out[2][2].get("maxnreg")))
    torch.manual_seed(2)
    x = torch.randn(4, 512).to(torch.bfloat16)
    for fmt, held, block, want in (("nvfp4", 64, 128, 96), ("nvfp4", 64, 64, None), ("nvfp4", 32, 128, None),
                                   ("mxfp4", 64, 256, 96), ("mxfp8_e4m3", 128, 256, None)):
        monkeypatch.setattr(tq, tq._held_switch(FORMATS[fmt]), held)
        seen.clear()
        kw = {"rotate": {"block": block, "seed": 4}}
        assert_same_bits(quantize_dequantize(x, fmt, backend="triton", **kw),
                         quantize_dequantize(x, fmt, backend="reference", **kw))
        assert set(seen) == {(want, None)}, (fmt, held, block, seen)


def _held_max(mod, fmt: str) -> int:
    """The part of a rotation block a thread holds at most for ``fmt`` (``ROT_HELD_MAX_MX`` for MX)."""
    return getattr(mod, mod._held_switch(FORMATS[fmt]))


def _held(mod, fmt: str, block: int, rot_tile_max: int) -> bool:
    """A thread holds the rotation block whole (up to ``ROT_TILE_MAX``) or a part of
    ``ROT_HELD_MAX`` / ``_MX`` / ``_NVFP4`` (``ROT_SPLIT``: blocks up to ``ROT_SPLIT_MAX``, as
    Hadamard-256 as halves of 128): the expectation the layout tests check the planner against."""
    held = _held_max(mod, fmt)
    return block <= rot_tile_max or (mod.ROT_SPLIT and held < block <= mod.ROT_SPLIT_MAX and rot_tile_max >= held)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(("layout", "fmt", "kw"), _layout_cases(CASES))
def test_triton_matches_reference(tq, fmt: str, kw: dict, dtype: torch.dtype, layout: str,  # noqa: F811
                                  monkeypatch) -> None:
    """Every rotation layout of the kernels (:data:`ROT_TILE_MAX`: blocks whole in one thread, or
    the tile's own layout; :data:`ROT_COALESCE`: the former loaded and stored coalesced) gives the
    reference's bits, and each call takes the layout it should (``ROT_TILE`` 2, 1 or 0)."""
    rot_tile_max, coalesce = _set_layout(tq, monkeypatch, layout)
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 0)  # two-pass recipes through their amax pass (one tile: test_triton_qdq)
    planned = _record_plan(tq, monkeypatch, "ROT_TILE", "HAS_SIGNS", "maxnreg", "ROT_HELD")
    torch.manual_seed(0)
    k = 300 if kw.get("rotate", {}).get("pad") else 256
    x = (torch.randn(5, 3, k) * torch.logspace(-2, 2, k)).to(dtype)
    x[0, 0, 7] = 0.0
    x[1, 2, 5:40] = 0.0
    for axis in (-1,):
        ref = quantize_dequantize(x, fmt, backend="reference", axis=axis, **kw)
        out = quantize_dequantize(x, fmt, backend="triton", axis=axis, **kw)
        assert_same_bits(out, ref)
    # a strided view (rows not contiguous) and the blocks along axis 0
    xs = x.transpose(0, 2)
    assert_same_bits(
        quantize_dequantize(xs, fmt, backend="triton", axis=0, **kw),
        quantize_dequantize(xs, fmt, backend="reference", axis=0, **kw),
    )
    # blocks along the last axis of a tensor stored the other way round (K not the unit stride)
    xc = x.reshape(-1, k).t().contiguous().t()
    assert_same_bits(
        quantize_dequantize(xc, fmt, backend="triton", axis=-1, **kw),
        quantize_dequantize(xc, fmt, backend="reference", axis=-1, **kw),
    )
    fused = "rotate" in kw and FORMATS[fmt].granularity is not Granularity.ROW  # rotation in the kernel
    if fused:
        block = kw["rotate"]["block"]
        want = 0 if not _held(tq, fmt, block, rot_tile_max) else (
            2 if coalesce and FORMATS[fmt].family in (Family.MX, Family.NVFP4) and block >= 64 else 1)
        layouts = [p[0] for p in planned]
        assert set(layouts) == {want}, (layouts, want)
        # random signs for bf16 / fp16 inputs in the coalesced layout: sign words (SIGN_WORDS, 3) or
        # 16-bit sign masks (SIGN_BITS, 2)
        packed = want == 2 and dtype in (torch.bfloat16, torch.float16)
        form = 3 if packed and tq.SIGN_WORDS else 2 if packed and tq.SIGN_BITS else True
        want_signs = form if kw["rotate"].get("seed") is not None else False
        signs = [p[1] for p in planned]
        assert set(signs) == {want_signs}, (signs, want_signs)
        # the register cap: the coalesced layout's blocks of 128 and up (ROT_MAXNREG; 0: none), nowhere else
        cap = (tq.ROT_MAXNREG or None) if want == 2 and min(block, _held_max(tq, fmt)) >= 128 else None
        caps = [p[2] for p in planned]
        assert set(caps) == {cap}, (caps, cap)
        # the part of a block a thread holds: the block, or ROT_HELD_MAX elements of it (log2)
        held = (min(block, _held_max(tq, fmt)).bit_length() - 1) if want else 0
        assert {p[3] for p in planned} == {held}, (planned, held)
    else:
        layouts = [p[0] for p in planned]
        assert set(layouts) <= {0, None}, layouts



FOLD_CASES = [
    ("mxfp4", {"rotate": {"block": 16}}),
    ("mxfp4", {"rotate": {"block": 64, "seed": 5}, "scale_rule": "rceil"}),
    ("mxfp8_e4m3", {"rotate": {"block": 64}, "scale_rule": "even"}),
    ("mxint8", {"rotate": {"block": 16, "seed": 9}}),
    ("mxfp6_e3m2", {"rotate": {"block": 256}, "rounding": "stochastic", "seed": 3}),
    ("mxfp4", {"rotate": {"block": 32}}),  # scale 2**-2.5: not folded
]


@pytest.mark.parametrize(("layout", "fmt", "kw"), _layout_cases(FOLD_CASES))
def test_rotation_scale_folded_into_block_exponents(tq, fmt: str, kw: dict, layout: str,  # noqa: F811
                                                    monkeypatch) -> None:
    """:data:`ROT_FOLD`: MX recipes whose rotation scale is a power of two (blocks of 16, 64, 256)
    take it through the block exponents, with the reference's bits, on and off, in every layout;
    inputs from 2**-100 (the contract's smallest block amax) to bf16's largest (rotated sums past
    fp32's range: Inf blocks), zeros, NaN and Inf, fp32 and bf16; the plan folds only those blocks,
    and only where a thread holds whole groups (blocks up to ``ROT_TILE_MAX``, and larger ones
    split over threads, ``ROT_SPLIT``)."""
    rot_tile_max, _ = _set_layout(tq, monkeypatch, layout)
    block = kw["rotate"]["block"]
    want_fold = {16: -2, 64: -3, 256: -4}.get(block, 0) if _held(tq, fmt, block, rot_tile_max) else 0  # whole groups
    g = torch.Generator().manual_seed(block)
    k = 512
    mags = 2.0 ** torch.linspace(-100, 127, 24, dtype=torch.float64)
    x = (torch.randn(24, k, generator=g, dtype=torch.float64) * mags[:, None]).to(torch.float32)
    x[3, :] = 0.0
    x[4, 10] = float("nan")
    x[5, 300] = float("inf")
    x[6, :] = 3.3895313892515355e38  # bf16's largest: every rotated sum overflows
    x[7, ::2] = -3.3895313892515355e38
    for dtype in (torch.float32, torch.bfloat16):
        xd = x.to(dtype)
        ref = quantize_dequantize(xd, fmt, backend="reference", **kw)
        for fold in (True, False):
            monkeypatch.setattr(tq, "ROT_FOLD", fold)
            folds = []
            plan = tq._plan

            def spy(*args, _plan=plan, _folds=folds, **kwargs):
                out = _plan(*args, **kwargs)
                _folds.append(out[-1].get("ROT_FOLD"))
                return out

            monkeypatch.setattr(tq, "_plan", spy)
            out = quantize_dequantize(xd, fmt, backend="triton", **kw)
            monkeypatch.setattr(tq, "_plan", plan)
            assert_same_bits(out, ref)
            assert set(folds) == {want_fold if fold else 0}, (folds, fold)


#: Random rotations over every kind of tile the signs' tensors must cover (the sign masks' and
#: the sign words' tests): (format, dtype, shape, qdq keyword arguments).
SIGN_TILE_CASES = [
    pytest.param("mxfp4", torch.bfloat16, (8, 2304), {"rotate": {"block": 128, "seed": 3}},
                 id="mxfp4-k-tiles"),  # K tiles at 0, 1024, 2048
    pytest.param("nvfp4", torch.float16, (40, 2304), {"rotate": {"block": 64, "seed": 4}},
                 id="nvfp4-amax-pass"),  # and the amax pass's
    pytest.param("nvfp4", torch.bfloat16, (2, 300), {"rotate": {"block": 128, "seed": 5, "pad": True}},
                 id="nvfp4-one-tile"),  # one tile past KP
    pytest.param("mxfp4", torch.bfloat16, (4, 2304), {"rotate": {"block": 256, "seed": 6}},
                 id="mxfp4-h256"),  # held in parts (ROT_SPLIT)
]


@pytest.mark.parametrize(("fmt", "dtype", "shape", "kw"), SIGN_TILE_CASES)
def test_sign_masks_over_every_k_tile(tq, fmt: str, dtype: torch.dtype, shape: tuple, kw: dict,  # noqa: F811
                                      monkeypatch) -> None:
    """:data:`SIGN_BITS` with :data:`SIGN_WORDS` off (on by default): random signs as 16-bit sign
    masks, loaded unmasked from a tensor padded to whole tiles, on tiles past the first along K
    (``k0 > 0``), a last tile past K, the amax pass's tiles and one tile wider than the padded K:
    the reference's bits, with the masks in use."""
    monkeypatch.setattr(tq, "SIGN_WORDS", False)
    used = _record_plan(tq, monkeypatch, "HAS_SIGNS")
    torch.manual_seed(1)
    x = (torch.randn(*shape) * torch.logspace(-2, 2, shape[1])).to(dtype)
    out = quantize_dequantize(x, fmt, backend="triton", **kw)
    assert_same_bits(out, quantize_dequantize(x, fmt, backend="reference", **kw))
    assert set(used) == {(2,)}, used


@pytest.mark.parametrize(("fmt", "dtype", "shape", "kw"), [
    *SIGN_TILE_CASES,
    pytest.param("mxfp8_e4m3", torch.bfloat16, (6, 1024), {"rotate": {"block": 128, "seed": 7}}, id="mxfp8-h128"),
])
def test_sign_words_over_every_k_tile(tq, fmt: str, dtype: torch.dtype, shape: tuple, kw: dict,  # noqa: F811
                                      monkeypatch) -> None:
    """:data:`SIGN_WORDS` (on by default; set here all the same): random signs packed one bit a column, the forward's
    into the raw 16-bit values, the inverse's into the fp32 sign bits (no multipliers), on tiles
    past the first along K, a last tile past K, the amax pass's tiles and one tile wider than the
    padded K: the reference's bits, with the words in use; NaN and Inf spread as the reference's."""
    monkeypatch.setattr(tq, "SIGN_WORDS", True)
    used = _record_plan(tq, monkeypatch, "HAS_SIGNS", "INV_MULTS")
    torch.manual_seed(1)
    x = (torch.randn(*shape) * torch.logspace(-2, 2, shape[1])).to(dtype)
    x[0, 5] = float("nan")
    x[-1, shape[1] - 3] = float("-inf")
    out = quantize_dequantize(x, fmt, backend="triton", **kw)
    assert_same_bits(out, quantize_dequantize(x, fmt, backend="reference", **kw))
    assert set(used) == {(3, False)}, used


def test_triton_nan_spreads_within_rotation_block(tq) -> None:  # noqa: F811
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    x[0, 3] = float("nan")
    x[1, 200] = float("inf")
    ref = quantize_dequantize(x, "mxfp4", backend="reference", rotate={"block": 64})
    out = quantize_dequantize(x, "mxfp4", backend="triton", rotate={"block": 64})
    assert_same_bits(out, ref)
    assert torch.isnan(out[0, :64]).all() and not torch.isnan(out[0, 64:]).any()
    assert torch.isnan(out[1, 192:]).all() and not torch.isnan(out[1, :192]).any()


def test_stochastic_rounding_does_not_depend_on_the_tiling(tq, monkeypatch) -> None:  # noqa: F811
    torch.manual_seed(1)
    x = torch.randn(33, 512, dtype=torch.bfloat16)
    for fmt in ("mxfp4", "nvfp4"):
        a = quantize_dequantize(x, fmt, backend="triton", rounding="stochastic", seed=77)
        cfg = dict(tq.TILE_CONFIG)
        cfg.update(mx=(64, 4), nvfp4=(32, 4))  # other tiles: fewer rows and columns per program
        monkeypatch.setattr(tq, "TILE_CONFIG", cfg)
        b = quantize_dequantize(x, fmt, backend="triton", rounding="stochastic", seed=77)
        monkeypatch.undo()
        assert_same_bits(a, b)
        c = quantize_dequantize(x[5:9], fmt, backend="triton", rounding="stochastic", seed=77)
        if fmt == "mxfp4":  # per-block scales: the same rows, other row indices, other draws
            assert not torch.equal(c, a[5:9])
