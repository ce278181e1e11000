"""The two-pass recipes (a whole-tensor amax before the QDQ) and the ways the Triton launcher gets
that amax, shared by the Triton interpreter test of the kernels and the GPU recipe test (the image's
smoke suite carries this module, not the interpreter test)."""

from __future__ import annotations

#: one tile reducing its own amax (``ONE_TILE_MAX``), an amax pass of partial pairs, of atomics
#: (with the cache hints on: ``L2_HINTS`` loads, ``Y_STREAM`` stores; the same bits), the streaming
#: amax pass (``AMAX_STAGES``; rotated calls keep the atomics' pass)
PATHS = ("one_tile", "partials", "atomics", "stream")
#: (format, quantize_dequantize options), and their test ids
CASES = (
    ("nvfp4", {}), ("nvfp4", {"rotate": {"block": 64, "seed": 1}}), ("nvfp4", {"rotate": {"block": 128}}),
    ("nvfp4_e5m3", {"scale_rule": "four_over_six", "rounding": "stochastic", "seed": 5}),
    ("fp8_e4m3_per_tensor", {}), ("fp8_e4m3_per_tensor", {"rotate": {"block": 32}}),
)
IDS = ("nvfp4", "nvfp4-rot", "nvfp4-h128", "e5m3-46-sr", "per-tensor", "per-tensor-rot")


def force_path(tq, path: str, monkeypatch) -> None:
    """Make the launcher module ``tq`` take ``path`` for the calls these tests make."""
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 8192 if path == "one_tile" else 0)
    monkeypatch.setattr(tq, "PARTIALS_MAX", 0 if path in ("atomics", "stream") else 256)
    monkeypatch.setattr(tq, "AMAX_STAGES", 3 if path == "stream" else 0)
    monkeypatch.setattr(tq, "L2_HINTS", path == "atomics")
    monkeypatch.setattr(tq, "Y_STREAM", path == "atomics")


#: GPU clock cycles each stream spins (``torch.cuda._sleep``) before :func:`back_to_back_on_two_streams`
#: queues its interleaved calls (~10 ms on an H100): the host queues them all while the GPU is held,
#: so the two streams' kernels run side by side
SLEEP_CYCLES = 20_000_000


def back_to_back_on_two_streams(tq, fmt: str, grid_sync: bool | str, monkeypatch, calls: int = 16) -> None:
    """``tq.EAGER_SCRATCH`` (a kept scratch buffer per device and stream for an eager replay's
    partial pairs): ``2 * calls`` eager calls of ``fmt`` with no synchronize between them, each bit
    for bit with the reference. Two-launch path (``grid_sync`` False, 64 rows x 4096): the calls
    alternate between the current stream and a side stream, queued while both streams spin, so
    that the streams' kernels overlap; magnitudes alternate by 2**24 between one stream's
    consecutive calls and between the two streams' concurrent ones (a call that read another
    call's pairs, on its stream or the other, would scale by the wrong amax). Grid barrier
    (``grid_sync`` "eager", 16 rows x 4096: 64 programs): ``calls`` on the current stream, then
    ``calls`` on the side stream (a barrier call replays only on the stream it was recorded on), each
    call the barrier's one launch. Every call after the first on its stream (after the first of
    all, interleaved) is a replay, and each stream keeps one buffer."""
    import torch
    from vllm_qdq.numerics.formats import FORMATS
    from vllm_qdq.numerics.qdq import quantize_dequantize

    from tests.support.bits import assert_same_bits

    monkeypatch.setattr(tq, "EAGER_SCRATCH", True)
    monkeypatch.setattr(tq, "GRID_SYNC", grid_sync)
    monkeypatch.setattr(tq, "_FAST", {})
    monkeypatch.setattr(tq, "_SCRATCH", {})
    spec = FORMATS[fmt]
    seen: list[int] = []
    real = tq._FastCall.__call__

    def spy(self, x, gamax=None):
        y = real(self, x, gamax)
        seen.append(0 if y is None else 1)
        return y

    monkeypatch.setattr(tq._FastCall, "__call__", spy)
    streams = (torch.cuda.current_stream(), torch.cuda.Stream())
    torch.manual_seed(7)
    if grid_sync:
        shape, order = (16, 4096), [(s, i) for s in (0, 1) for i in range(calls)]
        signs = [(-1) ** i for _, i in order]
    else:
        shape, order = (64, 4096), [(i % 2, i // 2) for i in range(2 * calls)]
        signs = [(-1) ** (i + s) for s, i in order]
        for s in streams:
            with torch.cuda.stream(s):
                torch.cuda._sleep(SLEEP_CYCLES)
    xs, outs = [], []
    for (s, _), sign in zip(order, signs, strict=True):
        with torch.cuda.stream(streams[s]):
            xs.append(torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 2.0 ** (12 * sign))
            outs.append(tq.qdq(xs[-1], spec))
    torch.cuda.synchronize()
    for x, out in zip(xs, outs, strict=True):
        assert_same_bits(out, quantize_dequantize(x, fmt, backend="reference"))
    if grid_sync:  # the second stream's first call is recorded anew (the barrier's words are per stream)
        assert sum(seen) == 2 * (calls - 1), seen
        assert all(e.bar_stream is not None for e in tq._FAST.values()), "the barrier path was not taken"
    else:
        assert sum(seen) == 2 * calls - 1, seen
    dev = torch.cuda.current_device()
    assert sorted(tq._SCRATCH) == sorted((dev, s.cuda_stream) for s in streams)
