"""Issue 18 options in the Triton kernels on the GPU: the oracle's vectors bit for bit, and the
reference on the same CUDA tensors bit for bit at model-sized shapes.

Run on the GPU host: ``pytest -m gpu tests/gpu/test_triton_recipes_gpu.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from vllm_qdq.numerics.formats import FORMATS as FORMATS_
from vllm_qdq.numerics.qdq import quantize_dequantize
from vllm_qdq.numerics.triton_qdq import (
    ROT_HELD_MAX,
    ROT_HELD_MAX_MX,
    ROT_HELD_MAX_NVFP4,
    ROT_SHFL,
    SIGN_WORDS,
)

from tests.support import two_pass
from tests.support.bits import assert_same_bits

pytestmark = pytest.mark.gpu

DATA = Path(__file__).resolve().parents[1] / "data" / "recipe-vectors"


def _manifest() -> list[dict]:
    path = DATA / "manifest.json"
    return json.loads(path.read_text())["files"] if path.exists() else []


def _bf16(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16).cuda()


@pytest.mark.parametrize("entry", _manifest(), ids=lambda e: e["file"])
def test_vectors_on_gpu(entry: dict) -> None:
    d = np.load(DATA / entry["file"])
    x, y = _bf16(d["x_bf16_bits"]), _bf16(d["y_bf16_bits"])
    recipe = dict(entry["recipe"])
    fmt = recipe.pop("fmt")
    for backend in ("triton", "reference"):
        out = quantize_dequantize(x, fmt, backend=backend, **recipe)
        torch.cuda.synchronize()
        assert_same_bits(out.cpu(), y.cpu())


OPTIONS = [
    ("mxfp4", {"rotate": {"block": b, "seed": s}}) for b in (16, 32, 64, 128, 256) for s in (None, 5)
] + [
    ("mxfp4", {"rounding": "stochastic", "seed": 123}),
    # seeds whose 32-bit words are 1: Triton specializes an int argument equal to 1 unless told not to
    ("mxfp4", {"rounding": "stochastic", "seed": 1}),
    ("nvfp4", {"rounding": "stochastic", "seed": 2**32}),
    ("mxfp8_e4m3", {"rotate": {"block": 128}, "rounding": "stochastic", "seed": 4}),
    ("nvfp4", {"scale_rule": "four_over_six"}),
    ("nvfp4", {"rotate": {"block": 16}, "rounding": "stochastic", "seed": 9}),
    ("nvfp4_e5m3", {}),
    ("nvfp4_e5m3", {"scale_rule": "four_over_six", "rotate": {"block": 64, "seed": 2}}),
    ("fp8_e4m3_per_tensor", {"rotate": {"block": 128}}),
    ("fp8_e4m3_per_token", {"rotate": {"block": 128}}),
    ("fp8_e4m3_per_group128", {"rotate": {"block": 256, "pad": True}}),
    # Hadamard-256 split over threads (ROT_SPLIT: NVFP4 in halves, MX in quarters): NVFP4's rotating amax pass, MXFP8
    ("nvfp4", {"rotate": {"block": 256, "seed": 3}}),
    ("mxfp8_e4m3", {"rotate": {"block": 256}, "scale_rule": "rceil"}),
]


@pytest.mark.parametrize(("fmt", "kw"), OPTIONS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(OPTIONS)])
@pytest.mark.parametrize("shape", [(3, 4096), (257, 4096), (16, 3000), (2, 5, 8192)])
def test_options_match_reference(fmt: str, kw: dict, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
    x[..., 3] *= 300.0  # an outlier channel
    if shape[-1] % 256 and "rotate" in kw:
        kw = {**kw, "rotate": {**kw["rotate"], "pad": True}}
    out = quantize_dequantize(x, fmt, backend="triton", **kw)
    ref = quantize_dequantize(x, fmt, backend="reference", **kw)
    torch.cuda.synchronize()
    assert_same_bits(out, ref)


def _count_replays(triton_qdq, monkeypatch) -> list[tuple[bool, bool]]:
    """Fast path on with an empty cache; each replay appends ``(replayed, direct launcher)``."""
    replays = []
    real = triton_qdq._FastCall.__call__

    def counting(self, x, gamax=None):
        y = real(self, x, gamax)
        replays.append((y is not None, self.direct))
        return y

    monkeypatch.setattr(triton_qdq._FastCall, "__call__", counting)
    monkeypatch.setattr(triton_qdq, "FAST_LAUNCH", True)
    monkeypatch.setattr(triton_qdq, "_FAST", {})
    return replays


ROTATED = [(f, kw) for f, kw in OPTIONS if "rotate" in kw]


@pytest.mark.parametrize(("switch", "value"), [("ROT_TILE_MAX", 0), ("ROT_COALESCE", False), ("ROT_MAXNREG", 168),
                                               ("ROT_MAXNREG", 200), ("SIGN_WORDS", not SIGN_WORDS),
                                               ("ROT_HELD_MAX", 64 if ROT_HELD_MAX == 128 else 128),
                                               ("ROT_HELD_MAX_MX", 64 if ROT_HELD_MAX_MX == 128 else 128),
                                               ("ROT_HELD_MAX", 32), ("ROT_HELD_MAX_MX", 32),
                                               ("ROT_HELD_MAX_NVFP4", 64 if ROT_HELD_MAX_NVFP4 != 64 else 128),
                                               ("ROT_SHFL", not ROT_SHFL),
                                               ("ROT_HELD_MAX_AMAX", 32), ("ROT_HELD_MAX_AMAX", 128),
                                               ({"ROT_HELD_MAX_NVFP4": 64, "ROT_MAXNREG_64": 96}, None)],
                         ids=lambda v: "-".join(f"{k}-{w}" for k, w in v.items()) if isinstance(v, dict) else None)
@pytest.mark.parametrize(("fmt", "kw"), ROTATED, ids=[f"{f}-{i}" for i, (f, _) in enumerate(ROTATED)])
def test_rotation_in_the_other_layouts(fmt: str, kw: dict, switch: str, value, monkeypatch) -> None:
    """The rotations in the layouts the bench's options table times beside the default give the
    reference's bits too: ``ROT_TILE_MAX = 0`` (every block in the tile's own layout: the "tile
    layout" column), ``ROT_COALESCE`` off (whole blocks in a thread, loaded and stored in that
    layout: the "uncoalesced" column), the coalesced layout's other register caps
    (``ROT_MAXNREG`` 168 and 200: the "cap 168" and "cap 200" columns) and random signs packed a
    bit a column, or as 16-bit masks, whichever is not the default (``SIGN_WORDS`` switched: the
    "sign masks" column while the words are the default), and blocks of 128 and up held by a
    thread in other part sizes (``ROT_HELD_MAX``, ``ROT_HELD_MAX_MX``, ``ROT_HELD_MAX_NVFP4``: the "held
    other" column; each a no-op for the other family's recipes), and the amax pass's own part size
    (``ROT_HELD_MAX_AMAX``: the "amax 32" and "amax 128" columns; a no-op for one-pass recipes),
    and NVFP4 in parts of 64 under a register cap (the "held 64 cap 96" column)."""
    from vllm_qdq.numerics import triton_qdq

    for k, v in (switch if isinstance(switch, dict) else {switch: value}).items():
        monkeypatch.setattr(triton_qdq, k, v)
    monkeypatch.setattr(triton_qdq, "_FAST", {})  # recorded calls carry the layout they were made with
    torch.manual_seed(0)
    for shape in ((257, 4096), (16, 3000)):
        x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
        x[..., 3] *= 300.0
        k = {**kw, "rotate": {**kw["rotate"], "pad": True}} if shape[-1] % 256 else kw
        out = quantize_dequantize(x, fmt, backend="triton", **k)
        ref = quantize_dequantize(x, fmt, backend="reference", **k)
        torch.cuda.synchronize()
        assert_same_bits(out, ref)


SPLIT = [("mxfp4", {"rotate": {"block": 128, "seed": 1}}), ("mxfp4", {"rotate": {"block": 256}}),
         ("mxfp8_e4m3", {"rotate": {"block": 128}}), ("nvfp4", {"rotate": {"block": 256, "seed": 3}}),
         ("nvfp4", {"rotate": {"block": 128, "seed": 1}}), ("fp8_e4m3_per_tensor", {"rotate": {"block": 256}}),
         ("fp8_e4m3_per_group128", {"rotate": {"block": 256}})]


@pytest.mark.parametrize("held", [32, 64, 128])
@pytest.mark.parametrize(("fmt", "kw"), SPLIT, ids=[f"{f}-{i}" for i, (f, _) in enumerate(SPLIT)])
def test_split_blocks_lane_shuffles(fmt: str, kw: dict, held: int, monkeypatch) -> None:
    """Blocks held in parts of ``held`` by adjacent lanes, their cross-lane butterfly stages by
    ``shfl.sync.bfly`` in PTX (``ROT_SHFL``, on), give the reference's bits at row counts and row
    lengths that give the passes different tiles (rows a tile 1 to 32 and more: the shuffle's lane
    follows the layout; a decode-sized two-pass call's one tile and the blocks' own layout, FP8's,
    take the reductions; rows of 3000, padded, whose loads are not 16-byte aligned: 2026-12-07's
    H100 found FP8 per-group128 + Hadamard-256 there wrong before the shuffles kept to the
    coalesced layout)."""
    from vllm_qdq.numerics import triton_qdq

    monkeypatch.setattr(triton_qdq, "ROT_SHFL", True)
    for name in triton_qdq.HELD_SWITCHES:
        monkeypatch.setattr(triton_qdq, name, held)
    monkeypatch.setattr(triton_qdq, "_FAST", {})
    shfl = []
    plan = triton_qdq._plan

    def spy(*args, **kwargs):
        out = plan(*args, **kwargs)
        shfl.append(out[-1].get("ROT_SHFL"))
        return out

    monkeypatch.setattr(triton_qdq, "_plan", spy)
    torch.manual_seed(0)
    for shape in ((1, 256), (3, 4096), (64, 4096), (1024, 4096), (16, 16384), (1024, 256), (2, 5, 1280),
                  (16, 3000)):
        x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
        x[..., 3] *= 300.0
        x[..., 0, :] = -0.0  # a row of -0 (the butterfly's signed zeros) and, below, subnormals, inf and NaN
        x[..., -1, 5:9] = torch.tensor([1e-39, -3e-40, float("inf"), float("nan")], dtype=torch.bfloat16)
        k = {**kw, "rotate": {**kw["rotate"], "pad": True}} if shape[-1] % kw["rotate"]["block"] else kw
        out = quantize_dequantize(x, fmt, backend="triton", **k)
        ref = quantize_dequantize(x, fmt, backend="reference", **k)
        torch.cuda.synchronize()
        assert_same_bits(out, ref)
    if fmt == "nvfp4":  # a given global amax 4 bytes into its storage (the anchor load keeps its own base)
        g = torch.tensor([0.0, 700.0], device="cuda")[1:]
        x = torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16)
        assert_same_bits(quantize_dequantize(x, fmt, backend="triton", global_amax=g, **kw),
                         quantize_dequantize(x, fmt, backend="reference", global_amax=g, **kw))
    # the lane shuffles were planned where a block is split in the coalesced layout (MX, NVFP4)
    split = kw["rotate"]["block"] > held and triton_qdq._rot_layout(FORMATS_[fmt], kw["rotate"]["block"]) == 2
    assert (True in shfl) == split, (fmt, held, set(shfl))


REPLAYED = [
    ("mxfp4", {"rotate": {"block": 32, "seed": 5}}),
    ("mxfp4", {"rounding": "stochastic", "seed": 123}),
    ("mxfp4", {"rounding": "stochastic", "seed": 1}),
    ("nvfp4", {"rotate": {"block": 16}, "rounding": "stochastic", "seed": 9}),
    ("nvfp4_e5m3", {"scale_rule": "four_over_six", "rotate": {"block": 64, "seed": 2}}),
    ("fp8_e4m3_per_tensor", {}),
    ("nvfp4", {}),
]


@pytest.mark.parametrize(("fmt", "kw"), REPLAYED, ids=[f"{f}-{i}" for i, (f, _) in enumerate(REPLAYED)])
@pytest.mark.parametrize("rows", [1, 64, 4096])
def test_options_replay_in_eager(fmt: str, kw: dict, rows: int, monkeypatch) -> None:
    """The eager fast path replays rotations, stochastic rounding and two-pass recipes (partial
    pairs at 1 and 64 rows, the one-tile path being off by default; atomics at 4096), bit for bit
    with the reference on every call; on
    Triton 3.6 through the generated launcher directly (``_FastCall.direct``)."""
    import triton
    from vllm_qdq.numerics import triton_qdq

    replays = _count_replays(triton_qdq, monkeypatch)
    for i in range(3):
        x = torch.randn(rows, 4096, device="cuda", dtype=torch.bfloat16) * (i + 1)
        x[..., 3] *= 300.0
        out = quantize_dequantize(x, fmt, backend="triton", **kw)
        ref = quantize_dequantize(x, fmt, backend="reference", **kw)
        torch.cuda.synchronize()
        assert_same_bits(out, ref)
    direct = triton.__version__.startswith(triton_qdq._DIRECT_TRITON)
    assert replays == [(True, direct)] * 2, replays


@pytest.mark.parametrize("path", two_pass.PATHS)
@pytest.mark.parametrize(("fmt", "kw"), two_pass.CASES, ids=two_pass.IDS)
def test_two_pass_paths_on_gpu(fmt: str, kw: dict, path: str, monkeypatch) -> None:
    """Each way a two-pass recipe gets its tensor amax, forced, on the shapes that take it (one
    tile: 1-2 rows of 4096; partial pairs: 2-256 rows, at most 256 amax programs with sm_90's
    amax tile; atomics: 2-2048 rows; the streaming amax pass: 2-3000 rows, a few tiles a program
    up to ~6 at 3000 x 4112, edge tiles masked), NaN and Inf rows included, bit for bit with the
    reference; eager replays too."""
    from vllm_qdq.numerics import triton_qdq

    two_pass.force_path(triton_qdq, path, monkeypatch)
    monkeypatch.setattr(triton_qdq, "_FAST", {})
    shapes = {"one_tile": [(1, 4096), (2, 4096), (1, 3000)], "partials": [(2, 4096), (64, 4096), (256, 4096)],
              "atomics": [(2, 4096), (64, 4096), (2048, 4096)],
              "stream": [(2, 4096), (64, 4096), (2048, 4096), (3000, 4112)]}[path]
    for shape in shapes:
        for i in range(3):  # the first call records, the others replay
            torch.manual_seed(i)
            x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * (i + 1)
            x[..., 3] *= 300.0
            if i == 2:
                x[0, 17] = float("nan")
                x[-1, -1] = float("inf")
            k = {**kw, "rotate": {**kw["rotate"], "pad": True}} if "rotate" in kw and shape[1] % 64 else kw
            out = quantize_dequantize(x, fmt, backend="triton", **k)
            ref = quantize_dequantize(x, fmt, backend="reference", **k)
            torch.cuda.synchronize()
            assert_same_bits(out, ref)


@pytest.mark.parametrize("pdl", [True, False])
@pytest.mark.parametrize("path", ["partials", "atomics"])
@pytest.mark.parametrize(("fmt", "kw"), two_pass.CASES, ids=two_pass.IDS)
def test_two_pass_dependent_launch_in_a_graph(fmt: str, kw: dict, path: str, pdl: bool, monkeypatch) -> None:
    """The QDQ pass as a programmatic dependent launch of its amax pass (``PDL``) and not, inside a
    CUDA graph where the kernel just before the call writes x and the one just after reads y (what
    vLLM's graphs hold): every replay, with new values written before it, bit for bit with the
    reference on those values (a QDQ pass that read x before its writer finished, or its amax pass's
    words before they were written, would not be)."""
    from vllm_qdq.numerics import triton_qdq

    two_pass.force_path(triton_qdq, path, monkeypatch)
    monkeypatch.setattr(triton_qdq, "PDL", pdl)
    monkeypatch.setattr(triton_qdq, "_FAST", {})
    for rows in (64, 2048):
        src = torch.randn(rows, 4096, device="cuda", dtype=torch.bfloat16)
        x = torch.empty_like(src)
        x.copy_(src)
        quantize_dequantize(x, fmt, backend="triton", **kw)  # compiled and recorded before the capture
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            x.copy_(src * 2.0)  # the producer: a kernel writing x right before the call
            out = quantize_dequantize(x, fmt, backend="triton", **kw)
            after = out * 1.0  # the consumer
        for i in range(4):
            torch.manual_seed(100 + i)
            src.copy_(torch.randn(rows, 4096, device="cuda", dtype=torch.bfloat16) * (i + 1))
            src[..., 3] *= 300.0
            g.replay()
            torch.cuda.synchronize()
            ref = quantize_dequantize(src * 2.0, fmt, backend="reference", **kw)
            assert_same_bits(after, ref)


@pytest.mark.parametrize("fmt", ["nvfp4", "fp8_e4m3_per_tensor"])
def test_eager_scratch_back_to_back(fmt: str, monkeypatch) -> None:
    """The eager replay's kept scratch buffer (``EAGER_SCRATCH``) on the two-launch path: back-to-back
    calls on two streams, each bit for bit (:func:`tests.support.two_pass.back_to_back_on_two_streams`)."""
    from vllm_qdq.numerics import triton_qdq

    two_pass.back_to_back_on_two_streams(triton_qdq, fmt, False, monkeypatch)


@pytest.mark.parametrize("fmt", ["nvfp4", "nvfp4_e5m3"])
@pytest.mark.parametrize("rows", [1, 64, 4096])
def test_given_global_amax_replays(fmt: str, rows: int, monkeypatch) -> None:
    """NVFP4 with a given global amax, replayed in eager: a float (the kernel's fp32 argument) and a
    one-element fp32 tensor read where it lies, its value changed in place between calls (the
    replay passes its address, not a copy), bit for bit with the reference on every call."""
    import triton
    from vllm_qdq.numerics import triton_qdq

    replays = _count_replays(triton_qdq, monkeypatch)
    g = torch.tensor([3.0], device="cuda")
    for given in (2.5, g):
        for i in range(3):
            if given is g:
                g.fill_(1.5 * (i + 1))
            x = torch.randn(rows, 4096, device="cuda", dtype=torch.bfloat16) * (i + 1)
            out = quantize_dequantize(x, fmt, backend="triton", global_amax=given)
            ref = quantize_dequantize(x, fmt, backend="reference", global_amax=given)
            torch.cuda.synchronize()
            assert_same_bits(out, ref)
    direct = triton.__version__.startswith(triton_qdq._DIRECT_TRITON)
    assert replays == [(True, direct)] * 4, replays
