"""The GPU tests' Inductor fingerprint (tests/support/inductor_fingerprint.py) on a made-up cache."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.inductor_fingerprint import fingerprint

PLAIN = "@triton.jit\ndef triton_red_fused_0(in_ptr0, out_ptr0, xnumel, r0_numel):\n    pass\n"
COMBO = "@triton.jit\ndef triton_poi_fused_1(in_ptr0):\n    pid = tl.program_id(0)\n    num_xblocks_0 = 4\n"


def _cache(root: Path, h: str, picks: dict[str, dict]) -> None:
    d = root / "torch_compile_cache" / h / "rank_0_0" / "inductor_cache" / "ab"
    d.mkdir(parents=True)
    (d / "k0.py").write_text(PLAIN)
    (d / "k1.py").write_text(COMBO)
    (d / "wrapper.py").write_text("# output code, no kernel\n")
    for name, cfg in picks.items():
        (d / f"{name}.best_config").write_text(json.dumps(cfg))


def test_counts_kernels_combo_and_picks(tmp_path: Path) -> None:
    pick = {"XBLOCK": 1, "R0_BLOCK": 2048, "num_warps": 16, "num_stages": 1, "time_taken_ms": 3}
    _cache(tmp_path, "aaa", {"k0": pick})
    _cache(tmp_path, "bbb", {"k0": {**pick, "time_taken_ms": 9, "triton_cache_hash": "x"}})
    _cache(tmp_path, "ccc", {"k0": {**pick, "R0_BLOCK": 1024}})
    lines = fingerprint(tmp_path)
    assert len(lines) == 3 and all("kernels=2 combo=1 tuned=1" in ln for ln in lines), lines
    digest = [ln.rsplit("picks=", 1)[1] for ln in lines]
    assert digest[0] == digest[1] != digest[2]  # timings and cache keys are not part of the choice
    assert lines[0].startswith("torch_compile_cache/aaa/rank_0_0/inductor_cache:")


def test_no_cache_says_so(tmp_path: Path) -> None:
    assert fingerprint(tmp_path / "missing") == [f"no Inductor cache under {tmp_path / 'missing'}"]
    assert fingerprint(tmp_path) == [f"no Inductor cache under {tmp_path}"]
