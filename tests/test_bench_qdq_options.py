"""``scripts/bench_qdq_triton.py``'s options table on the CPU: the columns it times, and where.

The bench runs on a GPU; here its timer is replaced by one interpreted call (the kernels in
Triton's interpreter, small tensors), so what is checked is which module switch each column
changes for which recipe: the register caps (``ROT_MAXNREG``, ``CAP_SWEEP``) only where blocks of
128 and up load coalesced, and the signs' other form (``SIGN_WORDS``) only for coalesced random
rotations, in both forms; the decided layout columns only in the full form.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from vllm_qdq.numerics.formats import FORMATS

from .support.scripts import script_module
from .test_triton_qdq import tq  # noqa: F401  (the interpreter fixture)

REPO = Path(__file__).resolve().parents[1]


def _bench():
    return script_module("bench_qdq_triton")


def _table(tq, monkeypatch, capsys, layouts: bool) -> tuple[str, dict]:  # noqa: F811
    """The options table's text and, per option label, the (switch, value) pairs its columns timed."""
    mod = _bench()
    randn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *a, device=None, **k: randn(*a, **k))  # CPU tensors
    monkeypatch.setattr(mod, "SIZES", ((4, 256),))
    monkeypatch.setattr(mod, "OPTIONS", (
        ("mxfp4 + hadamard16", "mxfp4", {"rotate": {"block": 16}}),
        ("mxfp4 + hadamard64", "mxfp4", {"rotate": {"block": 64}}),
        ("mxfp4 + hadamard128 random", "mxfp4", {"rotate": {"block": 128, "seed": 1}}),
        ("nvfp4 + hadamard128 random", "nvfp4", {"rotate": {"block": 128, "seed": 1}}),
        ("nvfp4 four_over_six", "nvfp4", {"scale_rule": "four_over_six"}),
    ))
    calls: list[tuple] = []
    label = {"now": None}

    def timed(fn) -> float:
        fn()  # one interpreted call: the recipe runs with the switch in force
        return 1.0

    def with_switch(m, switch, value, fn):  # switch: a name, or {name: value} for several at once
        assert m is tq
        sets = switch if isinstance(switch, dict) else {switch: value}
        key = (frozenset(sets.items()), None) if isinstance(switch, dict) else (switch, value)
        calls.append((label["now"], key, {k: getattr(m, k) for k in sets}))
        return real_with(m, switch, value, fn)

    real_with = mod.kernel_ms_with
    monkeypatch.setattr(mod, "kernel_ms", timed)
    monkeypatch.setattr(mod, "kernel_ms_with", with_switch)
    real_call = mod.triton_qdq_call

    def call(x, spec, rule, **kw):
        if kw:
            label["now"] = next(lbl for lbl, fmt, o in mod.OPTIONS if fmt == spec.name and _same(o, kw))
        return real_call(x, spec, rule, **kw)

    monkeypatch.setattr(mod, "triton_qdq_call", call)
    failures: list[str] = []
    mod.bench_options(failures, layouts=layouts)
    assert failures == []
    seen: dict = {}
    for lbl, key, default in calls:
        seen.setdefault(lbl, set()).add(key)
        assert default == {k: getattr(tq, k) for k in default}  # restored after each column
    return capsys.readouterr().out, seen


def _same(option: dict, kw: dict) -> bool:
    rot = kw.get("rotate")
    want = option.get("rotate")
    if (rot is None) != (want is None):
        return False
    if rot is not None and (rot.block != want["block"] or (rot.seed is not None) != ("seed" in want)):
        return False
    return all(kw.get(k) == v for k, v in option.items() if k not in ("rotate", "scale_rule"))


def _held(name: str, block: int, default: int) -> set:
    """The part-size columns a rotation of ``block`` takes (``held 32`` / ``64`` / ``128``): each part
    size that holds it otherwise than the recipe's default (``default``) does."""
    return {(name, n) for n in (32, 64, 128) if n != default and min(block, n) != min(block, default)}


def _nvfp4_parts(nv: int, amax: int) -> set:
    """NVFP4 + random Hadamard-128's columns of its amax pass's part size (``amax 32`` / ``64`` /
    ``128``, each setting that would hold parts of another size than the default ``amax``: never
    fewer than the QDQ pass's ``nv``) and of parts of 64 under a register cap (``held 64 cap 96``)."""
    cols = {("ROT_HELD_MAX_AMAX", n) for n in (32, 64, 128) if max(n, nv) != amax}
    cols.add((frozenset({("ROT_HELD_MAX_NVFP4", 64), ("ROT_MAXNREG_64", 96)}), None))
    return cols


def test_options_table_short_form_times_only_the_caps_and_sign_words(tq, monkeypatch, capsys) -> None:  # noqa: F811
    """``--no-sweeps`` (the smoke suite's form): the other part sizes a thread holds
    (``ROT_HELD_MAX_MX`` / ``ROT_HELD_MAX_NVFP4``: 32, 64, 128 but the recipe's default), NVFP4's
    amax pass in parts of another size (``ROT_HELD_MAX_AMAX``) and in parts of 64 under a register
    cap (``ROT_MAXNREG_64``, with ``ROT_HELD_MAX_NVFP4`` 64), the split
    blocks' cross-lane stages as reductions (``ROT_SHFL`` off, where a block is split), the signs'
    other form (switched from the module's value) for random Hadamard-128 in the coalesced layout
    only, and the caps' columns where a thread holds 128 elements of a block (none at the default
    part sizes: MX holds 64s, NVFP4 32s); no layout or fold column."""
    out, seen = _table(tq, monkeypatch, capsys, layouts=False)
    head = next(line for line in out.splitlines() if line.startswith("option "))
    other = "sign masks" if tq.SIGN_WORDS else "sign words"  # the column names the form it times
    mx, nv = tq.ROT_HELD_MAX_MX, tq.ROT_HELD_MAX_NVFP4
    assert all(h in head for h in ("cap 168", "cap 200", other, "held 32", "held 64", "held 128", "no shfl",
                                   "amax 32", "amax 128", "held 64 cap 96"))
    assert "uncoalesced" not in head and "no fold" not in head
    caps = {("ROT_MAXNREG", n) for n in _bench().CAP_SWEEP}
    signs = ("SIGN_WORDS", not tq.SIGN_WORDS)
    shfl = {("ROT_SHFL", False)}
    assert seen == {"mxfp4 + hadamard64": _held("ROT_HELD_MAX_MX", 64, mx) | (shfl if mx < 64 else set()),
                    "mxfp4 + hadamard128 random": ({signs} | _held("ROT_HELD_MAX_MX", 128, mx)
                                                   | (caps if mx >= 128 else shfl)),
                    "nvfp4 + hadamard128 random": ({signs} | _held("ROT_HELD_MAX_NVFP4", 128, nv)
                                                   | (caps if nv >= 128 else shfl)
                                                   | _nvfp4_parts(nv, tq._amax_held_max(FORMATS["nvfp4"])))}, seen


def test_options_table_full_form_adds_the_decided_columns(tq, monkeypatch, capsys) -> None:  # noqa: F811
    """The full form: every rotation also in the tile layout, coalesced ones uncoalesced, folded
    MX scales unfolded, and the caps where they apply."""
    out, seen = _table(tq, monkeypatch, capsys, layouts=True)
    head = next(line for line in out.splitlines() if line.startswith("option "))
    other = "sign masks" if tq.SIGN_WORDS else "sign words"
    assert all(h in head for h in ("uncoalesced", "tile layout", "no fold", "cap 168", "cap 200", other))
    caps = {("ROT_MAXNREG", n) for n in _bench().CAP_SWEEP}
    mx = tq.ROT_HELD_MAX_MX
    assert seen["mxfp4 + hadamard16"] == {("ROT_TILE_MAX", 0), ("ROT_FOLD", False)}, seen
    assert seen["mxfp4 + hadamard64"] == ({("ROT_COALESCE", False), ("ROT_TILE_MAX", 0), ("ROT_FOLD", False)}
                                          | _held("ROT_HELD_MAX_MX", 64, mx)
                                          | ({("ROT_SHFL", False)} if mx < 64 else set())), seen
    assert seen["mxfp4 + hadamard128 random"] == ({("ROT_COALESCE", False), ("ROT_TILE_MAX", 0),
                                                   ("SIGN_WORDS", not tq.SIGN_WORDS)}
                                                  | _held("ROT_HELD_MAX_MX", 128, mx)
                                                  | (caps if mx >= 128 else {("ROT_SHFL", False)})), seen
    nv = tq.ROT_HELD_MAX_NVFP4
    assert (caps if nv >= 128 else {("ROT_SHFL", False)}) <= seen["nvfp4 + hadamard128 random"], seen
    assert "nvfp4 four_over_six" not in seen


def test_pdl_table_times_both_launch_orders(tq, monkeypatch, capsys) -> None:  # noqa: F811
    """``bench_pdl``: each two-pass recipe's decode-sized graph replays and both sizes' ratios
    with ``PDL`` on and off, interleaved, the switch restored after each; rows of one row (one
    tile, one launch) left out."""
    mod = _bench()
    randn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *a, device=None, **k: randn(*a, **k))  # CPU tensors
    monkeypatch.setattr(mod, "SIZES", ((4, 256),))
    monkeypatch.setattr(mod, "DECODE_ROWS", (1, 2, 4))
    seen: list[bool] = []
    default = tq.PDL

    def timed(fn) -> float:
        seen.append(tq.PDL)
        fn()
        return 1.0

    monkeypatch.setattr(mod, "graph_us", timed)
    monkeypatch.setattr(mod, "kernel_ms", timed)
    mod.bench_pdl(rounds=2)
    out = capsys.readouterr().out
    head = next(line for line in out.splitlines() if line.startswith("format "))
    assert head.split()[1:] == ["2", "pdl", "2", "plain", "4", "pdl", "4", "plain"], head
    assert [line.split()[0] for line in out.splitlines() if line.startswith(("nvfp4", "fp8"))] == [
        "nvfp4", "fp8_e4m3_per_tensor", "nvfp4", "fp8_e4m3_per_tensor"]  # the replays' table, then the sizes'
    # replays: 2 formats x 2 row counts x 2 rounds x (on, off); then the sizes' table: copy, on, off, 2 rounds
    assert seen[:16] == [True, False] * 8, seen
    assert tq.PDL is default


def test_grid_sync_table_times_both_paths_and_compares_them(tq, monkeypatch, capsys) -> None:  # noqa: F811
    """``--grid-sync-table`` (``bench_grid_sync``): each two-pass recipe at each row count probed on
    both paths (here one QDQ program: the barrier path in the interpreter; launches 1 against 2) and
    their outputs compared, then graph replays with ``GRID_SYNC`` on and off interleaved ``rounds``
    times, a copy, and the eager figures of the copy and both modes in one interleaved timing, each
    mode's calls with the switch set and its own fast-path table; the switch and the table restored
    after. The line: the figures, the targets (2 x copy's graph; graph + 8), launches, equal."""
    mod = _bench()
    randn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *a, device=None, **k: randn(*a, **k))  # CPU tensors
    monkeypatch.setattr(tq, "ONE_TILE_MAX", 0)  # 2-4 rows x 256: not one tile, one QDQ program
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    default, table = tq.GRID_SYNC, tq._FAST
    graphs: list[bool | None] = []

    def graph_us(fn) -> float:  # None: the copy's
        graphs.append(None if "copy_" in fn.__code__.co_names else tq.GRID_SYNC)
        fn()
        return 4.0 if graphs[-1] is None else 10.0 if graphs[-1] else 12.0

    eager_calls: list[tuple[str, bool, bool]] = []

    def interleaved(fns: dict, rounds: int) -> dict:
        assert rounds == mod.EAGER_ROUNDS and list(fns) == ["copy_", True, False]
        for name in (True, False):
            fns[name]()
            eager_calls.append((name, tq.GRID_SYNC, tq._FAST is not table))
        return {"copy_": [5.0] * rounds, True: [11.0] * rounds, False: [20.0] * rounds}

    monkeypatch.setattr(mod, "graph_us", graph_us)
    monkeypatch.setattr(mod, "host_us_interleaved", interleaved)
    checked: list[bool] = []  # the graph check (a capture: GPU only) stood in for, called once a row

    def takes_barrier(triton_qdq, fn) -> bool:
        checked.append(True)
        return len(checked) % 2 == 1  # yes, NO, yes, NO: the column shows what the check said
    monkeypatch.setattr(mod, "_graph_takes_barrier", takes_barrier)
    mod.bench_grid_sync(rounds=2, rows=(2, 4), cols=256)
    out = capsys.readouterr().out
    assert tq.GRID_SYNC is default and tq._FAST is table
    lines = [line.split() for line in out.splitlines() if line.startswith(("nvfp4", "fp8"))]
    assert [(f[0], f[1]) for f in lines] == [("nvfp4", "2"), ("nvfp4", "4"), ("fp8_e4m3_per_tensor", "2"),
                                            ("fp8_e4m3_per_tensor", "4")]
    for i, f in enumerate(lines):  # copy graph, copy eager, graph on, off, 2 x copy, met, eager on, off,
        # graph + 8, met, launches, equal, the graph holds the barrier's launch
        assert f[2:] == ["4.0", "5.0", "10.0", "12.0", "8.0", "no", "11.0", "20.0", "18.0", "yes", "1/2", "yes",
                         "yes" if i % 2 == 0 else "NO"], f
    assert len(checked) == 4
    # per row: on, off interleaved for 2 rounds, then the copy
    assert graphs == [True, False, True, False, None] * 4, graphs
    assert eager_calls == [(True, True, True), (False, False, True)] * 4


def test_eager_figures_interleave_every_format(monkeypatch) -> None:
    """The decode table's eager figures (``gpu_timing.host_us_interleaved``): each callable gets ``rounds``
    figures, one batch of each in turn with the order rotated a round, so that a host whose speed
    drifts moves every format alike (a format timed alone after the others got 10 -> 16 us on
    2026-12-06's H200); the batches are synchronized and timed per call."""
    from vllm_qdq.study.gpu_timing import host_us_interleaved

    order: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: order.append("sync"))
    fns = {name: (lambda name=name: order.append(name)) for name in ("copy_", "mxfp4", "nvfp4")}
    out = host_us_interleaved(fns, rounds=4, calls=2)
    assert {k: len(v) for k, v in out.items()} == {"copy_": 4, "mxfp4": 4, "nvfp4": 4}
    assert all(t >= 0 for v in out.values() for t in v)
    timed = order[order.index("sync") + 1:]  # after the warm-up calls and their synchronize
    batches = [b for b in " ".join(timed).split("sync") if b.strip()]
    firsts = [b.split()[0] for b in batches]
    assert firsts == ["copy_", "mxfp4", "nvfp4", "mxfp4", "nvfp4", "copy_", "nvfp4", "copy_", "mxfp4",
                      "copy_", "mxfp4", "nvfp4"]
    assert all(len(set(b.split())) == 1 and len(b.split()) == 2 for b in batches)
    # host_us: its one-callable case (10 warm-up calls, 5 rounds, the median)
    from vllm_qdq.study.gpu_timing import host_us

    order.clear()
    assert host_us(lambda: order.append("f"), calls=3) >= 0
    assert order.count("f") == 10 + 5 * 3 and order.count("sync") == 1 + 5


def test_l2_state_table_times_every_call_in_every_state(tq, monkeypatch, capsys) -> None:  # noqa: F811
    """``--l2-table`` (``bench_l2_state``): a copy, a read and each call of ``L2_CALLS`` timed
    after each L2 state, the ratios copy time / call time of the same state; the calls are the
    recipes' own (run here in the interpreter: y equals the reference QDQ of x)."""
    from vllm_qdq.numerics.qdq import quantize_dequantize

    mod = _bench()
    randn = torch.randn
    xs: list[torch.Tensor] = []

    def cpu_randn(*a, device=None, **k):
        xs.append(randn(*a, **k))
        return xs[-1]

    monkeypatch.setattr(torch, "randn", cpu_randn)
    timed: list[tuple[str, str]] = []
    names = ["copy_", "read (torch.amax)", *(label for label, *_ in mod.L2_CALLS)]
    recipes = {label: (fmt, gamax) for label, fmt, gamax in mod.L2_CALLS}

    def fake_us(fn, state: str) -> float:
        out = fn()
        label = names[len(timed) % len(names)]
        timed.append((label, state))
        recipe = recipes.get(label)
        if recipe is not None:
            fmt, gamax = recipe
            want = quantize_dequantize(xs[-1], fmt, global_amax=gamax, backend="reference")
            assert torch.equal(out.view(torch.int16), want.view(torch.int16)), label
        return 10.0 if label == "copy_" else 20.0

    monkeypatch.setattr(mod, "kernel_us_l2", fake_us)
    mod.bench_l2_state(rows=(4,), cols=256)
    assert timed == [(n, s) for s in mod.L2_STATES for n in names]
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out if line.strip().startswith(("4 ", "ratio"))]
    assert [r[2] if r[0] == "4" else r[0] for r in rows] == [x for s in mod.L2_STATES for x in (s, "ratio")]
    ratio = next(r for r in rows if r[0] == "ratio")
    assert ratio[1:] == ["1.00"] + ["0.50"] * (len(names) - 1)


def test_l2_state_refuses_an_unknown_state_and_the_table_runs_alone() -> None:
    """``kernel_us_l2`` names the state it was given and the accepted ones (before touching a GPU);
    ``--l2-table``, ``--grid-sync-table`` and ``--eager-split`` with any option of the other tables
    (what they would not honour), or with each other, exit 2 naming it."""
    from vllm_qdq.study.gpu_timing import L2_STATES, kernel_us_l2

    with pytest.raises(ValueError, match="L2 state 'warm'; accepted: dirty, clean, hot"):
        kernel_us_l2(lambda: None, "warm")
    assert L2_STATES == ("dirty", "clean", "hot")
    others = ((["--check"], "--check"), (["--options-only"], "--options-only"),
              (["--no-options"], "--no-options"), (["--no-sweeps"], "--no-sweeps"),
              (["--formats", "mxfp4"], "--formats mxfp4"), (["--rule", "ceil"], "--rule ceil"))
    # (the table flag, the other arguments, the table the refusal names, the option it names)
    cases = [("--l2-table", extra, "--l2-table", named) for extra, named in others]
    cases += [("--grid-sync-table", extra, "--grid-sync-table", named) for extra, named in others]
    cases += [(a, [b], "--l2-table", "--grid-sync-table") for a, b in (("--l2-table", "--grid-sync-table"),
                                                                       ("--grid-sync-table", "--l2-table"))]
    cases += [("--eager-split", extra, "--eager-split", named) for extra, named in others]
    cases += [("--eager-split", ["--l2-table"], "--l2-table", "--eager-split"),
              ("--eager-split", ["--grid-sync-table"], "--grid-sync-table", "--eager-split")]
    for table, extra, refused, named in cases:
        p = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_qdq_triton.py"), table, *extra],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "overlay")})
        assert p.returncode == 2, p.stderr
        last = p.stderr.strip().splitlines()[-1]
        assert last.startswith(f"{refused} runs that table alone") and last.endswith(f"not with {named}"), last


def test_grid_sync_table_is_not_a_default_table_and_says_how_to_run() -> None:
    """The grid-barrier table is reached only through ``--grid-sync-table`` (a barrier that never
    opens must not hang the smoke suite's bench step, which runs the default tables), and the help
    says to run it under ``timeout``."""
    import ast

    src = (REPO / "scripts" / "bench_qdq_triton.py").read_text()
    main = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "main")
    calls = [n for n in ast.walk(main) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "bench_grid_sync"]
    assert len(calls) == 1
    guard = next(n for n in ast.walk(main) if isinstance(n, ast.If) and calls[0] in list(ast.walk(n)))
    assert ast.unparse(guard.test) == "args.grid_sync_table", ast.unparse(guard.test)
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_qdq_triton.py"), "--help"], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(REPO / "overlay")})
    assert p.returncode == 0 and "timeout 300 python3 scripts/bench_qdq_triton.py --grid-sync-table" in " ".join(
        p.stdout.split()), p.stdout[-2000:]


def test_eager_split_restores_the_switches_and_names_rows_without_a_replay(tq, monkeypatch, capsys) -> None:  # noqa: F811
    """``--eager-split`` (``bench_eager_split``) on the CPU: the eager fast path records nothing
    for a CPU tensor (no direct replay), so each (format, rows) line says so instead of timing a
    call that would not be the replayed one; the fast path's table, ``GRID_SYNC`` and
    ``EAGER_SCRATCH`` are as they were after the table, the table's entries kept (every row ran on a
    table of its own)."""
    mod = _bench()
    randn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *a, device=None, **k: randn(*a, **k))  # CPU tensors
    timed: list[dict] = []
    monkeypatch.setattr(mod, "host_us_interleaved", lambda fns, rounds: timed.append(fns) or {})
    table, switch, scratch = tq._FAST, tq.GRID_SYNC, tq.EAGER_SCRATCH
    kept = object()
    monkeypatch.setitem(tq._FAST, ("an entry recorded before",), kept)
    mod.bench_eager_split(rows=(2,), cols=256)
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines() if line.startswith(mod.EAGER_SPLIT_FORMATS)]
    assert [f[:2] for f in lines] == [[fmt, "2"] for fmt in mod.EAGER_SPLIT_FORMATS], out
    assert all(" ".join(f[2:]) == "(no direct replay recorded)" for f in lines), out
    assert not timed
    assert tq._FAST is table and tq.GRID_SYNC == switch and tq.EAGER_SCRATCH == scratch
    assert tq._FAST.get(("an entry recorded before",)) is kept
