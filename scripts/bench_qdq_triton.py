#!/usr/bin/env python3
"""Throughput of the fused Triton QDQ kernels against a same-size device copy (CUDA only).

For each format: GB/s of a QDQ of a bf16 tensor with 16M (4096 x 4096) and 64M (8192 x 8192)
elements, counting 2 x the tensor's bytes (one read + one write, the traffic of ``y.copy_(x)``;
per-tensor recipes read x twice but are charged the same), and the ratio to a device copy
``y.copy_(x)`` of the same tensor timed the same way in the same run. "kernel" times one call
replayed from a CUDA graph with L2 flushed before it (what the kernels cost, without the host's
launch path); "eager" is the wall time per call of back-to-back Python calls (kernels and the host
path together, L2 not flushed). Then decode-sized calls (1, 16, 64, 256 rows x 4096), us
per call: "eager" = wall time per call of 200 back-to-back Python calls (what an eager caller
pays; the median of 7 rounds, every format's batches of a row count interleaved: before
2026-12-06 each format was timed alone in turn, and the host's drift moved one format 10 -> 16 us
from one table row to the next), "graph" = GPU time per call of 20 calls replayed from one CUDA graph.

    python scripts/bench_qdq_triton.py [--check] [--formats mxfp4,nvfp4] [--rule floor] [--no-sweeps]
                                       [--no-options | --options-only]
    python scripts/bench_qdq_triton.py --l2-table
    timeout 300 python3 scripts/bench_qdq_triton.py --grid-sync-table

``--check`` exits 1 below issue 16's targets: kernel ratio >= 0.90 at 64M and >= 0.85 at 16M
for one-pass formats; >= 0.60 at 64M and >= 0.80 at 16M for two-pass ones (a whole-tensor amax
first: per-tensor recipes, NVFP4 without a given amax); graph replay per call <= copy + 1.5 us
(one-pass) or <= 2 x copy (two-pass); eager per call <= graph + 8 us.

Then the two-pass recipes' ratio by ``ATOMIC_SLOTS`` (the pairs the amax pass's atomics are
spread over; :data:`SLOT_SWEEP`), and the float64 recipes in their fp32 form against their float64
form (``triton_qdq.NARROW_F64`` on and off, :func:`bench_narrow`), the amax pass by tiles a
program reads (``AMAX_TILES_PER_PROGRAM``, :data:`TPP_SWEEP`), with L2 eviction hints and without
(``L2_HINTS``, :func:`bench_l2_hints`), the streaming amax pass by programs an SM
(``AMAX_PROGRAMS_PER_SM``), the streaming amax pass on and off (``AMAX_STAGES`` 0, 3, 4; no
gain on the H100 in ``results/h100-2026-12-05d``), and each launch of a two-pass call alone beside
a read of the tensor (:func:`bench_two_pass_split`: which pass holds the time); ``--no-sweeps``
skips these seven tables, which decide the module's switches, not a target (the smoke suite's
``bench-qdq`` step passes it unless ``SMOKE_BENCH_FULL=1``), the two-pass recipes' y stored
streaming (``Y_STREAM``) and not, with and without ``L2_HINTS`` (off since 05e), and the options
table's columns of other layouts and the unfolded scale (below), each decided in an earlier lease;
the register caps' columns (``ROT_MAXNREG``, :data:`CAP_SWEEP`) and the two-pass recipes with
their QDQ pass a programmatic dependent launch and not (``PDL``: decode-sized graph replays and
both sizes, :func:`bench_pdl`) are timed in either form. Options (issue 18, skipped with ``--no-options``): Hadamard rotation (every block, plain and
random signs), stochastic rounding, NVFP4 four over six and nvfp4_e5m3, each timed beside its
plain format; ``--check`` also exits 1 when a rotation costs more than 25% over its format's
time at 64M elements (:data:`ROTATION_BUDGET`). Rotations are timed in both kernel layouts in the
same run: rotation blocks held whole by one thread (the default, ``ROT_TILE_MAX``), in the
"uncoalesced" column the same loaded and stored in that layout (``ROT_COALESCE`` off: the default
before 2026-12-05b; blank where the recipe has no other), and in the "tile layout" column the
tile's own layout (``ROT_TILE_MAX = 0``, the layout before 2026-12-04); MX rotations whose scale is
a power of two (blocks of 16, 64), folded into the block exponents by default, also with the scale
multiplied (the "no fold" column: ``ROT_FOLD`` off); Hadamard-128 and up in the coalesced layout
also with the register caps of :data:`CAP_SWEEP` beside the default (``ROT_MAXNREG``, uncapped):
"cap 168", "cap 200"; random rotations in the coalesced layout also with ``SIGN_WORDS`` switched
(the "sign masks" column while the words are the default, "sign words" otherwise: signs packed a
bit a column against 16-bit masks and fp32 multipliers).

``--l2-table`` (alone): a copy, a read of x and the two-pass recipes at 8 to 128 MB after a dirty,
a clean and a hot L2 (:func:`bench_l2_state`): whether a two-pass call's second read comes from the
L2, and what the main table's flush (a zeroed buffer: written lines left in the L2) costs them.

``--eager-split`` (alone; not among the default tables): where an eager call's host time goes
(:func:`bench_eager_split`): the output's allocation, the scratch buffer's, the fast path's key,
the recorded launches alone and the whole call, with the kept scratch buffer (``EAGER_SCRATCH``) and
without, and with ``GRID_SYNC = "eager"``; MX, NVFP4 and FP8 per-tensor at 1-256 rows x 4096.

``--grid-sync-table`` (alone; not among the default tables): the two-pass recipes at 16-256 rows x
4096 in one launch whose programs meet at a grid barrier (``triton_qdq.GRID_SYNC``, off by default)
against the two-launch path, graph and eager, beside a copy and issue 16's targets, with the
launches each path made and whether their outputs agree bit for bit (:func:`bench_grid_sync`). Not yet
run on a GPU: a barrier that never opens would hang the process, so run it as
``timeout 300 python3 scripts/bench_qdq_triton.py --grid-sync-table``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from typing import TypeVar

import torch
from vllm_qdq.study.gpu_timing import (
    L2_STATES,
    capture,
    graph_us,
    host_us,
    host_us_interleaved,
    kernel_ms,
    kernel_us_l2,
)

T = TypeVar("T")

SIZES = ((4096, 4096), (8192, 8192))
DECODE_ROWS = (1, 16, 64, 256)
#: kernel / copy ratio targets: (one-pass, two-pass) by tensor size
TARGETS = {(4096, 4096): (0.85, 0.80), (8192, 8192): (0.90, 0.60)}
#: decode calls from a CUDA graph: one-pass <= copy + this (us), two-pass <= this factor x copy
GRAPH_SLACK_US, GRAPH_FACTOR = 1.5, 2.0
#: eager per call <= graph per call + this (us)
EAGER_OVERHEAD_US = 8.0
#: rounds of the decode table's interleaved eager timing (``host_us_interleaved``; judged: their median)
EAGER_ROUNDS = 7
#: The global amax the "(global_amax given)" rows of NVFP4 formats pass (a float: one pass).
GIVEN_AMAX = 4.0
#: A rotation may add at most this fraction to its format's time at 64M elements.
ROTATION_BUDGET = 0.25
#: (label, format, qdq keyword arguments) of the timed options; the plain format is the baseline.
OPTIONS: tuple[tuple[str, str, dict], ...] = (
    *((f"mxfp4 + hadamard{b}", "mxfp4", {"rotate": {"block": b}}) for b in (16, 32, 64, 128, 256)),
    ("mxfp4 + hadamard128 random", "mxfp4", {"rotate": {"block": 128, "seed": 1}}),
    ("mxfp8_e4m3 + hadamard128", "mxfp8_e4m3", {"rotate": {"block": 128}}),
    ("mxfp8_e4m3 + hadamard64", "mxfp8_e4m3", {"rotate": {"block": 64}}),
    ("nvfp4 + hadamard16", "nvfp4", {"rotate": {"block": 16}}),
    ("nvfp4 + hadamard128 random", "nvfp4", {"rotate": {"block": 128, "seed": 1}}),
    ("mxfp4 stochastic", "mxfp4", {"rounding": "stochastic", "seed": 1}),
    ("nvfp4 stochastic", "nvfp4", {"rounding": "stochastic", "seed": 1}),
    ("nvfp4 four_over_six", "nvfp4", {"scale_rule": "four_over_six"}),
    ("nvfp4_e5m3", "nvfp4_e5m3", {}),
    ("nvfp4_e5m3 four_over_six", "nvfp4_e5m3", {"scale_rule": "four_over_six"}),
)


#: ``triton_qdq.ROT_MAXNREG`` values the options table times beside the default (0, no cap, since
#: 2026-12-06; 168: six 64-thread programs an SM for a few spills; 200: no spills in the SASS of the
#: Hadamard-128 / -256 kernels, five programs an SM instead of four)
CAP_SWEEP = (168, 200)


def _cap_head(n: int) -> str:
    return "uncapped" if not n else f"cap {n}"


def bench_options(failures: list[str], layouts: bool = True) -> None:
    """Time every entry of :data:`OPTIONS` beside its plain format (ms and the ratio); rotations
    also with the register caps of :data:`CAP_SWEEP` and, with ``layouts``, in the other kernel
    layouts and without the folded scale (columns that decided defaults in earlier leases: the
    smoke suite's short form, ``--no-sweeps``, leaves them out)."""
    from vllm_qdq.numerics import triton_qdq
    from vllm_qdq.numerics.formats import FORMATS, Family
    from vllm_qdq.numerics.rotation import parse_rotation

    default_max = getattr(triton_qdq, "ROT_TILE_MAX", None)  # (an older tree has one layout)
    coalesce = getattr(triton_qdq, "ROT_COALESCE", None)
    fold = getattr(triton_qdq, "ROT_FOLD", None)
    cap = hasattr(triton_qdq, "ROT_MAXNREG")  # (an older tree has no register cap)

    def coalesced(spec, rot) -> bool:
        return bool(rot is not None and coalesce and triton_qdq._rot_layout(spec, rot.block) == 2)

    # (head, width, switch, value, applies to (spec, rot)): a column timing the call with a module
    # switch changed, blank where the recipe has no other path
    cols = []
    if layouts:
        cols += [("uncoalesced", 12, "ROT_COALESCE", False, coalesced),
                 ("tile layout", 12, "ROT_TILE_MAX", 0, lambda spec, rot: rot is not None and default_max is not None),
                 ("no fold", 8, "ROT_FOLD", False, lambda spec, rot: bool(
                     rot is not None and fold and triton_qdq._rot_fold(spec, rot.block,
                                                                       triton_qdq._rot_layout(spec, rot.block))))]
    cols += [(_cap_head(n), 9, "ROT_MAXNREG", n, lambda spec, rot: bool(  # where the planner caps
        cap and rot is not None and triton_qdq._rot_capped(rot.block, triton_qdq._rot_layout(spec, rot.block),
                                                           triton_qdq._held_max(spec))))
             for n in CAP_SWEEP]
    if hasattr(triton_qdq, "ROT_HELD_MAX_MX"):  # blocks above 32 held in parts of 32, 64 or 128 by adjacent lanes
        def held(n: int):
            def switch(spec) -> tuple[str, int]:
                return triton_qdq._held_switch(spec), n
            return switch

        for n in (32, 64, 128):  # blank where n is the recipe's default part size (the main column)
            cols.append((f"held {n}", 8, held(n), None, lambda spec, rot, n=n: bool(
                rot is not None and rot.block > 32 and triton_qdq._rot_layout(spec, rot.block)
                and triton_qdq._held_max(spec) != n and min(rot.block, n) != min(rot.block, triton_qdq._held_max(spec)))))
    if hasattr(triton_qdq, "ROT_MAXNREG_64"):  # NVFP4 in parts of 64 with a register cap
        cols.append(("held 64 cap 96", 14, {"ROT_HELD_MAX_NVFP4": 64, "ROT_MAXNREG_64": 96}, None,
                     lambda spec, rot: bool(rot is not None and rot.block > 64 and spec.family is Family.NVFP4
                                            and triton_qdq._rot_layout(spec, rot.block) == 2)))
    if hasattr(triton_qdq, "ROT_HELD_MAX_AMAX"):  # the amax pass's own part size, where a recipe has that pass
        for n in (32, 64, 128):  # blank where the amax pass would hold what it holds by default
            cols.append((f"amax {n}", 8, "ROT_HELD_MAX_AMAX", n, lambda spec, rot, n=n: bool(
                rot is not None and rot.block > 32 and triton_qdq._rot_layout(spec, rot.block)
                and spec.family is Family.NVFP4
                and min(rot.block, triton_qdq._amax_held_max(spec, n))
                != min(rot.block, triton_qdq._amax_held_max(spec)))))
    if hasattr(triton_qdq, "ROT_SHFL"):  # a split block's cross-lane stages as Triton reductions instead
        cols.append(("no shfl", 8, "ROT_SHFL", False, lambda spec, rot: bool(
            rot is not None and triton_qdq._rot_layout(spec, rot.block) == 2 and rot.block > triton_qdq._held_max(spec))))
    if hasattr(triton_qdq, "SIGN_WORDS"):  # random signs packed a bit a column, where 16-bit masks serve now
        cols.append(("sign masks" if triton_qdq.SIGN_WORDS else "sign words", 10, "SIGN_WORDS", not triton_qdq.SIGN_WORDS,
                     lambda spec, rot: coalesced(spec, rot) and rot.seed is not None))
    print("\noptions (issue 18): kernel ms per call (one call replayed from a CUDA graph) and time / plain format's time;"
          + (" rotations also loaded and stored in the whole-blocks-per-thread layout (ROT_COALESCE off), in the tile"
             " layout (ROT_TILE_MAX = 0), MX ones whose scale is a power of two with it multiplied (ROT_FOLD off), and"
             " coalesced ones" if layouts else " rotations loaded coalesced,") +
          " of Hadamard-128 and up, also with other register caps (ROT_MAXNREG; uncapped = 0); blocks above 32"
          " held by a thread in parts of another size than the recipe's default (ROT_HELD_MAX_MX, _NVFP4, ROT_HELD_MAX:"
          " \"held 32\", \"held 64\", \"held 128\"; the amax pass holds at least the QDQ pass's part), NVFP4's amax"
          " pass in parts of another size (ROT_HELD_MAX_AMAX: \"amax 32\", \"amax 64\", \"amax 128\"), NVFP4 in parts of 64 under a register cap of 96 (ROT_HELD_MAX_NVFP4 = 64,"
          " ROT_MAXNREG_64 = 96: \"held 64 cap 96\"), and split blocks' cross-lane stages as Triton reductions"
          " (ROT_SHFL off, \"no shfl\"); coalesced random ones"
          " also with the signs' other form (SIGN_WORDS switched: a bit a column against 16-bit masks and the"
          " inverse's fp32 multipliers)")
    print(f"{'option':30s}" + "".join(f" {f'{r}x{c} ms':>14s} {'x plain':>8s}" + "".join(
        f" {head:>{w}s}" for head, w, *_ in cols) for r, c in SIZES))
    for label, fmt, kw in OPTIONS:
        spec = FORMATS[fmt]
        kw = dict(kw)
        rot = parse_rotation(kw.pop("rotate")) if "rotate" in kw else None
        rule = kw.pop("scale_rule", "floor")
        line = f"{label:30s}"
        for r, c in SIZES:
            x = torch.randn(r, c, device="cuda", dtype=torch.bfloat16)
            plain = kernel_ms(lambda: triton_qdq_call(x, spec, "floor"))  # noqa: B023
            ms = kernel_ms(lambda: triton_qdq_call(x, spec, rule, rotate=rot, **kw))  # noqa: B023
            line += f" {ms:14.3f} {ms / plain:8.2f}"
            for _, w, switch, value, applies in cols:
                if applies(spec, rot):
                    if callable(switch):  # a switch of the recipe's own: (name, value)
                        switch, value = switch(spec)
                    alt = kernel_ms_with(triton_qdq, switch, value,
                                         lambda: triton_qdq_call(x, spec, rule, rotate=rot, **kw))  # noqa: B023
                    line += f" {alt / plain:{w}.2f}"
                else:
                    line += f" {'':>{w}s}"
            if rot is not None and r * c >= 64 * 2**20 and ms / plain > 1 + ROTATION_BUDGET:
                failures.append(f"{label} {r}x{c}: {ms / plain:.2f} x plain > {1 + ROTATION_BUDGET:.2f}")
        print(line, flush=True)


#: ATOMIC_SLOTS values the amax-pass table times (1: the single pair used before 2026-12-04)
SLOT_SWEEP = (1, 8, 32, 128)


def bench_switch_table(switch: str, values: tuple, tag: str, title: str,
                       formats: tuple = ("nvfp4", "fp8_e4m3_per_tensor"), rounds: int = 1,
                       also: dict | None = None) -> None:
    """Kernel / copy ratio of ``formats`` with the launcher's module switch ``switch`` set to each
    of ``values`` in turn, at both sizes (columns ``<size> <tag>=<value>``); ``rounds`` passes over
    the values, interleaved, the best of them reported; ``also``: other switches held for the table."""
    from vllm_qdq.numerics import triton_qdq
    from vllm_qdq.numerics.formats import FORMATS

    default = getattr(triton_qdq, switch, None)
    if default is None or any(not hasattr(triton_qdq, k) for k in also or {}):  # an older tree
        return
    held = {k: getattr(triton_qdq, k) for k in also or {}}
    for k, v in (also or {}).items():
        setattr(triton_qdq, k, v)
    print(f"\n{title} (default {default})")
    heads = [f"{r}x{c} {tag}={n}" for r, c in SIZES for n in values]
    width = max(16, *(len(h) for h in heads))
    print(f"{'format':30s}" + "".join(f" {h:>{width}s}" for h in heads))
    try:
        for fmt in formats:
            spec = FORMATS[fmt]
            line = f"{fmt:30s}"
            for r, c in SIZES:
                x = torch.randn(r, c, device="cuda", dtype=torch.bfloat16)
                y = torch.empty_like(x)
                copy = kernel_ms(lambda: y.copy_(x))  # noqa: B023
                best = {n: float("inf") for n in values}
                for _ in range(rounds):
                    for n in values:
                        best[n] = min(best[n], kernel_ms_with(triton_qdq, switch, n,
                                                              lambda: triton_qdq_call(x, spec, "floor")))  # noqa: B023
                line += "".join(f" {copy / best[n]:{width}.2f}" for n in values)
            print(line, flush=True)
    finally:
        for k, v in held.items():
            setattr(triton_qdq, k, v)


def bench_slots() -> None:
    """The two-pass recipes by ``triton_qdq.ATOMIC_SLOTS`` (the pairs the amax pass's atomics are
    spread over)."""
    bench_switch_table("ATOMIC_SLOTS", SLOT_SWEEP, "s", "amax pass (two-pass recipes): copy time / kernel time "
                       "(the kernel ratio above) by ATOMIC_SLOTS")


#: AMAX_TILES_PER_PROGRAM values the amax-pass table also times
TPP_SWEEP = (1, 2, 4, 8)


def bench_tiles_per_program() -> None:
    """The two-pass recipes by ``triton_qdq.AMAX_TILES_PER_PROGRAM`` (tiles one amax-pass program
    reads, all loads before one reduction)."""
    bench_switch_table("AMAX_TILES_PER_PROGRAM", TPP_SWEEP, "t",
                       "amax pass: copy time / kernel time by AMAX_TILES_PER_PROGRAM")


def bench_l2_hints() -> None:
    """The two-pass recipes with ``triton_qdq.L2_HINTS`` on and off (the amax pass's read kept in
    L2, the QDQ pass's read evicted first), three interleaved rounds, the best of each."""
    bench_switch_table("L2_HINTS", (True, False), "hint", "two-pass recipes: copy time / kernel time with L2 "
                       "eviction hints (L2_HINTS) and without", rounds=3)


#: the float64 recipes, whose fp32 form for 16-bit tensors ``triton_qdq.NARROW_F64`` switches
F64_RECIPES = ("fp8_e4m3_per_tensor", "fp8_e4m3_per_channel", "fp8_e4m3_per_group128", "int8_per_token",
               "int8_per_channel")


def bench_two_pass_split() -> None:
    """Where a two-pass call's time goes, microseconds: each of its launches replayed alone from a
    CUDA graph (L2 flushed before each; the amax pass into the call's own scratch buffer, the QDQ
    pass reading the pairs that call left there, so "qdq alone" reads x from memory), the whole
    call (L2 flushed before it, not between its launches), "qdq in call" = call - amax alone (the
    QDQ pass where the amax pass may have left x in L2, with the scratch buffer's zeroing and the
    gap between launches in it; with ``triton_qdq.PDL`` on, the QDQ pass overlaps the amax pass's
    last wave, so this is what the call adds to the amax pass, not the QDQ pass's own time), a copy,
    and a read of the tensor alone (``torch.amax``: one reduction kernel, the read an amax pass
    cannot avoid). "read GB/s": the amax pass's bytes over its time."""
    from vllm_qdq.numerics import triton_qdq
    from vllm_qdq.numerics.formats import FORMATS

    if not hasattr(triton_qdq, "_launch"):  # an older tree
        return
    print("\ntwo-pass recipes, each launch alone (us, one launch replayed from a CUDA graph, L2 flushed): the amax "
          "pass, the QDQ pass; the whole call; call - amax pass (the QDQ pass in the call); a copy and torch.amax "
          "(a read) of the same tensor")
    print(f"{'format':30s}" + "".join(
        f" {f'{r}x{c} amax':>15s} {'read GB/s':>9s} {'qdq alone':>9s} {'call':>7s} {'qdq in call':>11s} {'copy':>7s}"
        f" {'torch.amax':>10s}" for r, c in SIZES))
    for fmt in ("nvfp4", "fp8_e4m3_per_tensor"):
        spec = FORMATS[fmt]
        line = f"{fmt:30s}"
        for r, c in SIZES:
            x = torch.randn(r, c, device="cuda", dtype=torch.bfloat16)
            y = torch.empty_like(x)
            rec: list = []
            triton_qdq._launch(x, y, triton_qdq._rows(x, y, 1), spec, "floor", None, rec=rec)
            torch.cuda.synchronize()
            call = kernel_ms(lambda: triton_qdq_call(x, spec, "floor")) * 1e3  # noqa: B023
            if len(rec) == 2:  # the amax pass, then the QDQ pass
                amax, qdq = (kernel_ms(lambda fn=fn, grid=grid, a=a, kw=kw: fn[grid](*a, **kw)) * 1e3
                             for fn, grid, a, kw, _k, _buf in rec)
                line += f" {amax:15.1f} {x.numel() * 2 / amax / 1e3:9.0f} {qdq:9.1f} {call:7.1f} {call - amax:11.1f}"
            else:  # one launch (a call of one tile): nothing to split
                line += f" {'-':>15s} {'-':>9s} {'-':>9s} {call:7.1f} {'-':>11s}"
            copy = kernel_ms(lambda: y.copy_(x)) * 1e3  # noqa: B023
            read = kernel_ms(lambda: torch.amax(x)) * 1e3  # noqa: B023
            line += f" {copy:7.1f} {read:10.1f}"
        print(line, flush=True)


#: rows x 4096 bf16 of the L2-state table (``--l2-table``): 4M to 64M elements, 8 to 128 MB
L2_ROWS = (1024, 2048, 3072, 4096, 6144, 8192, 16384)
#: (label, format, global amax) the L2-state table times beside a copy and a read (torch.amax)
L2_CALLS = (("nvfp4", "nvfp4", None), ("fp8_e4m3_per_tensor", "fp8_e4m3_per_tensor", None),
            ("nvfp4 (global_amax given)", "nvfp4", GIVEN_AMAX), ("mxfp4", "mxfp4", None))


def bench_l2_state(rows: tuple[int, ...] = L2_ROWS, cols: int = 4096) -> None:
    """Issue 16's two-pass question: does the second read of x come from the L2, and what does the
    timer's L2 flush cost? Microseconds of one call replayed from a CUDA graph (:func:`kernel_us_l2`)
    after each L2 state of :data:`L2_STATES`, for a copy, a read of x (``torch.amax``) and the calls
    of :data:`L2_CALLS`, at rows x ``cols`` bf16 for ``rows``; then copy time / call time in the same
    state. Figures only (no target reads them): they say which state the targets' ratios hold in."""
    from vllm_qdq.numerics import triton_qdq
    from vllm_qdq.numerics.formats import FORMATS

    print("\nL2 state before the call (us, one call replayed from a CUDA graph, median of 40): dirty = a 256 MB "
          "buffer zeroed (do_bench's flush, the main table's), clean = zeroed then another 256 MB read (no written "
          "lines left), hot = nothing between calls; then copy time / call time in the same state")
    names = ["copy_", "read (torch.amax)", *(label for label, *_ in L2_CALLS)]
    print(f"{f'rows x {cols}':>11s} {'MB':>4s} {'state':>5s}" + "".join(f" {n[:24]:>24s}" for n in names))
    for r in rows:
        x = torch.randn(r, cols, device="cuda", dtype=torch.bfloat16)
        y = torch.empty_like(x)
        fns = {"copy_": lambda: y.copy_(x), "read (torch.amax)": lambda: torch.amax(x)}  # noqa: B023
        for label, fmt, gamax in L2_CALLS:
            fns[label] = (lambda spec=FORMATS[fmt], gamax=gamax: triton_qdq.qdq(x, spec, "floor", -1, gamax))  # noqa: B023
        for state in L2_STATES:
            us = {n: kernel_us_l2(fns[n], state) for n in names}
            print(f"{r:11d} {x.numel() * 2 / 2**20:4.0f} {state:>5s}" + "".join(f" {us[n]:24.1f}" for n in names))
            print(f"{'':11s} {'':4s} {'ratio':>5s}" + "".join(f" {us['copy_'] / us[n]:24.2f}" for n in names),
                  flush=True)


def bench_narrow() -> None:
    """The float64 recipes in their fp32 form (``NARROW_F64`` on, the default since 2026-12-04)
    and in the float64 form (off), interleaved on, off, on, off, the best of two each."""
    bench_switch_table("NARROW_F64", (True, False), "fp32", "float64 recipes, bf16: copy time / kernel time "
                       "with the fp32 form (NARROW_F64 True) and the float64 form (False)", F64_RECIPES, rounds=2)


def bench_pdl(rounds: int = 3) -> None:
    """The two-pass recipes with their QDQ pass launched as a programmatic dependent of the amax
    pass (``triton_qdq.PDL``) and not: graph replays of decode-sized calls (the rows of
    :data:`DECODE_ROWS` that take an amax pass), and copy time / kernel time at both sizes; on and
    off interleaved, ``rounds`` times, the best of each."""
    from vllm_qdq.numerics import triton_qdq
    from vllm_qdq.numerics.formats import FORMATS

    if not hasattr(triton_qdq, "PDL"):  # an older tree
        return
    rows = [n for n in DECODE_ROWS if n > 1]  # one row: one tile, one launch
    print(f"\ntwo-pass recipes, the QDQ pass a programmatic dependent launch of the amax pass (PDL, default "
          f"{triton_qdq.PDL}) and not: us per call replayed from a CUDA graph, rows x 4096, best of {rounds}")
    print(f"{'format':30s}" + "".join(f" {f'{n} pdl':>8s} {f'{n} plain':>9s}" for n in rows))
    for fmt in ("nvfp4", "fp8_e4m3_per_tensor"):
        spec = FORMATS[fmt]
        line = f"{fmt:30s}"
        for n in rows:
            x = torch.randn(n, 4096, device="cuda", dtype=torch.bfloat16)
            best = {True: float("inf"), False: float("inf")}
            for _ in range(rounds):
                for pdl in (True, False):
                    best[pdl] = min(best[pdl], graph_us_with(triton_qdq, "PDL", pdl,
                                                             lambda: triton_qdq_call(x, spec, "floor")))  # noqa: B023
            line += f" {best[True]:8.1f} {best[False]:9.1f}"
        print(line, flush=True)
    bench_switch_table("PDL", (True, False), "pdl", "two-pass recipes: copy time / kernel time with the QDQ pass a "
                       "programmatic dependent launch (PDL) and not", rounds=2)


#: rows x 4096 bf16 and formats of the grid-barrier table (``--grid-sync-table``, :func:`bench_grid_sync`)
GRID_SYNC_ROWS = (16, 64, 256)
GRID_SYNC_FORMATS = ("nvfp4", "fp8_e4m3_per_tensor")


def bench_grid_sync(rounds: int = 3, rows: tuple[int, ...] = GRID_SYNC_ROWS, cols: int = 4096) -> None:
    """The two-pass recipes in one launch with a grid barrier (``triton_qdq.GRID_SYNC``, off by
    default) and in two (amax pass, QDQ pass), decode-sized (``rows`` x ``cols`` bf16): us per call
    replayed from a CUDA graph (on and off interleaved, ``rounds`` times, the best of each) and eager
    (wall time per call of back-to-back calls, the median of :data:`EAGER_ROUNDS` rounds with the
    copy's, on's and off's batches interleaved, as the decode table's eager figures; each call also
    sets the switch and the eager fast path's table of its mode: two attribute stores, both modes
    alike), beside a copy's; issue 16's targets (graph <= 2 x copy's graph; eager <= graph +
    EAGER_OVERHEAD_US) for the one-launch figures; the launches each path made (``_launch`` probed
    directly: 1 where the barrier path was taken) and whether its output equals the other path's bit
    for bit (integer views: NaN-safe) on random values and on values with an Inf and a NaN, and whether
    a graph captured as the timed ones are holds the one-launch path ("gr bar",
    :func:`_graph_takes_barrier`). Figures
    only (no target fails the run): untimed, not yet run on a GPU. A barrier that never opens hangs
    the process: run this table alone under ``timeout`` (each row is named before it is timed)."""
    from vllm_qdq.numerics import triton_qdq
    from vllm_qdq.numerics.formats import FORMATS

    if not hasattr(triton_qdq, "GRID_SYNC"):  # an older tree
        return
    print(f"\ntwo-pass recipes in one launch with a grid barrier (GRID_SYNC, default {triton_qdq.GRID_SYNC}) and in "
          f"two: us per call, rows x {cols} bf16; graph = replayed from a CUDA graph (best of {rounds}, on / off "
          f"interleaved), eager = back-to-back calls (median of {EAGER_ROUNDS} interleaved rounds); targets: graph <= "
          f"{GRAPH_FACTOR:.0f} x copy's, eager <= graph + {EAGER_OVERHEAD_US:.0f}; launches on/off; equal: "
          "the two paths' outputs bit for bit")
    print(f"{'format':22s} {'rows':>5s} {'copy gr':>7s} {'copy eg':>7s} {'graph on':>8s} {'off':>6s} "
          f"{f'<={GRAPH_FACTOR:.0f}xcopy':>8s} {'met':>3s} {'eager on':>8s} {'off':>6s} "
          f"{f'<=gr+{EAGER_OVERHEAD_US:.0f}':>6s} {'met':>3s} {'launch':>6s} "
          f"{'equal':>5s} {'gr bar':>6s}")
    saved_fast, saved_switch = triton_qdq._FAST, triton_qdq.GRID_SYNC
    try:
        for fmt in GRID_SYNC_FORMATS:
            spec = FORMATS[fmt]
            for n in rows:
                print(f"  (timing {fmt} at {n} rows)", flush=True)  # a deadlock: the last row named
                x = torch.randn(n, cols, device="cuda", dtype=torch.bfloat16)
                y = torch.empty_like(x)
                launches, outs = {}, {}
                for on in (False, True):  # the launcher probed: what each path launches, and its output
                    if on:  # the two-launch path compiled and run first: a hang from here on is the barrier's
                        print(f"  (first grid-barrier launch of {fmt} at {n} rows)", flush=True)
                    triton_qdq.GRID_SYNC = on
                    outs[on] = []
                    for v in (x, _with_specials(x)):
                        out, rec = torch.empty_like(v), []
                        triton_qdq._launch(v, out, triton_qdq._rows(v, out, 1), spec, "floor", None, rec=rec)
                        outs[on].append(out)
                        launches[on] = len(rec)
                torch.cuda.synchronize()
                equal = all(torch.equal(a.view(torch.int16), b.view(torch.int16))
                            for a, b in zip(outs[True], outs[False], strict=True))
                graph = {True: float("inf"), False: float("inf")}
                for _ in range(rounds):
                    for on in (True, False):
                        graph[on] = min(graph[on], graph_us_with(triton_qdq, "GRID_SYNC", on,
                                                                 lambda: triton_qdq_call(x, spec, "floor")))  # noqa: B023
                in_graph = _graph_takes_barrier(triton_qdq, lambda: triton_qdq_call(x, spec, "floor"))  # noqa: B023
                copy_graph = graph_us(lambda: y.copy_(x))  # noqa: B023
                fns = {"copy_": lambda: y.copy_(x)}  # noqa: B023
                for on in (True, False):  # each mode's own recorded calls: the fast path's table swapped per call
                    fns[on] = _mode_call(triton_qdq, on, x, spec)
                eager = {k: statistics.median(v) for k, v in
                         host_us_interleaved(fns, rounds=EAGER_ROUNDS).items()}
                triton_qdq._FAST, triton_qdq.GRID_SYNC = saved_fast, saved_switch  # the modes' calls swapped them
                g_ok = graph[True] <= GRAPH_FACTOR * copy_graph
                e_ok = eager[True] <= graph[True] + EAGER_OVERHEAD_US
                print(f"{fmt:22s} {n:5d} {copy_graph:7.1f} {eager['copy_']:7.1f} {graph[True]:8.1f} {graph[False]:6.1f} "
                      f"{GRAPH_FACTOR * copy_graph:8.1f} {'yes' if g_ok else 'no':>3s} {eager[True]:8.1f} "
                      f"{eager[False]:6.1f} {graph[True] + EAGER_OVERHEAD_US:6.1f} {'yes' if e_ok else 'no':>3s} "
                      f"{f'{launches[True]}/{launches[False]}':>6s} {'yes' if equal else 'NO':>5s} "
                      f"{'yes' if in_graph else 'NO':>6s}", flush=True)
    finally:
        triton_qdq._FAST, triton_qdq.GRID_SYNC = saved_fast, saved_switch
        # the graph timings' warm-up calls ran with the saved table in place and GRID_SYNC switched:
        # what they recorded there holds the path of the switch they ran with
        triton_qdq._FAST.clear()


#: rows x 4096 bf16 and formats of the eager-split table (``--eager-split``, :func:`bench_eager_split`)
EAGER_SPLIT_ROWS = (1, 16, 256)
EAGER_SPLIT_FORMATS = ("mxfp4", "nvfp4", "fp8_e4m3_per_tensor")


def bench_eager_split(rows: tuple[int, ...] = EAGER_SPLIT_ROWS, cols: int = 4096) -> None:
    """Issue 16's eager target, where an eager call's host time goes: wall microseconds per call
    (back-to-back calls, the median of :data:`EAGER_ROUNDS` interleaved rounds) of a copy, of
    ``torch.empty_like(x)`` (the output every call allocates), of ``torch.empty`` of the call's
    scratch buffer (two-pass recipes), of the fast path's key (:func:`triton_qdq._fast_key`) and
    lookup, of the recorded launches alone (the call's generated replay with y and the buffer made
    once: the C launchers and the driver), of the whole call, for two-pass recipes of the whole
    call with its scratch buffer allocated each call (``EAGER_SCRATCH`` off) and with
    ``GRID_SYNC = "eager"`` (one launch with a grid barrier). Figures only."""
    from vllm_qdq.numerics import triton_qdq
    from vllm_qdq.numerics.formats import FORMATS

    print(f"\neager call split (us per call, rows x {cols} bf16, back-to-back calls, median of {EAGER_ROUNDS} "
          "interleaved rounds): copy_; empty_like = torch.empty_like(x); buffer = torch.empty of the scratch "
          "buffer; key = the fast path's key and table lookup; launches = the recorded replay alone (y and "
          "buffer made once); call = the whole eager call; call fresh = the same with a scratch buffer allocated "
          "each call (EAGER_SCRATCH off); call sync = the whole call with GRID_SYNC 'eager'")
    heads = ("copy_", "empty_like", "buffer", "key", "launches", "call", "call fresh", "call sync")
    print(f"{'format':22s} {'rows':>5s}" + "".join(f" {h:>10s}" for h in heads))
    saved_fast, saved_switch, saved_scratch = triton_qdq._FAST, triton_qdq.GRID_SYNC, triton_qdq.EAGER_SCRATCH
    try:
        for fmt in EAGER_SPLIT_FORMATS:
            spec = FORMATS[fmt]
            for n in rows:
                x = torch.randn(n, cols, device="cuda", dtype=torch.bfloat16)
                y = torch.empty_like(x)
                # each row from the same state: a fresh table, two launches, the scratch switch as found
                triton_qdq._FAST, triton_qdq.GRID_SYNC, triton_qdq.EAGER_SCRATCH = {}, False, saved_scratch
                triton_qdq.qdq(x, spec, "floor", -1, None)  # recorded
                key = triton_qdq._fast_key(x, spec, "floor", -1)
                hit = triton_qdq._FAST.get(key)
                if hit is None or not hit.direct:
                    print(f"{fmt:22s} {n:5d} (no direct replay recorded)")
                    continue
                if hit(x) is None or hit.replay is None:  # (an alignment class other than recorded)
                    print(f"{fmt:22s} {n:5d} (the recorded call was not replayed directly)")
                    continue
                buf = None if hit.buf_align is None else torch.empty(hit.buf_n, dtype=torch.int32, device="cuda")
                fns = {"copy_": lambda: y.copy_(x),  # noqa: B023
                       "empty_like": lambda: torch.empty_like(x)}  # noqa: B023
                if buf is not None:
                    fns["buffer"] = lambda: torch.empty(hit.buf_n, dtype=torch.int32, device="cuda")  # noqa: B023
                fns["key"] = lambda: triton_qdq._FAST.get(triton_qdq._fast_key(x, spec, "floor", -1))  # noqa: B023
                dev = hit.device
                fns["launches"] = lambda: hit.replay(  # noqa: B023
                    torch._C._cuda_getCurrentRawStream(dev), x.data_ptr(), y.data_ptr(),  # noqa: B023
                    0 if buf is None else buf.data_ptr(), 0)  # noqa: B023
                fns["call"] = _scratch_call(triton_qdq, True, _mode_call(triton_qdq, False, x, spec))
                if buf is not None:
                    fns["call fresh"] = _scratch_call(triton_qdq, False, _mode_call(triton_qdq, False, x, spec))
                    fns["call sync"] = _scratch_call(triton_qdq, True, _mode_call(triton_qdq, "eager", x, spec))
                med = {k: statistics.median(v) for k, v in host_us_interleaved(fns, rounds=EAGER_ROUNDS).items()}
                print(f"{fmt:22s} {n:5d}" + "".join(f" {med[h]:10.1f}" if h in med else f" {'-':>10s}" for h in heads),
                      flush=True)
    finally:  # every row ran on a table of its own: the saved one holds only what was there before
        triton_qdq._FAST, triton_qdq.GRID_SYNC = saved_fast, saved_switch
        triton_qdq.EAGER_SCRATCH = saved_scratch


def _scratch_call(triton_qdq, on: bool, call):
    """``call`` with ``triton_qdq.EAGER_SCRATCH`` set to ``on`` first (one attribute store a call)."""
    def scratch_call():
        triton_qdq.EAGER_SCRATCH = on
        return call()

    return scratch_call


def _graph_takes_barrier(triton_qdq, fn) -> bool:
    """Whether a CUDA graph of one call of ``fn`` with ``GRID_SYNC`` on, captured as the graph
    column's graphs are (:func:`~vllm_qdq.study.gpu_timing.capture`: warmed up and captured on one
    side stream), holds the grid barrier's launch: one replay advances the barrier words'
    generations (all streams' summed) by exactly one. The "gr bar" column: the "graph on" figure
    times the one-launch path only where it says yes."""
    def generations() -> int:
        torch.cuda.synchronize()
        return sum(int(w[triton_qdq._GRID_GEN]) for w in triton_qdq._GRID_BARRIERS.values())

    def one_replay_bumps(fn) -> bool:
        g = capture(fn, 1)
        before = generations()
        g.replay()
        return generations() - before == 1

    return _with_switch(one_replay_bumps, triton_qdq, "GRID_SYNC", True, fn)


def _with_specials(x: torch.Tensor) -> torch.Tensor:
    """``x`` with an Inf and a NaN in its first row (a NaN/Inf block, and NVFP4's finite amax)."""
    x = x.clone()
    x[0, 1], x[0, -1] = float("inf"), float("nan")
    return x


def _mode_call(triton_qdq, on: bool, x: torch.Tensor, spec):
    """A call of ``spec`` on ``x`` with ``GRID_SYNC`` set to ``on`` and the eager fast path's table
    of that mode (``triton_qdq._FAST`` swapped in, recorded by the call itself): the two modes'
    replays timed interleaved without clearing the table between batches (a recorded call keeps the
    path it was recorded with)."""
    fast: dict = {}

    def call():
        triton_qdq._FAST = fast
        triton_qdq.GRID_SYNC = on
        return triton_qdq.qdq(x, spec, "floor", -1, None)

    return call


def graph_us_with(triton_qdq, switch: str | dict, value, fn) -> float:
    """:func:`graph_us` of ``fn`` with the module switch ``switch`` set to ``value`` (:func:`_with_switch`)."""
    return _with_switch(graph_us, triton_qdq, switch, value, fn)


def kernel_ms_with(triton_qdq, switch: str | dict, value, fn) -> float:
    """:func:`kernel_ms` of ``fn`` with the launcher's module switch ``switch`` set to ``value``
    (:func:`_with_switch`)."""
    return _with_switch(kernel_ms, triton_qdq, switch, value, fn)


def _with_switch(timer: Callable[[Callable], T], triton_qdq, switch: str | dict, value, fn) -> T:
    """``timer(fn)`` with ``triton_qdq``'s module switch ``switch`` set to ``value`` (a dict
    ``{switch: value}`` for several, ``value`` then unused; restored after); the eager fast path's recorded calls are dropped before and after, as they keep the
    switches they were recorded with."""
    sets = switch if isinstance(switch, dict) else {switch: value}  # several switches at once: {name: value}
    default = {k: getattr(triton_qdq, k) for k in sets}
    triton_qdq._FAST.clear()
    for k, v in sets.items():
        setattr(triton_qdq, k, v)
    try:
        return timer(fn)
    finally:
        for k, v in default.items():
            setattr(triton_qdq, k, v)
        triton_qdq._FAST.clear()


def triton_qdq_call(x: torch.Tensor, spec, rule: str, **kw) -> torch.Tensor:
    from vllm_qdq.numerics import triton_qdq

    return triton_qdq.qdq(x, spec, rule, -1, None, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 below the target ratios")
    ap.add_argument("--formats", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--rule", default="floor", help="MX scale rule to time (default floor)")
    ap.add_argument("--no-options", action="store_true", help="skip the issue-18 options table")
    ap.add_argument("--options-only", action="store_true", help="only the issue-18 options table")
    ap.add_argument("--l2-table", action="store_true",
                    help="only the L2-state table (bench_l2_state: copy, a read and the two-pass recipes after a "
                         "dirty, clean or hot L2, 8 to 128 MB)")
    ap.add_argument("--grid-sync-table", action="store_true",
                    help="only the grid-barrier table (bench_grid_sync: the two-pass recipes in one launch, "
                         "triton_qdq.GRID_SYNC, against two, 16-256 rows x 4096, graph and eager; first run on the "
                         "H100 of 2026-12-06g); a barrier that never opened would hang the process: run it as "
                         "`timeout 300 python3 scripts/bench_qdq_triton.py --grid-sync-table`")
    ap.add_argument("--eager-split", action="store_true",
                    help="only the eager-split table (bench_eager_split: where an eager call's host time goes, "
                         "MX, NVFP4 and FP8 per-tensor at 1-256 rows x 4096)")
    ap.add_argument("--no-sweeps", action="store_true",
                    help="skip the switch sweeps (atomic slots, amax tiles a program, L2 hints, the two-pass "
                         "split, the fp32 form of the float64 recipes)")
    args = ap.parse_args()
    if args.no_options and args.options_only:
        print("--no-options and --options-only exclude each other", file=sys.stderr)
        return 2
    alone = {"--l2-table": (args.l2_table, "its calls fixed: L2_CALLS; no target reads it"),
             "--grid-sync-table": (args.grid_sync_table, "its calls fixed: GRID_SYNC_FORMATS at GRID_SYNC_ROWS; "
                                   "no target fails it; run under timeout"),
             "--eager-split": (args.eager_split, "its calls fixed: EAGER_SPLIT_FORMATS at EAGER_SPLIT_ROWS; "
                               "no target reads it")}
    for table, (on, why) in alone.items():
        if not on:
            continue
        given = [flag for flag, on in (("--check", args.check), ("--options-only", args.options_only),
                                       ("--no-options", args.no_options), ("--no-sweeps", args.no_sweeps),
                                       (f"--formats {args.formats}", bool(args.formats)),
                                       (f"--rule {args.rule}", args.rule != "floor"),
                                       *((other, alone[other][0]) for other in alone if other != table)) if on]
        if given:
            print(f"{table} runs that table alone ({why}): not with {', '.join(given)}", file=sys.stderr)
            return 2
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2

    from vllm_qdq.numerics import triton_qdq
    from vllm_qdq.numerics.formats import FORMATS, Family, Granularity

    names = [n for n in args.formats.split(",") if n] or list(FORMATS)
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        print(f"unknown formats {unknown}; accepted: {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print("GB/s counts 2 x bytes of the bf16 tensor (read + write); ratio = QDQ GB/s / copy GB/s\n")

    failures = []
    if args.l2_table:
        bench_l2_state()
        return 0
    if args.grid_sync_table:
        bench_grid_sync()
        return 0
    if args.eager_split:
        bench_eager_split()
        return 0
    if args.options_only:
        bench_options(failures, layouts=not args.no_sweeps)
        return _report(failures, args.check)
    header = f"{'format':30s} {'passes':>6s}"
    for r, c in SIZES:
        header += f" {f'{r}x{c} GB/s':>17s} {'kernel':>7s} {'eager':>6s}"
    print(header)
    copies = {}
    for r, c in SIZES:
        x = torch.randn(r, c, device="cuda", dtype=torch.bfloat16)
        y = torch.empty_like(x)
        copies[(r, c)] = (kernel_ms(lambda: y.copy_(x)), host_us(lambda: y.copy_(x), calls=20) / 1e3)  # noqa: B023
    print(f"{'copy_ (y.copy_(x))':30s} {'':>6s}" + "".join(
        f" {2 * r * c * 2 / copies[(r, c)][0] / 1e6:17.0f} {1.0:7.2f} {1.0:6.2f}" for r, c in SIZES))
    two_passes = {}
    # (label, format, global amax): NVFP4 with a given global amax is one pass (issue 16)
    rows = [(n, n, None) for n in names] + [
        (f"{n} (global_amax given)", n, GIVEN_AMAX) for n in names if FORMATS[n].family is Family.NVFP4]
    for name, fmt, gamax in rows:
        spec = FORMATS[fmt]
        two_pass = two_passes[name] = gamax is None and (
            spec.granularity is Granularity.TENSOR or spec.family is Family.NVFP4)
        rule = args.rule if spec.takes_scale_rule else "floor"
        line = f"{name:30s} {2 if two_pass else 1:6d}"
        for r, c in SIZES:
            x = torch.randn(r, c, device="cuda", dtype=torch.bfloat16)
            fn = lambda: triton_qdq.qdq(x, spec, rule, -1, gamax)  # noqa: B023, E731
            k_ms, e_ms = kernel_ms(fn), host_us(fn, calls=20) / 1e3
            ratio, eager = copies[(r, c)][0] / k_ms, copies[(r, c)][1] / e_ms
            line += f" {2 * x.numel() * 2 / k_ms / 1e6:17.0f} {ratio:7.2f} {eager:6.2f}"
            need = TARGETS[(r, c)][1 if two_pass else 0]
            if ratio < need:
                failures.append(f"{name} {r}x{c}: kernel {ratio:.2f} of copy < {need:.2f}")
        print(line, flush=True)

    print(f"\ndecode latency (us, median) of one call, rows x 4096 bf16, MX rule {args.rule}: "
          f"'eager' = wall time per call of 200 back-to-back Python calls, the median of {EAGER_ROUNDS} rounds with "
          "every format's batches of a row count interleaved (host_us_interleaved: the host's drift shared alike), "
          "'graph' = GPU time per call of 20 calls replayed from one CUDA graph (what vLLM's CUDA graphs see)")
    print("'eager' replays the recorded launch (triton_qdq.FAST_LAUNCH, the default: the generated C launcher "
          "called directly where verified); 'runner' = the same replay through Triton's CompiledKernel[grid] "
          "launcher (direct replay off); 'bind' = FAST_LAUNCH off (Triton binds the arguments on every call)")
    print(f"{'format':30s}" + "".join(
        f" {f'{n} eager':>9s} {f'{n} runner':>9s} {f'{n} bind':>8s} {f'{n} graph':>9s}" for n in DECODE_ROWS))
    copy_graph = {}
    decode_x = {n: torch.randn(n, 4096, device="cuda", dtype=torch.bfloat16) for n in DECODE_ROWS}

    def decode_fn(name: str, fmt: str | None, gamax, x: torch.Tensor):
        if name == "copy_":
            y = torch.empty_like(x)
            return lambda: y.copy_(x)
        spec = FORMATS[fmt]
        rule = args.rule if spec.takes_scale_rule else "floor"
        return lambda: triton_qdq.qdq(x, spec, rule, -1, gamax)

    everyone = [("copy_", None, None), *rows]
    # the eager figures, every format's batches interleaved (the fast path on, as by default)
    eager_at = {n: host_us_interleaved({name: decode_fn(name, fmt, gamax, decode_x[n]) for name, fmt, gamax in everyone},
                                       rounds=EAGER_ROUNDS)
                for n in DECODE_ROWS}
    for name, fmt, gamax in everyone:
        line = f"{name:30s}"
        for n in DECODE_ROWS:
            x = decode_x[n]
            fn = decode_fn(name, fmt, gamax, x)
            default, direct = triton_qdq.FAST_LAUNCH, getattr(triton_qdq, "_DIRECT_TRITON", None)
            triton_qdq.FAST_LAUNCH = True
            try:
                eager, graph = statistics.median(eager_at[n][name]), graph_us(fn)
                runner = eager
                if name != "copy_" and direct is not None:  # (an older tree has only the runner)
                    triton_qdq._DIRECT_TRITON = ()  # recorded anew, replayed through CompiledKernel[grid]
                    triton_qdq._FAST.clear()
                    runner = host_us(fn)
                    triton_qdq._DIRECT_TRITON = direct
                    triton_qdq._FAST.clear()
                triton_qdq.FAST_LAUNCH = False
                bind = host_us(fn) if name != "copy_" else eager
            finally:
                triton_qdq.FAST_LAUNCH = default
                if direct is not None:
                    triton_qdq._DIRECT_TRITON = direct
            line += f" {eager:9.1f} {runner:9.1f} {bind:8.1f} {graph:9.1f}"
            if name == "copy_":
                copy_graph[n] = graph
                continue
            bound = copy_graph[n] * GRAPH_FACTOR if two_passes[name] else copy_graph[n] + GRAPH_SLACK_US
            if graph > bound:
                failures.append(f"{name} {n} rows: graph {graph:.1f} us > {bound:.1f}")
            if eager > graph + EAGER_OVERHEAD_US:
                failures.append(f"{name} {n} rows: eager {eager:.1f} us > graph + {EAGER_OVERHEAD_US:.0f}")
        print(line, flush=True)

    bench_pdl()
    if not args.no_sweeps:
        for hints in (False, True):
            bench_switch_table("Y_STREAM", (False, True), "ycs",
                               f"two-pass recipes: copy time / kernel time with y stored streaming (Y_STREAM, .cs) "
                               f"and not, L2_HINTS={hints}", rounds=2, also={"L2_HINTS": hints})
        bench_switch_table("AMAX_STAGES", (0, 3, 4), "st",
                           "two-pass recipes: copy time / kernel time with the streaming amax pass (AMAX_STAGES: "
                           "software-pipelined stages; 0 = the one-wave-per-tile pass)", rounds=2)
        bench_switch_table("AMAX_PROGRAMS_PER_SM", (1, 2, 4), "p",
                           "two-pass recipes with the streaming amax pass (AMAX_STAGES=3): copy time / kernel "
                           "time by programs an SM", rounds=2, also={"AMAX_STAGES": 3})
        bench_slots()
        bench_tiles_per_program()
        bench_l2_hints()
        bench_two_pass_split()
        bench_narrow()
    if not args.no_options:
        bench_options(failures, layouts=not args.no_sweeps)
    return _report(failures, args.check)


def _report(failures: list[str], check: bool) -> int:
    """Print what missed its target; with ``check``, 1 if anything did."""
    if failures:
        print("\nbelow target:\n  " + "\n  ".join(failures))
        if check:
            return 1
    elif check:
        print("\ncheck passed: every figure at or above its target (issues 16 and 18)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
