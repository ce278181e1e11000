"""The sage3 eager fast path's recording on CPU (``vllm_qdq.sage3.numerics.kernel._Replay``): a call
made under ``TRITON_INTERPRET=1`` is recorded, and a replay with other tensors hands each launch the
new call's addresses where the first call had its tensors, the same scalar arguments, grids in
order, NVFP4's ``g`` views at their byte offsets and the MX formats' held ``[1, 1]`` by address. The
replay itself (Triton's C launchers, bit for bit with the full path) runs on the GPU:
``tests/gpu/test_sage3_gpu.py::test_fast_path_replays_bit_for_bit``. The interpreter is set in a
subprocess (it must be set before the kernel module is imported)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import os, sys
assert os.environ.get("TRITON_INTERPRET") == "1"
import torch
from vllm_qdq.sage3.numerics import kernel as K

fmt = sys.argv[1]
K.FUSE_Q = sys.argv[2] == "1"  # Q quantized by the attention kernel: no raw Q buffer to place
K._ALIGN = 0  # CPU allocations: any alignment (the GPU allocator's blocks are 512-byte aligned)
assert K._fast_key(*(torch.zeros(1, 64, 2, 32),) * 3, fmt, "fp32", False, None, None, "floor") is None  # interpreted


def inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 64, h, 32, generator=g).to(torch.bfloat16) for h in (4, 2, 2)]


q, k, v = inputs(0)
rec = []
out = K._sage3_full(q, k, v, fmt, "fp32", False, None, None, "floor", rec)
launches = [r for r in rec if r[0] != "buffers"]
names = [r[0].__name__ for r in launches]
want = (["_k_mean_part_kernel", "_k_mean_final_kernel"] + (["_nvfp4_amax_kernel"] if fmt == "nvfp4" else [])
        + ["_qdq_prepass_kernel", "_sage3_fwd_kernel"])
assert names == want, names


class Fake:  # stands for a compiled kernel: [grid] gives a runner that records its arguments
    def __init__(self, log, name):
        self.log, self.name = log, name

    def __getitem__(self, grid):
        return lambda *args: self.log.append((self.name, grid, args))


log = []
rec = [r if r[0] == "buffers" else (r[0], r[1], r[2], r[3], Fake(log, r[0].__name__)) for r in rec]
replay = K._Replay(q, k, v, out, rec)
assert not replay.direct  # no C launcher to call on this Triton
q2, k2, v2 = inputs(1)
out2 = replay(q2, k2, v2)
assert out2 is not None and out2.shape == out.shape and out2.dtype == out.dtype
assert [n for n, _, _ in log] == want
moved = {}  # the first call's address -> the replay's, over every launch: one-to-one and consistent
for (fn, grid, args, kwargs, _), (_, grid3, got) in zip(launches, log, strict=True):
    assert grid3 == tuple(grid) + (1,) * (3 - len(grid)), (grid, grid3)
    full = K._full_args(fn, args, kwargs)
    assert len(got) == len(full)
    for i, (a, b) in enumerate(zip(full, got, strict=True)):
        if not isinstance(a, torch.Tensor):
            assert a == b, (fn.__name__, i, a, b)
            continue
        assert isinstance(b, int), (fn.__name__, i, b)
        assert moved.setdefault(a.data_ptr(), b) == b, (fn.__name__, i)
        for old, new in ((q, q2), (k, k2), (v, v2), (out, out2)):
            if a is old:
                assert b == new.data_ptr(), (fn.__name__, i)
        if fmt != "nvfp4" and a.untyped_storage().data_ptr() == K._ones2(q.device).untyped_storage().data_ptr():
            assert b == a.data_ptr()  # the held [1, 1]: the same address every call
        if a is K._P_TAB.get(q.device):
            assert b == a.data_ptr()  # P's NVFP4 table: the same address every call
assert len(set(moved.values())) == len(moved), moved  # no two of the first call's tensors land together
assert any(a is K._P_TAB.get(q.device) for a in launches[-1][2]) == (fmt == "nvfp4")
# NVFP4: the attention kernel's 1/gs pointers sit at the recorded offsets into this call's g (the
# prepass kernel's g argument); with FUSE_Q, Q's is its amax word (the kernel computes 1/gs)
if fmt == "nvfp4":
    g_new = log[3][2][4]
    offs = [b - g_new for (_, _, got) in log[4:] for b in got[5:8]]
    assert offs == ([0] if K.FUSE_Q else [8]) + [20, 32], offs
print("ok")
'''


@pytest.mark.parametrize("fuse_q", ["0", "1"])
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "mxfp8_s1"])
def test_replay_places_the_new_calls_tensors(fmt: str, fuse_q: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO / "overlay"))
    r = subprocess.run([sys.executable, "-c", SCRIPT, fmt, fuse_q], env=env, capture_output=True, text=True, timeout=600,
                       cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), (r.stdout + r.stderr)[-3000:]
