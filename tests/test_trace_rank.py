"""Trace lines name the ``torch.distributed`` rank only in a multi-process group (TP workers)."""

from __future__ import annotations

import re

import torch.distributed as dist
from vllm_qdq.log import CappedTracer, _rank


def test_no_rank_outside_a_group(capsys) -> None:
    assert not dist.is_initialized()
    assert _rank() == ""
    t = CappedTracer(2)
    assert t.emit("a") and t.emit("b") and not t.emit("c")
    err = capsys.readouterr().err.splitlines()
    assert [re.sub(r"pid=\d+", "pid=P", ln) for ln in err] == [
        "[vllm_qdq trace] pid=P #1 a",
        "[vllm_qdq trace] pid=P #2 b (trace limit reached: later calls are not traced)",
    ]


def test_no_rank_in_a_one_process_group(tmp_path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert _rank() == ""
    finally:
        dist.destroy_process_group()


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        with open(f"{out}.{rank}", "w") as f:
            f.write(_rank())
    finally:
        dist.destroy_process_group()


def test_rank_in_a_two_process_group(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path / "out")), nprocs=2, join=True)
    assert [(tmp_path / f"out.{r}").read_text() for r in (0, 1)] == [" rank=0", " rank=1"]
