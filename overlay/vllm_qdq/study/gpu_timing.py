"""GPU timing helpers of the benchmark scripts (CUDA only): what a call costs eagerly, from a
CUDA graph, and the kernels alone.

* :func:`kernel_ms`: one call captured in a CUDA graph, the replay timed by
  ``triton.testing.do_bench`` (L2 flushed before each): the kernels, without the host's launch path.
* :func:`graph_us`: per call, ``calls`` calls replayed from one graph (what vLLM's CUDA graphs see).
* :func:`host_us`: per call, wall time of back-to-back eager calls then one synchronize (what an
  eager caller pays: host-bound when the kernel is shorter than the launch path);
  :func:`host_us_interleaved`: the same for several callables, their batches interleaved.
* :func:`kernel_us_l2`: one call replayed from a CUDA graph with the L2 left in a chosen state
  before it (:data:`L2_STATES`): what :func:`kernel_ms`'s flush costs a short kernel.
"""

from __future__ import annotations

import time

import torch

__all__ = ["L2_STATES", "bench_ms", "capture", "graph_us", "host_us", "host_us_interleaved", "kernel_ms",
           "kernel_us_l2"]


def bench_ms(fn, reps: int = 50) -> float:
    """Median milliseconds per call (triton.testing.do_bench: warm-up, L2 flush, CUDA events)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=reps, return_mode="median")


def capture(fn, calls: int) -> torch.cuda.CUDAGraph:
    """A CUDA graph holding ``calls`` calls of ``fn``, warmed up on a side stream first and captured
    on that same stream (as vLLM captures on the stream it warmed up on: what a call made per
    stream in its warm-up, e.g. the QDQ grid barrier's words, is found in the capture)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        for _ in range(calls):
            fn()
    return g


def kernel_ms(fn) -> float:
    """Median ms of one call replayed from a CUDA graph (do_bench: L2 flushed before each)."""
    return bench_ms(capture(fn, 1).replay)


#: The L2 states :func:`kernel_us_l2` times a call after: "dirty", a 256 MB buffer zeroed (what
#: ``triton.testing.do_bench`` and so :func:`kernel_ms` do: the L2 left full of written lines, which
#: the timed call's own traffic must write back to memory first); "clean", the same zeroing then a
#: read of another 256 MB buffer (the written lines pushed out before the call: the L2 full of
#: unmodified lines of neither x nor y); "hot", nothing between replays (x and y left in the L2 by
#: the previous call where they fit, as when the layer before has just written x).
L2_STATES = ("dirty", "clean", "hot")


def kernel_us_l2(fn, state: str, reps: int = 40) -> float:
    """Median microseconds of one call of ``fn`` replayed from a CUDA graph, the L2 put in
    ``state`` (one of :data:`L2_STATES`) before each replay, outside the CUDA events that time it."""
    if state not in L2_STATES:
        raise ValueError(f"L2 state {state!r}; accepted: {', '.join(L2_STATES)}")
    g = capture(fn, 1)
    flush = torch.empty(64 * 2**20, dtype=torch.int32, device="cuda")  # 256 MB, > any L2 today
    other = torch.ones(64 * 2**20, dtype=torch.int32, device="cuda") if state == "clean" else None
    sink = torch.empty((), dtype=torch.int32, device="cuda")
    times = []
    for i in range(reps + 5):
        if state != "hot":
            flush.zero_()
            if other is not None:
                torch.amax(other, dim=0, out=sink)  # a read: evicts the zeroed lines, writes them back
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        if i >= 5:  # the first replays warm up
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) * 1e3)
    return sorted(times)[len(times) // 2]


def graph_us(fn, calls: int = 20) -> float:
    """Microseconds per call when ``calls`` calls replay from one CUDA graph (median of 20)."""
    g = capture(fn, calls)
    times = []
    for _ in range(20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / calls)
    return sorted(times)[len(times) // 2]


def host_us(fn, calls: int = 200) -> float:
    """Wall microseconds per call of ``calls`` back-to-back eager calls, then one synchronize
    (median of 5 rounds): host-bound when the kernel is shorter than the launch path."""
    return sorted(host_us_interleaved({"fn": fn}, rounds=5, calls=calls)["fn"])[2]


def host_us_interleaved(fns: dict, rounds: int, calls: int = 200) -> dict[str, list[float]]:
    """Wall microseconds per call of ``calls`` back-to-back eager calls of each of ``fns`` (after
    10 warm-up calls each), one batch of each in turn, ``rounds`` times (the order rotated a place
    each round), one synchronize after each batch: every callable's figures spread over the same
    stretch of time, so that the host's drift (10 -> 16 us for one format between two tables on
    2026-12-06's H200) moves them all alike instead of whichever ran last."""
    names = list(fns)
    for name in names:  # recorded (a fast path's first call) and warm, outside the timing
        for _ in range(10):
            fns[name]()
    torch.cuda.synchronize()
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            fn = fns[name]
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
            out[name].append((time.perf_counter() - t0) * 1e6 / calls)
    return out
