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
