"""``scripts/bench_sage3.py``'s main time table on the CPU: what a cell reports and what is judged.

The bench runs on a GPU; here its timer (``_interleaved_ms``) is replaced by given times, so what
is checked is the arithmetic of a row: SDPA and every format timed in the same rounds, a ratio
taken within each round, the cell's ratio the median of those (not the ratio of the medians), and
the issue-17 targets judged on that median.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .support.scripts import script_module

REPO = Path(__file__).resolve().parents[1]


def _bench():
    return script_module("bench_sage3")


#: per round: SDPA's ms, then each format's; chosen so that the median of the rounds' ratios and the
#: ratio of the medians fall on opposite sides of a target
SDPA = [1.0, 3.0, 2.0]
TIMES = {
    "mxfp4": [1.5, 3.3, 3.6],      # ratios 1.5, 1.1, 1.8: median 1.5 (<= 1.6); medians 3.3 / 2.0 = 1.65
    "nvfp4": [1.8, 5.4, 3.2],      # ratios 1.8, 1.8, 1.6: median 1.8 (> 1.75); medians 3.2 / 2.0 = 1.6
    "mxfp8_s1": [1.0, 3.0, 2.0],   # 1.0 every round
    "mxfp4_s1": [1.7, 4.8, 3.4],   # 1.7, 1.6, 1.7: median 1.7 (> 1.6)
}


def test_time_row_judges_the_median_of_within_round_ratios(monkeypatch) -> None:
    mod = _bench()
    seen = {}

    def fake_interleaved(calls, rounds, errors=None):
        seen["labels"], seen["rounds"] = list(calls), rounds
        out = {"sdpa": SDPA}
        out.update({(f, "fp32"): TIMES[f] for f in mod.FORMATS})
        return out

    monkeypatch.setattr(mod, "_interleaved_ms", fake_interleaved)
    monkeypatch.setattr(mod, "_inputs", lambda s, h=24, d=128, seed=0: [torch.zeros(1, 2, 1, 4)] * 3)
    t_sdpa, cells, missed = mod._time_row(16384, ("fp32",), lambda *a, **k: None, 128, rounds=3)
    assert seen["rounds"] == 3
    assert seen["labels"] == ["sdpa", *((f, "fp32") for f in mod.FORMATS)]  # SDPA first in every round
    assert t_sdpa == 2.0
    by_fmt = dict(zip(mod.FORMATS, cells, strict=True))
    assert by_fmt["mxfp4"].startswith("3.300 (1.500x, 1.10-1.80")
    assert by_fmt["nvfp4"].startswith("3.200 (1.800x, 1.60-1.80")
    assert by_fmt["mxfp8_s1"].startswith("2.000 (1.000x, 1.00-1.00")
    judged = {m.split(" at ")[0] for m in missed}
    assert judged == {"nvfp4", "mxfp4_s1"}, missed  # mxfp4: 1.65 by its medians, 1.50 by its rounds
    assert all("median of 3 rounds" in m for m in missed)
    # D=64 is reported, not judged
    _, _, missed64 = mod._time_row(16384, ("fp32",), lambda *a, **k: None, 64, rounds=3)
    assert missed64 == []


def _run(*argv: str, script: str = "bench_sage3.py") -> subprocess.CompletedProcess:
    """The bench (or ``script``) as a user runs it, with no GPU visible (the same answer on a GPU host)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv", [["--no-check", "--dims", "128", "--no-ws-probe"],
                                  ["--no-check", "--ws-probe", "--rounds", "5"]])
def test_bench_sage3_parses_its_arguments_before_it_needs_a_gpu(argv) -> None:
    r = _run(*argv)
    assert "unrecognized arguments" not in r.stderr and "usage:" not in r.stderr, r.stderr
    assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr, (r.returncode, r.stdout, r.stderr)


@pytest.mark.parametrize("rounds", ["0", "-2", "three"])
def test_bench_sage3_refuses_a_bad_round_count(rounds) -> None:
    r = _run("--rounds", rounds)
    assert r.returncode == 2, (r.returncode, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert f"{rounds!r} is not a whole number of rounds; accepted: 1, 2, 3, ..." in last, last


def test_main_times_each_row_with_the_rounds_asked(monkeypatch) -> None:
    """``--rounds N`` reaches every row of the main table (D=128 and 64, each S)."""
    mod = _bench()
    rows = []

    class Stop(Exception):
        pass

    def spy(s, accs, fn, d=128, rounds=3):
        rows.append((s, d, rounds))
        if len(rows) == 4:
            raise Stop
        return 1.0, ["-"] * len(mod.FORMATS), []

    monkeypatch.setattr(mod, "_time_row", spy)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "stand-in")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(sys, "argv", ["bench_sage3.py", "--rounds", "7", "--seqs", "1024,4096", "--dims", "128,64"])
    with pytest.raises(Stop):
        mod.main()
    assert rows == [(1024, 128, 7), (4096, 128, 7), (1024, 64, 7), (4096, 64, 7)]


def test_switch_rows_time_the_formats_the_switch_acts_on(monkeypatch) -> None:
    """A switch's table has a row per format it acts on (``P_SCALE_PAIRS``: nvfp4 alone; the others:
    every format), each timed off and on in the rounds asked, and the switch is restored after."""
    mod = _bench()
    from vllm_qdq.sage3.numerics import kernel as K

    seen = []

    def fake_interleaved(calls, rounds, errors=None):
        seen.append((sorted(calls), rounds))
        return {False: [2.0, 2.2], True: [1.9, 2.1]}

    monkeypatch.setattr(mod, "_interleaved_ms", fake_interleaved)
    monkeypatch.setattr(mod, "_inputs", lambda s, h=24, d=128, seed=0: [torch.zeros(1, 2, 1, 4)] * 3)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    before = K.P_SCALE_PAIRS
    rows = mod._switch_rows("P_SCALE_PAIRS", [4096, 16384], rounds=2)
    assert K.P_SCALE_PAIRS == before
    assert [r.split(" | ")[:2] for r in rows] == [["| 4096", "nvfp4"], ["| 16384", "nvfp4"]]
    assert rows[0] == "| 4096 | nvfp4 | 2.100 (2.000-2.200) | 2.000 (1.900-2.100) | 0.952 |"  # on / off medians
    assert seen == [([False, True], 2)] * 2
    seen.clear()
    assert len(mod._switch_rows("P_MAX_EXP2", [4096], rounds=3)) == len(mod.FORMATS)
    assert seen == [([False, True], 3)] * len(mod.FORMATS)


def test_ws_probe_is_opt_in() -> None:
    """The warp-specialization probe hung on the H100 of 2026-12-07c: a default run leaves it out."""
    mod = _bench()
    import argparse

    seen = {}

    class Stop(Exception):
        pass

    def parse(self, args=None, namespace=None):
        ns = argparse.ArgumentParser.parse_known_args(self, args, namespace)[0]
        seen["ns"] = ns
        raise Stop

    import unittest.mock

    with unittest.mock.patch.object(argparse.ArgumentParser, "parse_args", parse), \
            unittest.mock.patch.object(sys, "argv", ["bench_sage3.py"]):
        with pytest.raises(Stop):
            mod.main()
    assert seen["ns"].ws_probe is False and seen["ns"].rounds == 3


@pytest.mark.parametrize(("argv", "said"), [
    (["--rounds", "0"], "'0' is not a number of rounds; accepted: 1 to 100"),
    (["--rounds", "101"], "'101' is not a number of rounds; accepted: 1 to 100"),
    (["--formats", "mxfp4,fp4"], "unknown sage3 format 'fp4'; accepted: "),
    (["--formats", ""], "unknown sage3 format ''; accepted: "),
    (["--seqs", "4k"], "'4k' is not a list of positive whole numbers"),
    (["--dims", "0"], "'0' is not a list of positive whole numbers"),
])
def test_probe_sage3_configs_names_a_bad_argument(argv, said) -> None:
    """``scripts/probe_sage3_configs.py`` refuses a bad argument before it looks for a GPU, naming
    the value and what it accepts, as the last line; good ones reach the GPU check."""
    r = _run(*argv, script="probe_sage3_configs.py")
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and said in last, (r.returncode, last)
    ok = _run("--rounds", "2", "--formats", "nvfp4", "--seqs", "1024", "--dims", "64", script="probe_sage3_configs.py")
    assert ok.returncode == 2 and "needs a CUDA GPU" in ok.stderr, ok.stderr


def test_report_names_the_misses_and_sets_the_exit_status(capsys) -> None:
    """``_report`` (both target blocks of ``main``): the targets missed under their heading and exit
    status 1, 0 with ``--no-check``; none missed: the line saying so and 0."""
    bench = _bench()
    assert bench._report(["mxfp4 16384: 1.7 > 1.6"], False, "TIME TARGETS MISSED", "all met") == 1
    assert capsys.readouterr().out == "\nTIME TARGETS MISSED:\n  mxfp4 16384: 1.7 > 1.6\n"
    assert bench._report(["a", "b"], True, "TARGETS MISSED", "all met") == 0
    assert capsys.readouterr().out == "\nTARGETS MISSED:\n  a\n  b\n"
    assert bench._report([], False, "TARGETS MISSED", "all targets met") == 0
    assert capsys.readouterr().out == "\nall targets met\n"
