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


def back_to_back_on_two_streams(tq, fmt: str, grid_sync: bool | str, monkeypatch, calls: int = 16,
                                shape: tuple[int, int] = (64, 4096)) -> None:
    """``tq.EAGER_SCRATCH`` (a kept scratch buffer per device and stream for an eager replay's
    partial pairs): ``calls`` eager calls of ``fmt`` back to back with no synchronize between them,
    magnitudes alternating by 2**24 (a call that read the next call's pairs would scale by the
    wrong amax), on the current stream and then on a side stream, each output bit for bit with the
    reference; the calls after the first replay, and each stream keeps one buffer, the one its
    replays passed."""
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
    side = torch.cuda.Stream()
    for stream in (torch.cuda.current_stream(), side):
        with torch.cuda.stream(stream):
            torch.manual_seed(7)
            xs = [torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 2.0 ** (12 * (-1) ** i) for i in range(calls)]
            outs = [tq.qdq(x, spec) for x in xs]
        torch.cuda.synchronize()
        for x, out in zip(xs, outs, strict=True):
            assert_same_bits(out, quantize_dequantize(x, fmt, backend="reference"))
    assert sum(seen) >= 2 * (calls - 1), seen  # every call after each stream's first replayed
    dev = torch.cuda.current_device()
    assert sorted(tq._SCRATCH) == sorted((dev, s.cuda_stream) for s in (torch.cuda.current_stream(), side))
