"""The two-pass recipes in one launch with a grid barrier (``triton_qdq.GRID_SYNC``), on the CPU.

Triton's interpreter runs a grid's programs one after another, so a barrier of two programs would
spin for ever there: the launcher takes the path in the interpreter only for a grid of one program
(its QDQ tile grown to hold the call where need be), which still runs every step of the path: the
program's own pair stored, the barrier on the persistent workspace (arrive, last arriver resets the
count and bumps the generation), the pairs reduced back, the tile QDQ'd from registers. These tests
force such calls (``ONE_TILE_MAX = 0``: not the one-tile path) and compare them bit for bit with the
two-launch path and the reference; the GPU test (``tests/gpu/test_triton_qdq_gpu.py -k grid_sync``)
runs grids of many programs.
"""

from __future__ import annotations

import pytest
import torch
from vllm_qdq.numerics.formats import FORMATS

from tests.support.bits import assert_same_bits

from .test_triton_qdq import nasty, tq  # noqa: F401  (tq: the interpreter fixture)

#: (format, quantize_dequantize options): NVFP4 (its scale rules, stochastic rounding, a Hadamard and
#: a random Hadamard rotation), nvfp4_e5m3, FP8 per-tensor (plain and rotated)
CASES = (
    ("nvfp4", {}), ("nvfp4", {"scale_rule": "four_over_six"}), ("nvfp4", {"rounding": "stochastic", "seed": 5}),
    ("nvfp4", {"rotate": {"block": 128}}), ("nvfp4", {"rotate": {"block": 64, "seed": 1}}),
    ("nvfp4_e5m3", {"scale_rule": "four_over_six", "rounding": "stochastic", "seed": 3}),
    ("fp8_e4m3_per_tensor", {}), ("fp8_e4m3_per_tensor", {"rotate": {"block": 32, "seed": 2}}),
)
IDS = ("nvfp4", "nvfp4-46", "nvfp4-sr", "nvfp4-h128", "nvfp4-h64r", "e5m3-46-sr", "per-tensor", "per-tensor-h32r")
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _spy(tq, monkeypatch) -> list[list[tuple]]:  # noqa: F811
    """Record each call's launches as ``(kernel name, grid, constexprs, workspace argument)``."""
    calls: list[list[tuple]] = []
    real = tq._launch
    names = {id(tq._qdq_block_kernel): "qdq", id(tq._amax_kernel): "amax", id(tq._amax_stream_kernel): "stream"}
    bar_at = list(tq._qdq_block_kernel.arg_names).index("bar_ptr")

    def spy(x, y, r, spec, rule, gamax, ex=None, rec=None):
        mine: list = []
        held = real(x, y, r, spec, rule, gamax, ex, mine)
        calls.append([(names[id(fn)], tuple(grid), kw, args[bar_at] if names[id(fn)] == "qdq" else None)
                      for fn, grid, args, kw, _k, _b in mine])
        if rec is not None:
            rec.extend(mine)
        return held

    monkeypatch.setattr(tq, "_launch", spy)
    return calls


def _qdq(x, name, opts, backend="triton"):
    from vllm_qdq.numerics.qdq import quantize_dequantize

    return quantize_dequantize(x, name, backend=backend, **opts)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize(("name", "opts"), CASES, ids=IDS)
def test_one_launch_equals_the_two_launch_path(tq, name: str, opts: dict, dtype, monkeypatch) -> None:  # noqa: F811
    """``GRID_SYNC`` on: a two-pass call of several rows (not one tile) is one launch of the QDQ
    kernel with ``SYNC`` (no amax pass) and gives the two-launch path's bits and the reference's,
    NaN / Inf / zero / subnormal / huge rows included (the tensor amax is over the finite elements;
    NVFP4 keeps its NaN blocks, FP8 per-tensor is NaN throughout); rotated, with stochastic rounding
    and with four over six."""
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 0)
    calls = _spy(tq, monkeypatch)
    x = nasty(FORMATS[name], dtype, 256)[:8]
    for xi in (x, x[4:], x.abs()[5:7] * 1e-3):
        monkeypatch.setattr(tq, "GRID_SYNC", True)
        one = _qdq(xi, name, opts)
        monkeypatch.setattr(tq, "GRID_SYNC", False)
        two = _qdq(xi, name, opts)
        assert_same_bits(one, two)
        assert_same_bits(one, _qdq(xi, name, opts, backend="reference"))
    synced, plain = calls[0::2], calls[1::2]
    assert all(len(c) == 1 and c[0][0] == "qdq" and c[0][1] == (1,) and c[0][2]["SYNC"] for c in synced), synced
    assert all([k for k, *_ in c] == ["amax", "qdq"] and not c[1][2]["SYNC"] for c in plain), plain
    assert all(c[0][3] is tq._GRID_BARRIERS[(torch.device("cpu"), 0)] for c in synced)


def test_tile_grows_to_one_program_and_the_path_needs_one(tq, monkeypatch) -> None:  # noqa: F811
    """Where the planned QDQ grid is larger than the barrier allows (here the interpreter's one
    program), the tile grows by rows and warps alike (the elements a thread holds unchanged): from
    eight programs of one row and one warp to one of eight rows and eight warps, the same bits.
    Beyond ``GRID_SYNC_WARPS_MAX`` warps, or with several tiles a row (which no row growth helps),
    the call takes the two-launch path. The workspace's count is 0 after every launch and its
    generation counts the launches that waited on it."""
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 0)
    monkeypatch.setattr(tq, "GRID_SYNC", True)
    monkeypatch.setitem(tq.TILE_CONFIG, "nvfp4", (256, 1))
    monkeypatch.setitem(tq.TILE_CONFIG, "scaled_fp64", (256, 1))
    calls = _spy(tq, monkeypatch)
    words = tq._grid_barrier_words(torch.device("cpu"))
    gen0 = int(words[tq._GRID_GEN])
    x = nasty(FORMATS["nvfp4"], torch.bfloat16, 256)[:8]
    for name in ("nvfp4", "fp8_e4m3_per_tensor"):
        assert_same_bits(_qdq(x, name, {}), _qdq(x, name, {}, backend="reference"))
        (kind, grid, kw, bar), = calls[-1]
        assert (kind, grid, kw["SYNC"], kw["BLOCK_R"], kw["num_warps"], bar) == ("qdq", (1,), True, 8, 8, words)
        assert not kw["REVERSE"] and not kw["PDL"] and not kw["L2_HINTS"]
    assert int(words[0]) == 0 and int(words[tq._GRID_GEN]) == gen0 + 2
    assert tq._grid_barrier_words(torch.device("cpu")) is words  # made once, kept
    monkeypatch.setattr(tq, "GRID_SYNC_WARPS_MAX", 4)  # at most 4 warps: two programs, not here
    assert_same_bits(_qdq(x, "nvfp4", {}), _qdq(x, "nvfp4", {}, backend="reference"))
    assert [k for k, *_ in calls[-1]] == ["amax", "qdq"] and not calls[-1][1][2]["SYNC"]
    monkeypatch.setattr(tq, "GRID_SYNC_WARPS_MAX", 16)
    wide = torch.randn(2, 2048, dtype=torch.bfloat16)  # two tiles a row (BLOCK_K 1024): two programs
    assert_same_bits(_qdq(wide, "nvfp4", {}), _qdq(wide, "nvfp4", {}, backend="reference"))
    assert [k for k, *_ in calls[-1]] == ["amax", "qdq"] and not calls[-1][1][2]["SYNC"]
    assert int(words[0]) == 0 and int(words[tq._GRID_GEN]) == gen0 + 2


def test_the_first_barrier_call_is_logged_once(tq, monkeypatch, caplog) -> None:  # noqa: F811
    """A process logs its first call that takes the grid barrier (one INFO line naming the setting,
    the format, the shape and the programs), and no other: how a user sees that
    ``VLLM_QDQ_GRID_SYNC`` took effect in an engine (the GPU engine test looks for it). A call that
    takes the two-launch path logs nothing."""
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 0)
    monkeypatch.setattr(tq, "_BARRIER_LOGGED", [])
    monkeypatch.setitem(tq.TILE_CONFIG, "nvfp4", (256, 1))
    x = nasty(FORMATS["nvfp4"], torch.bfloat16, 256)[:8]
    caplog.set_level("INFO", logger=tq.__name__)
    monkeypatch.setattr(tq, "GRID_SYNC", False)
    _qdq(x, "nvfp4", {})
    assert not [r for r in caplog.records if "grid barrier" in r.getMessage()]
    monkeypatch.setattr(tq, "GRID_SYNC", "eager")
    for name in ("nvfp4", "nvfp4", "fp8_e4m3_per_tensor"):
        _qdq(x, name, {})
    lines = [r.getMessage() for r in caplog.records if "grid barrier" in r.getMessage()]
    assert lines == ["vllm_qdq: GRID_SYNC='eager': a two-pass call in one launch with a grid barrier (first: "
                     "nvfp4, 8 x 256, 1 programs); the same numbers as two launches"], lines


def test_grid_limit_and_growth(tq, monkeypatch) -> None:  # noqa: F811
    """``_grid_sync_grow`` on a GPU of 132 SMs (an H100) with sm_90's NVFP4 / FP8 per-tensor tiles at
    K = 4096 (one row of 1024 columns a program, one or two warps: four programs a row): 16 and 33
    rows fit as planned (64 and 132 programs), 34-64 rows in tiles of 2 rows, 256 in tiles of 8,
    512 in tiles of 16 (16 warps from one); 1024 rows and rows of more than 132 tiles do not fit;
    ``PARTIALS_MAX`` bounds the grid too (0: never); under the interpreter, one program."""
    monkeypatch.setattr(tq, "_INTERPRETED", False)
    monkeypatch.setattr(tq, "_sm_count", lambda device: 132)
    cpu = torch.device("cpu")
    assert [tq._grid_sync_grow(cpu, n, 1, 4, 1) for n in (16, 33, 34, 64, 256, 512, 1024)] == [1, 1, 2, 2, 8, 16, 0]
    assert [tq._grid_sync_grow(cpu, n, 1, 4, 2) for n in (16, 64, 256, 512)] == [1, 2, 8, 0]  # two warps a tile
    assert tq._grid_sync_grow(cpu, 1, 1, 133, 1) == 0 and tq._grid_sync_grow(cpu, 1, 1, 132, 1) == 1
    monkeypatch.setattr(tq, "PARTIALS_MAX", 64)
    assert [tq._grid_sync_grow(cpu, n, 1, 4, 1) for n in (16, 17, 64)] == [1, 2, 4]
    monkeypatch.setattr(tq, "PARTIALS_MAX", 0)
    assert tq._grid_sync_grow(cpu, 1, 1, 1, 1) == 0
    monkeypatch.setattr(tq, "PARTIALS_MAX", 256)
    monkeypatch.setattr(tq, "_INTERPRETED", True)
    assert [tq._grid_sync_grow(cpu, n, 1, 4, 1) for n in (1, 2)] == [0, 0]  # four programs a row
    assert [tq._grid_sync_grow(cpu, n, 1, 1, 1) for n in (1, 8, 16, 32)] == [1, 8, 16, 0]
    # a register cap (ROT_MAXNREG) the grown tile's threads would exceed an SM's registers with: no growth
    monkeypatch.setattr(tq, "_INTERPRETED", False)
    assert tq._grid_sync_grow(cpu, 256, 1, 4, 1, 200) == 8  # 200 x 32 x 8 warps = 51200 registers
    assert tq._grid_sync_grow(cpu, 512, 1, 4, 1, 168) == 0  # 168 x 32 x 16 warps = 86016 > 65536
    assert tq._grid_sync_grow(cpu, 512, 1, 4, 1, 128) == 16  # 128 x 32 x 16 = 65536: fits


def test_barrier_spins_until_the_last_arrival(tq) -> None:  # noqa: F811
    """``_grid_barrier`` itself, the spin included, in the interpreter: one program of a two-program
    grid, the other played by this thread on the same words. Arriving first (the count 0 -> 1), the
    program spins on the generation (its ``while`` loop) and does not pass while the other has not
    arrived; the other's arrival as the last (the count back to 0, the generation bumped) lets it
    through. Arriving last itself (the other already counted), it resets the count, bumps the
    generation and passes at once."""
    import importlib
    import threading
    import time

    import tests.support.triton_qdq_kernels as k

    k = importlib.reload(k)
    words = torch.zeros(tq._GRID_WORDS, dtype=torch.int32)
    g = tq._GRID_GEN  # the generation's word
    words[g] = 41
    out = torch.zeros(1, dtype=torch.int32)
    run = threading.Thread(target=lambda: k.grid_barrier_kernel[(1,)](words, out, 2), daemon=True)
    run.start()
    deadline = time.monotonic() + 30
    while int(words[0]) == 0 and time.monotonic() < deadline:  # wait for its arrival
        time.sleep(0.01)
    assert [int(words[0]), int(words[g])] == [1, 41]
    time.sleep(0.3)
    assert int(out[0]) == 0 and run.is_alive()  # arrived, waiting at the barrier
    words[0] = 0  # the other program arrives last: the count reset, then the generation bumped
    words[g] += 1
    run.join(timeout=30)
    assert not run.is_alive() and int(out[0]) == 1 and [int(words[0]), int(words[g])] == [0, 42]
    words[0], out[0] = 1, 0  # the other program arrived first: this one is the last
    k.grid_barrier_kernel[(1,)](words, out, 2)
    assert int(out[0]) == 1 and [int(words[0]), int(words[g])] == [0, 43]


def test_grid_sync_setting_reaches_the_triton_module(monkeypatch) -> None:
    """``VLLM_QDQ_GRID_SYNC`` (off | eager | on, any case): building the settings sets
    ``triton_qdq.GRID_SYNC``, and rebuilt without it, back to off; not in the compile-cache digest
    (the same numbers); a bad value stops start-up naming the accepted ones; the log line names it."""
    import vllm_qdq.numerics.triton_qdq as triton_qdq
    from vllm_qdq import config

    monkeypatch.setattr(triton_qdq, "GRID_SYNC", False)
    monkeypatch.setattr(config, "_CACHE", {})
    for raw, want in (("eager", "eager"), (" ON ", True), ("Off", False), ("eager", "eager")):
        monkeypatch.setenv("VLLM_QDQ_GRID_SYNC", raw)
        config.settings()
        assert triton_qdq.GRID_SYNC == want and type(triton_qdq.GRID_SYNC) is type(want), (raw, triton_qdq.GRID_SYNC)
    monkeypatch.delenv("VLLM_QDQ_GRID_SYNC")
    assert config.settings().grid_sync == "off" and triton_qdq.GRID_SYNC is False
    eager = config.load_config({"VLLM_QDQ_GRID_SYNC": "eager"})
    assert eager.digest() == config.load_config({}).digest() and "grid_sync=eager" in eager.summary()
    with pytest.raises(config.ConfigError, match=r"VLLM_QDQ_GRID_SYNC='always'; accepted: off, eager, on"):
        config.load_config({"VLLM_QDQ_GRID_SYNC": "always"})
