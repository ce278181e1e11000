"""The eager fast path of the Triton QDQ launcher (``triton_qdq._FastCall``), without a GPU.

With ``FAST_LAUNCH`` on (the default, measured on an H200), the first call of a recipe on
a tensor layout goes through Triton's ``JITFunction`` launch and is recorded; later calls with the same key replay the compiled kernels' launchers with the new
``x``, a fresh ``y`` and a scratch buffer (a fresh zeroed one for atomics; for partial pairs the
one kept for the stream, ``EAGER_SCRATCH``). Here the jit functions are stand-ins that keep
the real kernels' signatures and compute the reference QDQ, so the test sees exactly which
arguments each launch got. The GPU test (tests/gpu/test_triton_qdq_gpu.py::test_eager_replay)
checks the real launchers bit for bit.
"""

from __future__ import annotations

import inspect
import sys

import pytest
import torch
from vllm_qdq.numerics.formats import FORMATS
from vllm_qdq.numerics.reference import qdq_reference, qdq_rotated_reference
from vllm_qdq.numerics.rotation import Rotation

from tests.support.bits import assert_same_bits


def _reference(x, spec, rule, rotate=None, rounding="nearest", seed=None, global_amax=None):
    if rotate is not None:
        return qdq_rotated_reference(x, spec, rotate, rule, rounding=rounding, seed=seed)
    return qdq_reference(x, spec, rule, global_amax=global_amax, rounding=rounding, seed=seed)


def _check_launch(fn, args, spec, rule, rotate=None, rounding="nearest", seed=None, global_amax=None) -> None:
    """The launch (recorded or replayed) was built for the recipe the caller asked for: rounding,
    seed words, rotation and global-amax mode in its arguments. The stand-in computes the result
    from the caller's recipe, so without this a replay of another recipe's launch would pass."""
    import inspect

    from vllm_qdq.numerics.reference import DEFAULT_SEED

    a = dict(zip(inspect.signature(fn).parameters, args, strict=False))
    if "STOCH" in a:
        assert a["STOCH"] == (rounding == "stochastic"), (a["STOCH"], rounding)
        if rounding == "stochastic":
            s = DEFAULT_SEED if seed is None else seed
            assert (a["seed_lo"], a["seed_hi"]) == (s & 0xFFFFFFFF, s >> 32)
        assert a["ROT_LOG2"] == (0 if rotate is None else rotate.block.bit_length() - 1)
        mode = 0 if global_amax is None else 2 if isinstance(global_amax, torch.Tensor) else 1
        assert a["GAMAX"] == mode, (a["GAMAX"], global_amax)
        if mode == 1:
            assert a["gamax_f"] == global_amax


def _qarg(tq, name: str) -> int:
    """The position of ``_qdq_block_kernel``'s argument ``name``."""
    return list(inspect.signature(tq._qdq_block_kernel.fn).parameters).index(name)


class _Compiled:
    def __init__(self, jit: _Jit) -> None:
        self.jit = jit

    def __getitem__(self, grid):
        def run(*args):
            self.jit.log.append(("replay", self.jit.name, grid, args))
            self.jit.compute(args)

        return run


class _Jit:
    """Stands in for one ``@triton.jit`` kernel: same signature (``.fn``), computes the reference."""

    def __init__(self, real, log: list, spec_of) -> None:
        self.fn, self.__name__, self.name, self.log, self.spec_of = real.fn, real.__name__, real.__name__, log, spec_of

    def compute(self, args) -> None:
        if self.name != "_amax_kernel":  # x_ptr, y_ptr first: y = reference QDQ of x
            recipe = self.spec_of()
            _check_launch(self.fn, args, *recipe)
            args[1].copy_(_reference(args[0], *recipe))

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            from vllm_qdq.numerics.triton_qdq import _full_args

            full = _full_args(self, args, kwargs)
            self.log.append(("jit", self.name, grid, tuple(full)))
            self.compute(full)
            return _Compiled(self)

        return launch


@pytest.fixture
def fake(monkeypatch):
    pytest.importorskip("triton")
    import vllm_qdq.numerics.triton_qdq as tq

    if tq.interpreting() or not hasattr(tq._qdq_block_kernel, "fn"):
        pytest.skip("the module holds interpreted kernels")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # lets _check take CPU tensors
    state = {"recipe": None}
    log: list = []
    for name in ("_qdq_block_kernel", "_qdq_row_kernel", "_amax_kernel"):
        monkeypatch.setattr(tq, name, _Jit(getattr(tq, name), log, lambda: state["recipe"]))
    real_key = tq._fast_key

    def cpu_key(x, spec, rule, axis, *opts):  # the real key, CPU tensors admitted
        with monkeypatch.context() as m:
            m.setattr(tq.torch.Tensor, "is_cuda", property(lambda t: True))
            m.setattr(tq.torch._C, "_cuda_getDevice", lambda: -1, raising=False)
            return real_key(x, spec, rule, axis, *opts)

    assert real_key(torch.zeros(2, 32), FORMATS["mxfp4"], "floor", -1) is None  # CPU: no fast path
    monkeypatch.setattr(tq, "_fast_key", cpu_key)
    monkeypatch.setattr(tq, "_FAST", {})
    monkeypatch.setattr(tq, "_SCRATCH", {})
    monkeypatch.setattr(tq, "FAST_LAUNCH", True)
    # CPU allocations are 64-byte aligned (the CUDA caching allocator's are 512): 16-byte classes,
    # Triton's own pointer specialization, keep a fresh y in the recorded class here
    monkeypatch.setattr(tq, "_ALIGN", 15)

    def call(x, name, rule="floor", **opts):
        state["recipe"] = (FORMATS[name], rule, opts.get("rotate"), opts.get("rounding", "nearest"),
                           opts.get("seed"), opts.get("global_amax"))
        n = len(log)
        y = tq.qdq(x, FORMATS[name], rule, **opts)
        assert_same_bits(y, _reference(x, *state["recipe"]))
        return y, log[n:]

    return tq, call


@pytest.mark.parametrize("name", ["mxfp4", "fp8_e4m3_per_token", "nvfp4", "fp8_e4m3_per_tensor"])
def test_second_call_replays_with_the_new_tensors(fake, name: str, monkeypatch) -> None:
    tq, call = fake
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 0)  # two-pass recipes: the amax pass, then the QDQ pass
    x1, x2 = torch.randn(8, 256, dtype=torch.bfloat16), torch.randn(8, 256, dtype=torch.bfloat16)
    y1, first = call(x1, name)
    assert first and {k for k, *_ in first} == {"jit"}
    y2, second = call(x2, name)
    # same kernels and grids; the replayed grid has three dimensions (Triton 3.6's CompiledKernel
    # launcher reads grid[1] and grid[2]: a 1-d grid raised IndexError on the H200)
    assert [(n, g) for _, n, g, _ in second] == [(n, tuple(g) + (1,) * (3 - len(g))) for _, n, g, _ in first]
    assert all(len(g) == 3 for _, _, g, _ in second)
    assert {k for k, *_ in second} == {"replay"}
    for (_, _, _, a1), (_, _, _, a2) in zip(first, second, strict=True):
        assert len(a1) == len(a2)
        for v1, v2 in zip(a1, a2, strict=True):
            if isinstance(v1, torch.Tensor):  # each tensor in its place: x, y or the scratch buffer
                assert (v1 is x1) == (v2 is x2) and (v1 is y1) == (v2 is y2)
                assert v2 is not v1
            else:
                assert v1 == v2 or v1 is v2  # sizes, strides, constexprs as recorded
    two_pass = FORMATS[name].family.name == "NVFP4" or FORMATS[name].granularity.name == "TENSOR"
    if two_pass:  # the same buffer for both kernels of the call: one partial pair per amax program
        # (a small tensor), so no zeroing; replayed, the buffer kept for the stream (EAGER_SCRATCH)
        bufs = [a[2] if n == "_qdq_block_kernel" else a[1] for _, n, _, a in second]
        assert len(bufs) == 2 and bufs[0] is bufs[1] and bufs[0].dtype == torch.int32
        n_amax = second[0][2][0]
        assert bufs[0] is tq._SCRATCH[(-1, 0)] and bufs[0].numel() >= 2 * n_amax
        assert second[1][3][_qarg(tq, "n_part")] == n_amax
        assert not next(iter(tq._FAST.values())).buf_zero
        _, third = call(torch.randn(8, 256, dtype=torch.bfloat16), name)
        assert all((a[2] if n == "_qdq_block_kernel" else a[1]) is bufs[0] for _, n, _, a in third)
    assert len(tq._FAST) == 1


@pytest.mark.parametrize("name", ["nvfp4", "fp8_e4m3_per_tensor"])
@pytest.mark.parametrize("why", ["switch off", "capturing"])
def test_replay_allocates_its_pairs_buffer_off_the_kept_one(fake, name: str, why: str, monkeypatch) -> None:
    """``EAGER_SCRATCH`` off, or a call while the stream captures a CUDA graph (``_call_state``'s
    capturing flag): each replay gets a fresh buffer of exactly the recorded size, and nothing is kept."""
    tq, call = fake
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 0)
    if why == "switch off":
        monkeypatch.setattr(tq, "EAGER_SCRATCH", False)
    else:
        monkeypatch.setattr(tq, "_call_state", lambda device, index, capture: (0, capture))
    call(torch.randn(8, 256, dtype=torch.bfloat16), name)
    entry = next(iter(tq._FAST.values()))
    bufs = []
    for _ in range(2):
        _, log = call(torch.randn(8, 256, dtype=torch.bfloat16), name)
        assert {k for k, *_ in log} == {"replay"}
        bufs.append(log[0][3][1])  # the amax pass's buffer argument
        assert bufs[-1].numel() == entry.buf_n
    assert bufs[0] is not bufs[1] and not tq._SCRATCH


def test_call_state_off_cuda_is_the_interpreters_one() -> None:
    """Off CUDA a replay's stream is 0 (as ``_stream_of``'s), never capturing: no CUDA call is made."""
    import vllm_qdq.numerics.triton_qdq as tq

    assert tq._call_state(torch.device("cpu"), -1, True) == (0, False)
    assert tq._stream_of(torch.device("cpu")) == 0 and not tq._capturing(torch.device("cpu"))


def test_atomics_buffer_is_zeroed_on_replay(fake, monkeypatch) -> None:
    """With the partial pairs off (``PARTIALS_MAX = 0``), the amax pass folds with atomics into
    ``ATOMIC_SLOTS`` zeroed pairs, which the QDQ pass reduces (``n_part`` of them): the replay
    hands each call fresh zeroed pairs."""
    tq, call = fake
    monkeypatch.setattr(tq, "PARTIALS_MAX", 0)
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 0)
    slots = tq.ATOMIC_SLOTS
    assert slots > 1
    x = torch.randn(8, 256, dtype=torch.bfloat16)
    _, first = call(x, "nvfp4")
    assert [n for _, n, _, _ in first] == ["_amax_kernel", "_qdq_block_kernel"]
    entry = next(iter(tq._FAST.values()))
    assert entry.buf_zero and entry.buf_n == 2 * slots
    _, second = call(x, "nvfp4")
    buf = second[0][3][1]
    assert {k for k, *_ in second} == {"replay"} and buf.numel() == 2 * slots and second[1][3][_qarg(tq, "n_part")] == slots


@pytest.mark.parametrize("name", ["nvfp4", "fp8_e4m3_per_tensor"])
def test_one_tile_two_pass_is_one_launch(fake, name: str, monkeypatch) -> None:
    """A two-pass recipe's decode-sized call that is one tile: one launch (the QDQ kernel reducing
    its own amax), no amax pass and no scratch buffer, replayed as such."""
    tq, call = fake
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 8192)
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    _, first = call(x, name)
    assert [n for _, n, _, _ in first] == ["_qdq_block_kernel"] and first[0][2] == (1,)
    _, second = call(torch.randn(2, 256, dtype=torch.bfloat16), name)
    assert [(k, n) for k, n, _, _ in second] == [("replay", "_qdq_block_kernel")]
    entry = next(iter(tq._FAST.values()))
    assert entry.buf_align is None and entry.buf_n == 0


@pytest.mark.parametrize(("case", "asks"), [("one-pass", False), ("one tile", False), ("atomics", False),
                                           ("pairs", True), ("barrier", True)])
def test_replay_asks_the_capture_state_only_where_it_matters(fake, case: str, asks: bool, monkeypatch) -> None:
    """A replay asks whether its stream captures a CUDA graph (``_call_state``'s ``capture``: 0.37 us
    on the H100 host of 07f) only where the answer changes what it does: a grid barrier call
    (``GRID_SYNC``) or a pairs buffer that may be the kept one (``EAGER_SCRATCH``); never for a
    one-pass call, a one-tile call or the atomics' zeroed slots, which allocate alike either way."""
    tq, call = fake
    name = "mxfp4" if case == "one-pass" else "nvfp4"
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 8192 if case == "one tile" else 0)
    shape = (2, 256) if case == "one tile" else (8, 256)
    if case == "atomics":
        monkeypatch.setattr(tq, "PARTIALS_MAX", 0)
    if case == "barrier":
        monkeypatch.setattr(tq, "GRID_SYNC", True)
        monkeypatch.setitem(tq.TILE_CONFIG, tq.kernel_class(FORMATS[name]), (256, 1))
    asked = []
    real = tq._call_state

    def recording(device, index, capture):
        asked.append(capture)
        return real(device, index, capture)

    monkeypatch.setattr(tq, "_call_state", recording)
    call(torch.randn(*shape, dtype=torch.bfloat16), name)
    assert not asked  # the first call goes through Triton's launcher: no replay
    _, second = call(torch.randn(*shape, dtype=torch.bfloat16), name)
    assert {k for k, *_ in second} == {"replay"}
    assert asked == [asks]
    entry = next(iter(tq._FAST.values()))
    assert (entry.bar_stream is not None) == (case == "barrier") and entry.ask_capture == asks


@pytest.mark.parametrize("name", ["nvfp4", "fp8_e4m3_per_tensor"])
def test_grid_sync_is_one_launch_replayed_with_the_workspace_held(fake, name: str, monkeypatch) -> None:
    """``GRID_SYNC``: a two-pass call of several QDQ programs (here 2, this CPU's "SM count", its tile
    grown from 8 programs of one row and one warp to 2 of four rows and four warps) is recorded as
    one launch of the QDQ kernel with ``SYNC`` and replayed as such: a pair buffer of 2 words a
    program (at least), left as allocated (each program writes its pair; replayed, the buffer kept
    for the stream, ``EAGER_SCRATCH``), and the grid barrier's
    words passed where they lie (held by the entry: the same words every call, those of the stream
    it was recorded on; on another stream the call is recorded anew with that stream's)."""
    tq, call = fake
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 0)
    monkeypatch.setattr(tq, "GRID_SYNC", True)
    monkeypatch.setitem(tq.TILE_CONFIG, tq.kernel_class(FORMATS[name]), (256, 1))
    assert tq._sm_count(torch.device("cpu")) == 2
    params = list(inspect.signature(tq._qdq_block_kernel.fn).parameters)
    _, first = call(torch.randn(8, 256, dtype=torch.bfloat16), name)
    words = tq._GRID_BARRIERS[(torch.device("cpu"), 0)]
    assert [(n, g) for _, n, g, _ in first] == [("_qdq_block_kernel", (2,))]
    a = dict(zip(params, first[0][3], strict=True))
    assert a["SYNC"] and a["BLOCK_R"] == 4 and a["n_part"] == 2 and a["N_PARTIALS"] == 16
    assert a["bar_ptr"] is words and a["buf_ptr"].numel() == 4 and a["buf_ptr"].dtype == torch.int32
    entry = next(iter(tq._FAST.values()))
    assert not entry.buf_zero and entry.buf_n == 4 and any(h is words for h in entry.held)
    bufs = []
    for _ in range(2):
        _, second = call(torch.randn(8, 256, dtype=torch.bfloat16), name)
        assert [(k, n, g) for k, n, g, _ in second] == [("replay", "_qdq_block_kernel", (2, 1, 1))]
        b = dict(zip(params, second[0][3], strict=True))
        assert b["bar_ptr"] == words.data_ptr() and b["SYNC"] and b["buf_ptr"].numel() >= 4
        bufs.append(b["buf_ptr"])
    # replayed, the pairs go to the buffer kept for the stream (EAGER_SCRATCH), not the recorded one
    assert bufs[0] is bufs[1] is tq._SCRATCH[(-1, 0)] and bufs[0] is not a["buf_ptr"]
    assert tq._GRID_BARRIERS[(torch.device("cpu"), 0)] is words and len(tq._FAST) == 1
    # on another stream the recorded call (which holds the words of the stream it was recorded on)
    # is not replayed: the full path runs and records the call anew with that stream's words
    monkeypatch.setattr(tq, "_stream_of", lambda device: 5)  # the full path's view
    monkeypatch.setattr(tq, "_call_state", lambda device, index, capture: (5, False))  # the replay's
    _, third = call(torch.randn(8, 256, dtype=torch.bfloat16), name)
    assert [(k, n) for k, n, _, _ in third] == [("jit", "_qdq_block_kernel")]
    other = tq._GRID_BARRIERS[(torch.device("cpu"), 5)]
    assert other is not words and dict(zip(params, third[0][3], strict=True))["bar_ptr"] is other
    assert next(iter(tq._FAST.values())).bar_stream == 5


@pytest.mark.parametrize("name", ["nvfp4", "fp8_e4m3_per_tensor"])
def test_grid_sync_eager_mode_captures_two_launches(fake, name: str, monkeypatch) -> None:
    """``GRID_SYNC = "eager"``: outside a CUDA graph capture a call takes the barrier (one launch,
    recorded and replayed as one); while its stream captures, the recorded barrier call is not
    replayed into the graph, the call takes the two launches (amax pass, QDQ pass without
    ``SYNC``), and the recorded barrier call stays for the eager calls after the capture."""
    tq, call = fake
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 0)
    monkeypatch.setattr(tq, "GRID_SYNC", "eager")
    monkeypatch.setitem(tq.TILE_CONFIG, tq.kernel_class(FORMATS[name]), (256, 1))
    params = list(inspect.signature(tq._qdq_block_kernel.fn).parameters)
    capturing = [False]
    monkeypatch.setattr(tq, "_capturing", lambda device: capturing[0])  # the full path's view
    monkeypatch.setattr(tq, "_call_state", lambda device, index, capture: (0, capture and capturing[0]))  # the replay's

    def launches(rec) -> list:
        return [(k, n, dict(zip(params, a, strict=True)).get("SYNC") if n == "_qdq_block_kernel" else None)
                for k, n, _, a in rec]

    _, first = call(torch.randn(8, 256, dtype=torch.bfloat16), name)
    assert launches(first) == [("jit", "_qdq_block_kernel", True)]
    _, second = call(torch.randn(8, 256, dtype=torch.bfloat16), name)
    assert launches(second) == [("replay", "_qdq_block_kernel", True)]
    entry = next(iter(tq._FAST.values()))
    assert entry.bar_stream is not None
    capturing[0] = True
    for _ in range(2):  # each captured call through the launcher: two launches, the entry kept
        _, captured = call(torch.randn(8, 256, dtype=torch.bfloat16), name)
        assert launches(captured) == [("jit", "_amax_kernel", None), ("jit", "_qdq_block_kernel", False)]
        assert list(tq._FAST.values()) == [entry]
    capturing[0] = False
    _, after = call(torch.randn(8, 256, dtype=torch.bfloat16), name)
    assert launches(after) == [("replay", "_qdq_block_kernel", True)]


@pytest.mark.parametrize("value", ["on", 1, None])
def test_grid_sync_rejects_other_values(fake, value, monkeypatch) -> None:
    """A ``GRID_SYNC`` value other than False, True and "eager" stops the call, naming it."""
    tq, call = fake
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 0)
    monkeypatch.setattr(tq, "GRID_SYNC", value)
    with pytest.raises(ValueError, match=r"GRID_SYNC = .*accepted: False, True, 'eager'"):
        call(torch.randn(8, 256, dtype=torch.bfloat16), "nvfp4")


@pytest.mark.parametrize("opts", [{"rounding": "stochastic", "seed": 7}, {"rotate": Rotation(block=32)},
                                  {"rotate": Rotation(block=32, seed=3)}, {"rotate": Rotation(block=128, seed=3)}],
                         ids=["sr", "hadamard", "random", "random-128"])
def test_options_replay_and_key_on_their_settings(fake, opts) -> None:
    """Stochastic rounding and a block recipe's rotation are replayed too, keyed on their
    settings; a random rotation's cached sign vector is passed as recorded (held by the entry)."""
    tq, call = fake
    x = torch.randn(8, 256, dtype=torch.bfloat16)
    _, first = call(x, "mxfp4", **opts)
    assert {k for k, *_ in first} == {"jit"}
    _, second = call(torch.randn(8, 256, dtype=torch.bfloat16), "mxfp4", **opts)
    assert {k for k, *_ in second} == {"replay"}
    entry = next(iter(tq._FAST.values()))
    rot = opts.get("rotate")
    if rot is not None and rot.seed is not None:
        signs = second[0][3][3]  # as its address: the launcher reads an int as a pointer
        mults = second[0][3][_qarg(tq, "mult_ptr")]  # the inverse's multipliers (INV_MULTS_MIN), else signs
        held = [t.data_ptr() for t in entry.held]
        # the inverse's multipliers from INV_MULTS_MIN up, unless the signs are sign words (SIGN_WORDS,
        # bf16: the inverse reads the words too)
        inv = rot.block >= tq.INV_MULTS_MIN and not tq.SIGN_WORDS
        assert held == ([signs, mults] if inv else [signs]), (held, signs, mults)
        assert (mults != signs) == inv
    other = dict(opts, seed=8) if "seed" in opts else {"rotate": Rotation(block=64, seed=getattr(rot, "seed", None))}
    assert {k for k, *_ in call(x, "mxfp4", **other)[1]} == {"jit"}  # another seed or block: recorded anew
    assert len(tq._FAST) == 2


def test_a_new_layout_recipe_or_tile_table_goes_through_triton(fake, monkeypatch) -> None:
    tq, call = fake
    x = torch.randn(8, 256, dtype=torch.bfloat16)
    call(x, "mxfp4")
    assert {k for k, *_ in call(x, "mxfp4")[1]} == {"replay"}
    for other in (torch.randn(9, 256, dtype=torch.bfloat16), x.float(), x.t().contiguous().t()[:, :128]):
        assert {k for k, *_ in call(other, "mxfp4")[1]} == {"jit"}  # shape, dtype, strides
    assert {k for k, *_ in call(x, "mxfp4", "even")[1]} == {"jit"}  # rule
    assert {k for k, *_ in call(x, "mxfp6_e2m3")[1]} == {"jit"}  # format
    # a tile table entry replaced (the tuner does this in-process): planned again
    monkeypatch.setitem(tq.TILE_CONFIG, "mx", tuple(list(tq.TILE_CONFIG["mx"])))
    assert {k for k, *_ in call(x, "mxfp4")[1]} == {"jit"}
    assert {k for k, *_ in call(x, "mxfp4")[1]} == {"replay"}


def test_other_alignment_and_unreplayable_calls_take_the_full_path(fake) -> None:
    tq, call = fake
    base = torch.randn(8 * 256 + 8, dtype=torch.bfloat16)
    x = base[:2048].view(8, 256)
    call(x, "mxfp4")
    shifted = base[1:2049].view(8, 256)  # 2 bytes off: another alignment class
    assert {k for k, *_ in call(shifted, "mxfp4")[1]} == {"jit"}
    assert {k for k, *_ in call(shifted, "mxfp4")[1]} == {"replay"}
    # a y of another alignment class than recorded: the full path (which records it anew)
    entry = next(iter(tq._FAST.values()))
    entry.y_align ^= 16
    assert {k for k, *_ in call(x, "mxfp4")[1]} == {"jit"}
    # a global amax of another type than float or one fp32 element (an int, a bf16 tensor): the full path
    before = dict(tq._FAST)
    for g in (3, torch.tensor(3.0, dtype=torch.bfloat16), torch.ones(1, dtype=torch.float64)):
        assert {k for k, *_ in call(x, "nvfp4", global_amax=g)[1]} == {"jit"}
        assert {k for k, *_ in call(x, "nvfp4", global_amax=g)[1]} == {"jit"}
    assert tq._FAST.keys() == before.keys()


def test_given_global_amax_replays(fake) -> None:
    """NVFP4 with a given global amax is one pass: a float is keyed by value and passed as the
    kernel's fp32 argument; a one-element fp32 tensor is passed where it lies, a new one each call."""
    tq, call = fake
    x = torch.randn(8, 256, dtype=torch.bfloat16)
    _, first = call(x, "nvfp4", global_amax=3.0)
    assert [n for _, n, _, _ in first] == ["_qdq_block_kernel"]  # no amax pass
    _, second = call(x, "nvfp4", global_amax=3.0)
    assert {k for k, *_ in second} == {"replay"} and second[0][3][_qarg(tq, "gamax_f")] == 3.0
    assert {k for k, *_ in call(x, "nvfp4", global_amax=5.0)[1]} == {"jit"}  # another value
    g1, g2 = torch.tensor(40.0), torch.tensor([0.5])
    assert {k for k, *_ in call(x, "nvfp4", global_amax=g1)[1]} == {"jit"}
    _, second = call(x, "nvfp4", global_amax=g2)
    assert {k for k, *_ in second} == {"replay"} and second[0][3][2] is g2  # read where it lies


def test_on_by_default() -> None:
    """``FAST_LAUNCH`` is on by default (read before any fixture patches it)."""
    pytest.importorskip("triton")
    import vllm_qdq.numerics.triton_qdq as tq

    assert tq.FAST_LAUNCH is True


def test_block_size_recipe_is_one_object() -> None:
    """A recipe with another block size is one object per (recipe, block size), so the fast
    path's identity key meets it again instead of recording it on every call."""
    from vllm_qdq.numerics.formats import get_format

    assert get_format("mxfp4", 16) is get_format("mxfp4", 16)
    assert get_format("mxfp4", 16) == get_format("mxfp4", 16) != get_format("mxfp4", 64)


def test_a_refused_recording_keeps_the_call_and_is_not_retried(fake, monkeypatch, caplog) -> None:
    """A launch the replay cannot rebuild (``_FastCall`` raises) leaves the call's result alone,
    is logged once, and the key is not recorded again."""
    tq, call = fake
    tries = []

    def refuse(*args):
        tries.append(1)
        raise AssertionError("a tensor argument that is not x, y or the buffer")

    monkeypatch.setattr(tq, "_FastCall", refuse)
    monkeypatch.setattr(tq, "_FAST_REFUSED", set())
    monkeypatch.setattr(tq, "_FAST_LOGGED", [])
    x = torch.randn(8, 256, dtype=torch.bfloat16)
    with caplog.at_level("WARNING"):
        for _ in range(3):
            y, log = call(x, "mxfp4")
            assert {k for k, *_ in log} == {"jit"}
            assert_same_bits(y, qdq_reference(x, FORMATS["mxfp4"], "floor"))
    assert len(tries) == 1 and not tq._FAST
    assert sum("eager fast path not used" in r.getMessage() for r in caplog.records) == 1


def test_off_records_nothing(fake, monkeypatch) -> None:
    """Switched off, every call binds through Triton and nothing is recorded."""
    tq, call = fake
    monkeypatch.setattr(tq, "FAST_LAUNCH", False)
    x = torch.randn(8, 256, dtype=torch.bfloat16)
    for _ in range(3):
        assert {k for k, *_ in call(x, "mxfp4")[1]} == {"jit"}
    assert not tq._FAST


def test_direct_replay_calls_the_generated_launcher_with_addresses(fake, monkeypatch) -> None:
    """Where the compiled launcher is Triton 3.6's ``CudaLauncher`` (no scratch memory) and no
    launch hook is installed, the replay calls its C ``launch`` with the layout Triton 3.6's
    ``CudaLauncher.__call__`` uses (grid, stream, function, cooperative and PDL flags, two scratch
    objects, kernel metadata, launch metadata, two hooks, then the kernel's arguments) and the
    tensors as integer addresses; a hook installed sends it back through ``CompiledKernel[grid]``."""
    tq, call = fake
    launched = []

    class CudaLauncher:  # the name the direct path checks for
        global_scratch_size = profile_scratch_size = 0
        launch_cooperative_grid, launch_pdl = False, True

        def launch(self, *a):
            launched.append(a)

    def run_prop(self):
        return CudaLauncher()

    monkeypatch.setattr(tq.triton, "__version__", "3.6.0")
    monkeypatch.setattr(sys.modules[__name__]._Compiled, "run", property(run_prop), raising=False)
    monkeypatch.setattr(sys.modules[__name__]._Compiled, "function", 1234, raising=False)
    monkeypatch.setattr(sys.modules[__name__]._Compiled, "packed_metadata", (4, 1, 0), raising=False)
    monkeypatch.setattr(tq, "_call_state", lambda device, index, capture: (777, False))
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 0)
    x = torch.randn(8, 256, dtype=torch.bfloat16)
    _, first = call(x, "nvfp4")
    entry = next(iter(tq._FAST.values()))
    assert entry.direct
    x2 = torch.randn(8, 256, dtype=torch.bfloat16)
    y = tq.qdq(x2, FORMATS["nvfp4"])
    assert len(launched) == 2  # the amax pass and the QDQ pass, no Python-level runner
    for a, (_, name, grid, full) in zip(launched, first, strict=True):
        assert a[:13] == (*(*grid, 1, 1)[:3], 777, 1234, False, True, None, None, (4, 1, 0), None, None, None)
        kargs = a[13:]
        assert len(kargs) == len(full)
        assert kargs[0] == x2.data_ptr()
        if name == "_qdq_block_kernel":
            assert kargs[1] == y.data_ptr() and isinstance(kargs[2], int)
        for k, f in zip(kargs, full, strict=True):
            if not isinstance(f, torch.Tensor):
                assert k == f or k is f
    # a launch hook installed (a profiler): the full launcher path, per call
    chain = tq.triton.knobs.runtime.launch_enter_hook
    hook = lambda metadata: None  # noqa: E731
    chain.add(hook)
    try:
        assert not tq._hooks_idle()
        n = len(launched)
        _, log = call(torch.randn(8, 256, dtype=torch.bfloat16), "nvfp4")
        assert len(launched) == n and {k for k, *_ in log} == {"replay"}
    finally:
        chain.remove(hook)
    assert tq._hooks_idle()


def test_direct_launcher_only_where_verified(monkeypatch) -> None:
    """Another Triton version, another launcher class or one that needs scratch memory: no
    direct replay (the recorded ``CompiledKernel[grid]`` launcher is used)."""
    pytest.importorskip("triton")
    import vllm_qdq.numerics.triton_qdq as tq

    class CudaLauncher:
        global_scratch_size = profile_scratch_size = 0
        launch_cooperative_grid = launch_pdl = False

        def launch(self, *a):
            pass

    class Compiled:
        function, packed_metadata = 1, (1, 1, 0)
        run = CudaLauncher()

    monkeypatch.setattr(tq.triton, "__version__", "3.6.1")
    assert tq._direct_launcher(Compiled())[1][0] == 1
    monkeypatch.setattr(tq.triton, "__version__", "3.7.0")
    assert tq._direct_launcher(Compiled()) is None
    monkeypatch.setattr(tq.triton, "__version__", "3.6.1")
    Compiled.run.global_scratch_size = 64
    assert tq._direct_launcher(Compiled()) is None
    Compiled.run = object()
    assert tq._direct_launcher(Compiled()) is None


def test_rounding_and_seed_are_part_of_the_key(fake) -> None:
    """A nearest call and a stochastic call (default seed) of one recipe on one layout are two
    entries; a stochastic call of a recipe that does not take it still raises after a nearest one
    was recorded (the replay never skips the recipe checks of another recipe)."""
    tq, call = fake
    x = torch.randn(8, 256, dtype=torch.bfloat16)
    call(x, "mxfp4")
    assert {k for k, *_ in call(x, "mxfp4", rounding="stochastic")[1]} == {"jit"}
    assert {k for k, *_ in call(x, "mxfp4", rounding="stochastic")[1]} == {"replay"}
    assert {k for k, *_ in call(x, "mxfp4", rounding="stochastic", seed=0)[1]} == {"replay"}  # the default seed
    assert {k for k, *_ in call(x, "mxfp4")[1]} == {"replay"}
    assert len(tq._FAST) == 2
    call(x, "fp8_e4m3_per_token")
    with pytest.raises(ValueError, match="stochastic"):
        tq.qdq(x, FORMATS["fp8_e4m3_per_token"], rounding="stochastic")
