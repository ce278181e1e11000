"""The GPU tests' Inductor fingerprint (tests/support/inductor_fingerprint.py) on a made-up cache."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.inductor_fingerprint import fingerprint

RED = "@triton.jit\ndef triton_red_fused_0(in_ptr0, out_ptr0, xnumel, r0_numel):\n    xoffset = tl.program_id(0)\n"
COMBO = "@triton.jit\ndef triton_poi_fused_1(in_ptr0):\n    pid = tl.program_id(0)\n    num_xblocks_0 = 4\n"


def _wrapper(*kernels: tuple[str, str]) -> str:
    """An output-code module as Inductor writes it: kernels inline, then ``call``."""
    out = ["from torch._inductor.async_compile import AsyncCompile", "async_compile = AsyncCompile()"]
    for name, src in kernels:
        out += [f"{name} = async_compile.triton({name!r}, '''", src, "''', device_str='cuda')", ""]
    return "\n".join([*out, "def call(args):", "    pass", ""])


def _cache(root: Path, key: str, wrappers: list[str], picks: dict[str, dict]) -> None:
    d = root / "torch_compile_cache" / "torch_aot_compile" / key / "inductor_cache" / "ab"
    d.mkdir(parents=True)
    for i, w in enumerate(wrappers):
        (d / f"w{i}.py").write_text(w)
    # a kernel file and a benchmark module of a combo candidate: written, not launched
    (d / "k0.py").write_text(COMBO)
    (d / "bench.py").write_text(COMBO + "\ndef get_args():\n    pass\n")
    for name, cfg in picks.items():
        (d / f"{name}.best_config").write_text(json.dumps(cfg))


def test_counts_launched_kernels_combo_and_picks(tmp_path: Path) -> None:
    pick = {"XBLOCK": 1, "R0_BLOCK": 2048, "num_warps": 16, "num_stages": 1, "time_taken_ms": 3}
    # two graph pieces launching the same reduction kernel: one distinct kernel
    _cache(tmp_path, "aaa", [_wrapper(("triton_red_fused_0", RED)), _wrapper(("triton_red_fused_0", RED))],
           {"k0": pick})
    _cache(tmp_path, "bbb", [_wrapper(("triton_red_fused_0", RED), ("triton_poi_fused_1", COMBO))],
           {"k0": {**pick, "time_taken_ms": 9, "triton_cache_hash": "x"}})
    _cache(tmp_path, "ccc", [_wrapper(("triton_red_fused_0", RED))], {"k0": {**pick, "R0_BLOCK": 1024}})
    logs = {"off": "saved AOT compiled function to /x/torch_aot_compile/ccc/rank_0_0/model",
            "on": "... torch_aot_compile/bbb/rank_0_0/model"}
    lines = fingerprint(tmp_path, logs)
    assert [ln.split()[0] for ln in lines] == ["[off]", "[on]", "[?]"], lines  # the logs' order, then the rest
    by = {ln.split()[0]: ln for ln in lines}
    assert "kernels=1 combo=0 best_configs=1" in by["[?]"] and "/aaa/" in by["[?]"]
    assert "kernels=2 combo=1 best_configs=1" in by["[on]"]
    assert "kernels=1 combo=0 best_configs=1" in by["[off]"]
    digest = {k: ln.rsplit("picks=", 1)[1] for k, ln in by.items()}
    assert digest["[?]"] == digest["[on]"] != digest["[off]"]  # timings and cache keys are not the choice
    assert by["[off]"].split()[1] == "torch_compile_cache/torch_aot_compile/ccc/inductor_cache:"


def test_no_cache_says_so(tmp_path: Path) -> None:
    assert fingerprint(tmp_path / "missing") == [f"no Inductor cache under {tmp_path / 'missing'}"]
    assert fingerprint(tmp_path) == [f"no Inductor cache under {tmp_path}"]
