"""The eager fast path of the Triton QDQ launcher (``triton_qdq._FastCall``), without a GPU.

With ``FAST_LAUNCH`` on (the default, measured on an H200), the first call of a recipe on
a tensor layout goes through Triton's ``JITFunction`` launch and is recorded; later calls with the same key replay the compiled kernels' launchers with the new
``x``, a fresh ``y`` and a fresh scratch buffer. Here the jit functions are stand-ins that keep
the real kernels' signatures and compute the reference QDQ, so the test sees exactly which
arguments each launch got. The GPU test (tests/gpu/test_triton_qdq_gpu.py::test_eager_replay)
checks the real launchers bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from vllm_qdq.numerics.formats import FORMATS
from vllm_qdq.numerics.reference import qdq_reference

from tests.support.bits import assert_same_bits


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
            spec, rule = self.spec_of()
            args[1].copy_(qdq_reference(args[0], spec, rule))

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

    def cpu_key(x, spec, rule, axis):  # the real key, CPU tensors admitted
        return (id(spec), rule, axis, x.dtype, x.shape, x.stride(), -1, -1, x.data_ptr() & tq._ALIGN)

    assert real_key(torch.zeros(2, 32), FORMATS["mxfp4"], "floor", -1) is None  # CPU: no fast path
    monkeypatch.setattr(tq, "_fast_key", cpu_key)
    monkeypatch.setattr(tq, "_FAST", {})
    monkeypatch.setattr(tq, "FAST_LAUNCH", True)
    # CPU allocations are 64-byte aligned (the CUDA caching allocator's are 512): 16-byte classes,
    # Triton's own pointer specialization, keep a fresh y in the recorded class here
    monkeypatch.setattr(tq, "_ALIGN", 15)

    def call(x, name, rule="floor"):
        state["recipe"] = (FORMATS[name], rule)
        n = len(log)
        y = tq.qdq(x, FORMATS[name], rule)
        assert_same_bits(y, qdq_reference(x, FORMATS[name], rule))
        return y, log[n:]

    return tq, call


@pytest.mark.parametrize("name", ["mxfp4", "fp8_e4m3_per_token", "nvfp4", "fp8_e4m3_per_tensor"])
def test_second_call_replays_with_the_new_tensors(fake, name: str) -> None:
    tq, call = fake
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
    if two_pass:  # a fresh zeroed buffer each call, the same one for both kernels of the call
        bufs = [a[2] if n == "_qdq_block_kernel" else a[1] for _, n, _, a in second]
        assert len(bufs) == 2 and bufs[0] is bufs[1] and bufs[0].dtype == torch.int32
    assert len(tq._FAST) == 1


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
    # global_amax, stochastic rounding, rotation: never replayed
    before = dict(tq._FAST)
    tq.qdq(x, FORMATS["nvfp4"], global_amax=3.0)
    tq.qdq(x, FORMATS["mxfp4"], rounding="stochastic", seed=1)
    assert tq._FAST.keys() == before.keys()


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
