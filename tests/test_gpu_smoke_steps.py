"""Every GPU test file is run by a step of ``scripts/gpu-smoke.sh`` (a file no step names would
never run on the GPU host or in the GPU CI), and every file a step names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "scripts" / "gpu-smoke.sh"


def _named() -> set[str]:
    """The ``tests/gpu/*.py`` paths in the commands of gpu-smoke.sh (comments left out)."""
    code = "\n".join(ln for ln in SMOKE.read_text().splitlines() if not ln.lstrip().startswith("#"))
    return set(re.findall(r"tests/gpu/test_\w+\.py", code))


def test_every_gpu_test_file_has_a_step() -> None:
    files = {str(p.relative_to(REPO)) for p in (REPO / "tests" / "gpu").glob("test_*.py")}
    missing = sorted(files - _named())
    assert not missing, f"no step of scripts/gpu-smoke.sh runs {missing}: add them to a step"


def test_every_named_file_exists() -> None:
    gone = sorted(n for n in _named() if not (REPO / n).is_file())
    assert not gone, f"scripts/gpu-smoke.sh names missing files {gone}"


def test_throughput_bench_models_hold_its_longest_shape(tmp_path: Path, monkeypatch) -> None:
    """Every model ``scripts/bench_plugin_throughput.py`` builds takes its ``max_model_len``
    (a 256-token Llama made the dense bench's engines refuse to start on the H200): built here
    with the bench's own builder and arguments, the sizes shrunk, the context kept."""
    import json

    import vllm_qdq.study.tiny as tiny

    bench = _bench_module()
    small = {"hidden": 64, "intermediate": 64, "heads": 2, "kv_heads": 1, "head_dim": 32, "layers": 1,
             "experts": 4, "top_k": 2}

    def build_small(path: Path, fn, **kw):
        return fn(path, **{k: small.get(k, v) for k, v in kw.items()})

    monkeypatch.setattr(tiny, "build_once", build_small)
    for name in bench.MODELS:
        cfg = json.loads((bench.build(name, tmp_path) / "config.json").read_text())
        assert cfg["max_position_embeddings"] >= bench.MAX_LEN, (name, cfg["max_position_embeddings"], bench.MAX_LEN)


def _script_module(name: str):
    """``scripts/<name>.py`` loaded as a module (the scripts are not a package)."""
    from .support.scripts import script_module

    return script_module(name)


def _bench_module():
    return _script_module("bench_plugin_throughput")


def test_throughput_bench_build_only_builds_and_starts_no_engine(tmp_path: Path, monkeypatch, capsys) -> None:
    """``--build-only`` (the lease's prep builds the models beside other work): each model of
    ``--models`` built under ``--out``, no engine started, exit 0; a bad model still named."""
    mod = _bench_module()
    built = []
    monkeypatch.setattr(mod, "build", lambda name, root: built.append((name, root)) or root / f"bench-{name}")
    monkeypatch.setattr(mod, "Engine", lambda *a, **k: pytest.fail("an engine was started"))
    assert mod.main(["--build-only", "--models", "gptoss,dense", "--out", str(tmp_path)]) == 0
    assert built == [("gptoss", tmp_path), ("dense", tmp_path)]
    assert capsys.readouterr().out.splitlines() == [f"gptoss: {tmp_path / 'bench-gptoss'} (0 s)",
                                                    f"dense: {tmp_path / 'bench-dense'} (0 s)"]
    with pytest.raises(SystemExit):
        mod.main(["--build-only", "--models", "gptoss,llama", "--out", str(tmp_path)])
    assert "--models 'gptoss,llama': unknown ['llama']" in capsys.readouterr().err


def test_throughput_bench_turns_alternate_batch_by_batch() -> None:
    """The bench times one batch per engine per turn, the order cycling through balanced orders
    and on across rounds: with two engines off-on, on-off, ...; within one cycle (len(who)
    turns, twice that when odd) each engine runs in each position, and directly after each
    other engine, equally often."""
    from collections import Counter

    bench = _bench_module()
    turns = bench.turns
    assert turns(["off", "on"], 4) == [["off", "on"], ["on", "off"], ["off", "on"], ["on", "off"]]
    # round 2 of 3 turns goes on from turn 3: an odd turn count does not restart the cycle
    assert turns(["off", "on"], 3, start=3) == [["on", "off"], ["off", "on"], ["on", "off"]]
    for who in (["off", "on", "kv"], ["off", "on", "kv", "aa"], list("abcde"), list("abcdef")):
        k = len(who)
        n = k if k % 2 == 0 else 2 * k
        cycle = turns(who, n, start=5)
        assert all(sorted(t) == sorted(who) for t in cycle)
        for pos in range(k):  # each engine in each position equally often
            assert Counter(t[pos] for t in cycle) == Counter({w: n // k for w in who})
        after = Counter((t[i], t[i + 1]) for t in cycle for i in range(k - 1))
        assert len(after) == k * (k - 1) and set(after.values()) == {n // k}  # each pair, directly
        assert turns(who, 2 * n, start=5)[n:] == cycle  # a cycle, whatever the start
    # one turn a round (the decode shape): four rounds give each engine each position once
    four = [turns(["off", "on", "kv", "aa"], 1, start=p)[0] for p in range(4)]
    assert {t[0] for t in four} == {"off", "on", "kv", "aa"}


def test_throughput_bench_median_interval() -> None:
    """The bootstrap interval holds the median, is seeded (same figures, same interval) and
    narrows with more samples of the same spread."""
    ci = _bench_module().median_ci
    few = [0.9, 1.0, 1.1, 0.95, 1.05]
    lo, hi = ci(few)
    assert lo <= 1.0 <= hi and ci(few) == (lo, hi)
    lo2, hi2 = ci(few * 6)
    assert hi2 - lo2 < hi - lo


def _stand_in_bench(bench, monkeypatch, speed: dict[str, float] | None = None, calls: list | None = None,
                    clock: list[float] | None = None, start_s: float = 0.0,
                    hiccup: dict[str, float] | None = None, no_steps: str | None = None,
                    slow: dict[str, float] | None = None, device: dict[str, float] | None = None,
                    kernel: dict[str, float] | None = None, launches: dict[str, float] | None = None,
                    qdq_host: dict[str, float] | None = None, batch_launches: dict[str, int] | None = None,
                    batch_steps: dict[str, int] | None = None) -> None:
    """``bench`` with stand-in engines (the engines themselves run on the GPU only): a prefill
    batch takes ``speed[engine]`` s (default 1), a decode batch twice that, an engine start
    ``start_s``; with ``clock``, the bench's clock is ``clock[0]``, advanced by each of those;
    ``calls`` collects ``(engine, shape, reps)``. A batch's median core step is its time over
    100 steps; ``hiccup[engine]``: every other batch of that engine and shape also loses that
    many seconds to the host (in the wall and the mean step: a few stretched steps leave the
    median step as it was); ``slow[engine]``: two of every three batches of that engine and
    shape run that many times slower, every step of them (a slow host state holding a whole
    batch); engine ``no_steps`` reports no core-step times; with ``device``, a batch's median
    device step takes ``device[engine]`` ms; ``kernel[engine]``: the profiled device time of a
    decode step, µs (else the profile fails, as without a profiler; a whole prefill-heavy
    batch's: 10 times that, in 100 steps), ``launches[engine]`` its host launch calls per step
    (default 3); ``qdq_host[engine]``: the host time of QDQ's calls in a whole prefill-heavy batch,
    µs (default 0; 64 calls where it is set, 64 launches inside them), ``batch_launches[engine]``
    the batch's other host launch calls (default 300), ``batch_steps[engine]`` its steps (default 100)."""
    seen: dict[tuple[str, str], int] = {}

    class StandIn:
        def __init__(self, model, llm_kwargs, name, log, qdq_config=None):
            self.name, self.log = name, log
            log.write_text(bench.LOG_LINE.get(name, ""))

        def wait_ready(self):
            if clock is not None:
                clock[0] += start_s
            return {"start_s": start_s}

        def run(self, shape, reps=1):
            if calls is not None:
                calls.append((self.name, shape, reps))
            n, i, o = bench.SHAPES[shape]
            seen[self.name, shape] = seen.get((self.name, shape), 0) + 1
            secs = (speed or {}).get(self.name, 1.0) * (1.0 if shape == "prefill" else 2.0) * reps
            if seen[self.name, shape] % 3:
                secs *= (slow or {}).get(self.name, 1.0)
            step = secs / reps / 100
            if seen[self.name, shape] % 2:
                secs += (hiccup or {}).get(self.name, 0.0)
            if clock is not None:
                clock[0] += secs
            if self.name == no_steps:
                return {"seconds": secs, "total_tok_s": n * (i + o) * reps / secs,
                        **({"device_step_s": device[self.name] / 1e3} if device else {})}
            return {"seconds": secs, "total_tok_s": n * (i + o) * reps / secs, "step_s": step,
                    "step_mean_s": secs / reps / 100, "intervals": 100 * reps,
                    **({"device_step_s": device[self.name] / 1e3} if device else {})}

        def profile(self, shape):
            if calls is not None:
                calls.append((self.name, "profile " + shape, 0))
            if kernel is None:
                return {"error": "RuntimeError: no profiler in the stand-in"}
            return {"steps": 256, "device_us": 256 * kernel[self.name], "us_per_step": kernel[self.name],
                    "records_per_step": 40.0, "launches_per_step": (launches or {}).get(self.name, 3.0),
                    "prefill_us": 10 * kernel[self.name], "prefill_steps": (batch_steps or {}).get(self.name, 100),
                    "prefill_launches": (batch_launches or {}).get(self.name, 300) + 64 * (self.name in (qdq_host or {})),
                    "prefill_qdq_calls": 64 * (self.name in (qdq_host or {})),
                    "prefill_qdq_host_us": (qdq_host or {}).get(self.name, 0.0),
                    "prefill_qdq_launches": 64 * (self.name in (qdq_host or {}))}

        def quit(self):
            pass

        def reap(self, timeout=60.0):
            pass

    monkeypatch.setattr(bench, "Engine", StandIn)
    monkeypatch.setattr(bench, "build", lambda name, root: root)
    monkeypatch.setattr(bench, "kv_bytes", lambda: 1 << 30)
    if clock is not None:
        monkeypatch.setattr(bench, "_now", lambda: clock[0])


def test_throughput_bench_rows_and_verdicts(tmp_path: Path, monkeypatch, capsys) -> None:
    """The bench's schedule, statistics and verdicts, its engines replaced by stand-ins with set
    speeds (the engines themselves run on the GPU only): ``on`` 10% slower than ``off`` fails the
    target, ``kv`` as fast passes, the A/A control is reported, not judged; every turn runs each
    engine once; the JSON holds one ratio per turn."""
    import json

    bench = _bench_module()
    calls: list[tuple[str, str, int]] = []
    _stand_in_bench(bench, monkeypatch, speed={"off": 1.0, "aa": 1.0, "on": 1.1, "kv": 1.0}, calls=calls,
                    kernel={"off": 500.0, "aa": 500.0, "on": 1500.0, "kv": 500.0}, qdq_host={"on": 50000.0})
    out = tmp_path / "rows.json"
    rc = bench.main(["--models", "dense", "--out", str(tmp_path), "--kv-cache", "nvfp4", "--pairs", "3",
                     "--min-seconds", "3", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 1, text  # on is 10% slower: below 0.97
    rows = {(r["mode"], r["shape"]): r for r in json.loads(out.read_text())}
    assert set(rows) == {("act", "prefill"), ("act", "decode"), ("kv", "decode"), ("aa", "prefill"), ("aa", "decode")}
    assert abs(rows["act", "prefill"]["ratio_median"] - 1 / 1.1) < 1e-9
    assert rows["kv", "decode"]["ratio_median"] == 1.0 and rows["aa", "decode"]["ratio_median"] == 1.0
    assert rows["act", "prefill"]["samples"] == 3 * 3 and rows["act", "decode"]["samples"] == 3 * 2
    assert rows["act", "prefill"]["turns_per_round"] == 3 and rows["act", "prefill"]["rounds"] == 3
    assert [c[:2] for c in calls[2:9]] == [(e, "profile prefill") for e in ("off", "on", "aa")] + [
        (e, "profile decode") for e in ("off", "on", "kv", "aa")]
    calls = [c for c in calls if not c[1].startswith("profile")]
    assert {c[2] for c in calls} == {1}  # one batch a call
    timed = calls[2:]  # after the two calibration batches of off
    assert {c[0] for c in timed if c[1] == "decode"} == {"off", "on", "kv", "aa"}
    assert {c[0] for c in timed if c[1] == "prefill"} == {"off", "on", "aa"}
    assert "BELOW TARGET" in text and "control" in text and "A/A control off 1" not in text
    assert text.strip().splitlines()[-1] == "verdict: FAIL: below 0.97: dense act prefill 0.943 (bound), dense act decode 0.952 (bound)"
    # decode rows are judged on the bound of QDQ's added device time (1 ms on a 20-ms best step), not
    # on the best batch (0.909 here); prefill rows on the bound of QDQ's added device time (10 ms)
    # and its calls' host time (50 ms) in a whole batch, on off's best 1-s batch
    assert {k: r["judged_on"] for k, r in rows.items()} == {
        ("act", "prefill"): "bound", ("act", "decode"): "bound", ("kv", "decode"): "bound",
        ("aa", "prefill"): "bound", ("aa", "decode"): "bound"}
    pre = rows["act", "prefill"]
    assert abs(pre["bound_ratio"] - 1e6 / 1.06e6) < 1e-9 and pre["added_device_us"] == 10000.0
    assert pre["added_qdq_host_us"] == 50000.0 and pre["qdq_calls"] == 64 and pre["added_launches_per_step"] == 0.0
    assert rows["aa", "prefill"]["bound_ratio"] == 1.0
    assert ("Added in one whole prefill-heavy batch over off's (profiled; aa: the A/A control): dense act +10.00 ms "
            "device, +50.00 ms host in 64 QDQ calls, +0.00 launches a step outside them, on a 1000-ms best off "
            "batch; dense aa +0.00 ms device") in text, text
    assert abs(rows["act", "decode"]["bound_ratio"] - 20 / 21) < 1e-9 and rows["act", "decode"]["added_us_per_step"] == 1000
    assert rows["kv", "decode"]["bound_ratio"] == rows["aa", "decode"]["bound_ratio"] == 1.0
    assert ("Device time and host launches per decode step over off's (profiled; aa: the A/A control): dense act "
            "+1000.0 us, +0.00 launches; dense kv +0.0 us") in text
    assert abs(rows["act", "decode"]["step_ratio_median"] - 1 / 1.1) < 1e-9
    assert abs(rows["act", "decode"]["best_ratio"] - 1 / 1.1) < 1e-9
    assert abs(rows["act", "decode"]["best_wall_ratio"] - 1 / 1.1) < 1e-9
    assert rows["kv", "decode"]["step_ratio_ci95"] == [1.0, 1.0] and rows["kv", "decode"]["best2_ratio"] == 1.0
    assert rows["act", "decode"]["off_best_step_ms"] == 20.0 and abs(rows["act", "decode"]["on_best_step_ms"] - 22.0) < 1e-9
    assert all(set(r["host_topology"]) == {"allowed", "numa_nodes", "smt_siblings", "gpu_local_cpus", "pinned"}
               for r in rows.values())
    assert text.startswith("host: CPUs ") and "engines pinned to - (unpinned)" in text


def test_throughput_bench_reports_the_device_step_ratio(tmp_path: Path, monkeypatch, capsys) -> None:
    """(The bench's wiring, with stand-in engines; the timer and profiler themselves are tested on
    the real CPU engine below and on a stood-in profiler.) With the engines' per-step device
    times (StepTimer), every row reports the median over
    turns of their ratio and each engine's median device step, in the table's ``device`` column,
    without judging it: QDQ's device cost (20% here) beside host-bound steps as fast as off
    passes; the decode rows also report the profiled device time per step (kernel column),
    which a failed profile leaves out, saying why; ``--no-device-steps`` tells the workers to
    leave the timer out and profiles nothing. Device spans present or absent, a row with core
    steps is judged on them and none says it falls back."""
    import json
    import os

    bench = _bench_module()
    monkeypatch.setenv("QDQ_BENCH_DEVICE_STEPS", "unset by main")  # restored (removed) after the test
    _stand_in_bench(bench, monkeypatch, device={"off": 1.0, "aa": 1.0, "on": 1.2, "kv": 1.1},
                    kernel={"off": 500.0, "aa": 500.0, "on": 625.0, "kv": 550.0})
    out = tmp_path / "rows.json"
    rc = bench.main(["--models", "dense", "--out", str(tmp_path), "--kv-cache", "nvfp4", "--pairs", "3",
                     "--min-seconds", "1", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert ("dense decode: device time per step (profiler, 256 tokens): off 500 us (40 records, 3.0 host "
            "launches), on 625 us (40 records, 3.0 host launches), kv 550 us (40 records, 3.0 host launches), "
            "aa 500 us (40 records, 3.0 host launches)") in text, text
    assert os.environ["QDQ_BENCH_DEVICE_STEPS"] == "1"
    rows = {(r["mode"], r["shape"]): r for r in json.loads(out.read_text())}
    assert abs(rows["act", "decode"]["device_ratio_median"] - 1 / 1.2) < 1e-9
    assert abs(rows["kv", "decode"]["device_ratio_max"] - 1 / 1.1) < 1e-9 and rows["aa", "prefill"]["device_ratio_median"] == 1.0
    assert rows["act", "decode"]["off_device_step_us"] == 1000.0 and abs(rows["act", "decode"]["on_device_step_us"] - 1200.0) < 1e-9
    header = next(ln for ln in text.splitlines() if ln.startswith("model "))
    line = next(ln for ln in text.splitlines() if ln.startswith("dense    act  decode"))
    assert header.split().index("kernel") == header.split().index("device") + 1, header
    assert " 0.833   0.800 " in line and "PASS" in line, (header, line)  # device spans, then kernel time
    assert rows["kv", "decode"]["kernel_ratio"] == 500 / 550 and rows["act", "decode"]["on_kernel_us"] == 625.0
    # the prefill rows: the device time of one whole batch, reported (kernel column); judged on the
    # bound of QDQ's added device time in it (1.25 ms on a 1-s batch: 0.999)
    assert ("dense prefill: one whole batch (profiler): off 5.00 ms (300 host launches in 100 steps; QDQ 0 "
            "calls, 0.00 ms on the host, 0 launches), on 6.25 ms (300 host launches in 100 steps; QDQ 0 calls, "
            "0.00 ms on the host, 0 launches), aa 5.00 ms") in text, text
    assert rows["act", "prefill"]["kernel_ratio"] == 0.8 and rows["act", "prefill"]["on_kernel_us"] == 6250.0
    assert rows["act", "prefill"]["bound_ratio"] == 1e6 / 1.00125e6 and rows["act", "prefill"]["judged_on"] == "bound"
    assert rows["aa", "decode"]["profile"]["aa"]["us_per_step"] == 500.0
    assert rows["kv", "decode"]["off_launches"] == rows["kv", "decode"]["on_launches"] == 3.0
    assert "have no core-step time" not in text and "Judged on wall time" not in text
    assert {r["judged_on"] for r in rows.values()} == {"bound"}
    # QDQ's 125 us a step on a 20-ms step: a bound of 0.994, the row passes on it
    assert abs(rows["act", "decode"]["bound_ratio"] - 20000 / 20125) < 1e-9 and " 0.994* " in line
    # without device spans (--no-device-steps: the workers leave the timer out) the rows have none,
    # and the decode rows are judged on the best batch, said as a fallback
    _stand_in_bench(bench, monkeypatch)
    assert bench.main(["--models", "dense", "--out", str(tmp_path), "--pairs", "3", "--min-seconds", "1",
                       "--no-device-steps", "--json", str(out)]) == 0
    assert os.environ["QDQ_BENCH_DEVICE_STEPS"] == "0"
    text = capsys.readouterr().out
    got = json.loads(out.read_text())
    assert all("device_ratio_median" not in r for r in got)
    assert {r["judged_on"] for r in got} == {"best"}
    assert ("Judged on the best batch, the profile left out (--no-device-steps): dense prefill (best), "
            "dense decode (best).") in text
    assert "have no core-step time" not in text and "device time per step (profiler" not in text
    # a profile that fails is said, with its reason, and the decode row, which is judged on it, fails
    _stand_in_bench(bench, monkeypatch)
    assert bench.main(["--models", "dense", "--out", str(tmp_path), "--pairs", "3", "--min-seconds", "1",
                       "--json", str(out)]) == 1
    text = capsys.readouterr().out
    assert "dense decode: device time per step (profiler, 256 tokens): off none (RuntimeError: no profiler" in text
    assert all("kernel_ratio" not in r for r in json.loads(out.read_text()))
    line = next(ln for ln in text.splitlines() if ln.startswith("dense    act  decode"))
    assert "NO FIGURE (profile: off none (RuntimeError: no profiler in the stand-in); on none (" in line, line
    assert text.strip().splitlines()[-1] == ("verdict: FAIL: below 0.97: dense act prefill no profiled device time "
                                             "(bound), dense act decode no profiled device time (bound)")
    assert "control: no figure" in next(ln for ln in text.splitlines() if ln.startswith("dense    aa   decode"))
    assert ("A/A control's bound below the target or missing (dense prefill (bound), dense decode (bound)): the "
            "profile does not") in text
    # a QDQ engine that adds host launches a step: the bound does not hold, the row fails
    _stand_in_bench(bench, monkeypatch, kernel={"off": 500.0, "aa": 500.0, "on": 500.0},
                    launches={"on": 4.5})
    assert bench.main(["--models", "dense", "--out", str(tmp_path), "--pairs", "3", "--min-seconds", "1"]) == 1
    text = capsys.readouterr().out
    assert "FAIL: adds 1.50 host launches a step (more than LAUNCH_SLACK 1)" in text
    assert text.strip().splitlines()[-1] == "verdict: FAIL: below 0.97: dense act decode adds host launches (bound)"
    # within the slack (identical engines differ by up to 0.86 a step in the committed runs): passes
    _stand_in_bench(bench, monkeypatch, kernel={"off": 500.0, "aa": 500.0, "on": 500.0}, launches={"on": 3.9})
    assert bench.main(["--models", "dense", "--out", str(tmp_path), "--pairs", "3", "--min-seconds", "1"]) == 0
    assert "verdict: PASS" in capsys.readouterr().out
    # in a prefill-heavy batch, QDQ's eager calls launch kernels: those are its own (their host time
    # is in the bound), launches outside them are not, and more than LAUNCH_SLACK a step fails
    _stand_in_bench(bench, monkeypatch, kernel=dict.fromkeys(("off", "on", "aa"), 500.0), qdq_host={"on": 2000.0})
    assert bench.main(["--models", "dense", "--out", str(tmp_path), "--pairs", "3", "--min-seconds", "1"]) == 0
    assert "dense act +0.00 ms device, +2.00 ms host in 64 QDQ calls, +0.00 launches a step outside" in capsys.readouterr().out
    _stand_in_bench(bench, monkeypatch, kernel=dict.fromkeys(("off", "on", "aa"), 500.0), qdq_host={"on": 2000.0},
                    batch_launches={"on": 420})
    assert bench.main(["--models", "dense", "--out", str(tmp_path), "--pairs", "3", "--min-seconds", "1"]) == 1
    text = capsys.readouterr().out
    assert "FAIL: adds 1.20 host launches a step" in next(ln for ln in text.splitlines() if ln.startswith("dense    act  prefill"))
    assert text.strip().splitlines()[-1] == "verdict: FAIL: below 0.97: dense act prefill adds host launches (bound)"
    # each engine's launches count over its own steps: the same 420 in a batch of 110 steps is 3.82
    # a step, 0.82 over off's 3.00 (not 120 over off's 100 steps, 1.20), and passes
    _stand_in_bench(bench, monkeypatch, kernel=dict.fromkeys(("off", "on", "aa"), 500.0), qdq_host={"on": 2000.0},
                    batch_launches={"on": 420}, batch_steps={"on": 110})
    assert bench.main(["--models", "dense", "--out", str(tmp_path), "--pairs", "3", "--min-seconds", "1"]) == 0
    assert "64 QDQ calls, +0.82 launches a step outside" in capsys.readouterr().out


def test_step_timer_sums_each_steps_calls() -> None:
    """``StepTimer`` on a model runner without CUDA (host clock): after ``qdq_bench_time_steps``
    the runner's ``execute_model`` and ``sample_tokens`` still return what they did, and
    ``qdq_bench_step_times`` gives one time per ``execute_model`` call with the
    ``sample_tokens`` calls after it added, then nothing until the next steps; installing twice
    wraps once."""
    import time

    bench = _bench_module()

    class Runner:  # a model runner's two entry points, each taking a known host time
        def execute_model(self, x):
            time.sleep(0.02)
            return ("out", x)

        def sample_tokens(self, g):
            time.sleep(0.01)
            return ("tok", g)

    class Worker(bench.StepTimer):
        device = "cpu"

        def __init__(self):
            self.model_runner = Runner()

    w = Worker()
    assert w.qdq_bench_time_steps() == "host clock" and w.qdq_bench_time_steps() == "host clock"
    r = w.model_runner
    assert r.execute_model(1) == ("out", 1) and r.sample_tokens(2) == ("tok", 2)
    assert r.execute_model(3) == ("out", 3)  # a step that samples nothing
    got = w.qdq_bench_step_times()
    assert len(got) == 2 and 0.03 <= got[0] < 0.03 + 0.5 and 0.02 <= got[1] < 0.02 + 0.5, got
    assert w.qdq_bench_step_times() == []


def test_step_timer_profile_sums_device_records(monkeypatch) -> None:
    """``StepTimer.qdq_bench_profile`` with the profiler stood in for (its records are what a GPU
    profile holds): the stop splits the records at the marks (by start time), sums each
    segment's device durations and counts its host launch calls (``cu*Launch*``), its QDQ op calls
    (``vllm_qdq::*``), their host time and the launches inside them, leaving out other host ops, user annotations (which span from their
    first kernel to their last), records of implausible duration (counted as dropped) and
    synchronization records (the host's waits, counted as waits), and
    counts each segment's ``execute_model`` calls; a stop without a start, a mark missing from
    the profile and an unknown action are errors; a start stops a profiler a failed stop left."""
    from types import SimpleNamespace

    import torch

    bench = _bench_module()
    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA

    def rec(dev, start, us, name="k", ann=False, thread=7):
        return SimpleNamespace(name=name, device_type=dev, is_user_annotation=ann, thread=thread,
                               time_range=SimpleNamespace(start=start, elapsed_us=lambda: us))

    made = []
    # QDQ calls on thread 7: [2, 7] and, in the second segment, [24, 32] with a nested call [25, 27]
    # (one span: its time counted once); launches inside them on that thread count as QDQ's, one on
    # another thread at the same time does not
    records = [rec(cpu, 0, 900.0, "aten::mm"), rec(cpu, 1, 3.0, "cudaLaunchKernel"), rec(cpu, 2, 5.0, "vllm_qdq::qdq"),
               rec(cpu, 3, 2.0, "cuLaunchKernel"), rec(cpu, 24, 8.0, "vllm_qdq::qdq"), rec(cpu, 25, 2.0, "vllm_qdq::qdq"),
               rec(cpu, 28, 1.0, "cudaLaunchKernel"), rec(cpu, 29, 1.0, "cudaLaunchKernel", thread=8), rec(cuda, 5, 10.0),
               rec(cuda, 8, 2.5), rec(cuda, 9, 50.0, ann=True), rec(cpu, 20, 1.0, "qdq_bench_mark"),
               rec(cpu, 21, 3.0, "cudaGraphLaunch"), rec(cpu, 22, 3.0, "cuLaunchKernel"), rec(cpu, 23, 1.0, "cudaMemcpyAsync"),
               rec(cuda, 25, 4.0), rec(cuda, 30, 1e14), rec(cuda, 31, 6.0), rec(cuda, 32, 700.0, "Event Sync")]

    class Prof:  # the profiler's context-manager protocol and its records
        def __init__(self, activities):
            self.entered = self.exited = 0
            self.records = list(records)
            made.append(self)

        def __enter__(self):
            self.entered += 1
            return self

        def __exit__(self, *a):
            self.exited += 1

        def events(self):
            return self.records

    monkeypatch.setattr(torch.profiler, "profile", Prof)

    class Runner:
        def execute_model(self, x):
            return x

        def sample_tokens(self, g):
            return g

    class Worker(bench.StepTimer):
        device = "cpu"

        def __init__(self):
            self.model_runner = Runner()

    w = Worker()
    run = w.model_runner
    run.execute_model(0)  # before the start: not counted
    assert w.qdq_bench_profile("start") is None
    run.execute_model(1)
    run.sample_tokens(1)
    w.qdq_bench_profile("mark")
    for k in range(3):
        run.execute_model(k)
        run.sample_tokens(k)
    assert w.qdq_bench_profile("stop") == {"segments": [
        {"device_us": 12.5, "records": 2, "dropped": 0, "launches": 2, "waits": 0, "steps": 1,
         "qdq_calls": 1, "qdq_host_us": 5.0, "qdq_launches": 1},
        {"device_us": 10.0, "records": 2, "dropped": 1, "launches": 4, "waits": 1, "steps": 3,
         "qdq_calls": 2, "qdq_host_us": 8.0, "qdq_launches": 1}]}
    assert made[0].entered == made[0].exited == 1
    with pytest.raises(RuntimeError, match="without a profiler started"):
        w.qdq_bench_profile("stop")
    with pytest.raises(ValueError, match=r"\('pause'\); accepted: 'start', 'mark', 'stop'"):
        w.qdq_bench_profile("pause")
    w.qdq_bench_profile("start")  # no mark made, one in the records
    with pytest.raises(RuntimeError, match="1 marks in the profile for 0 made"):
        w.qdq_bench_profile("stop")
    w.qdq_bench_profile("start")
    w.model_runner._qdq_bench_prof = (made[2], [0])  # as a stop that failed would leave it
    w.qdq_bench_profile("start")
    assert made[2].exited == 1 and made[3].entered == 1


def test_profile_batch_differences_and_waits() -> None:
    """``profile_batch`` reads two segments (a 1-token batch, then 1 + 256 tokens) and reports the
    second's excess per decode step: device time, records, host launches and synchronization
    records (left out of the sum, reported), and the first batch's own figures, QDQ's host calls
    included; a failing profiler comes back as its error."""
    bench = _bench_module()

    class LLM:
        def __init__(self, fail: bool = False) -> None:
            self.fail, self.calls = fail, []

        def generate(self, prompts, params, use_tqdm=False):
            self.calls.append(params.max_tokens)

        def collective_rpc(self, name, args=()):
            if self.fail and args == ("start",):
                raise RuntimeError("CUPTI unavailable")
            if args == ("stop",):
                seg = {"device_us": 100.0, "records": 10, "dropped": 1, "launches": 20, "waits": 0, "steps": 1,
                       "qdq_calls": 8, "qdq_host_us": 96.5, "qdq_launches": 8}
                return [{"segments": [seg, {**seg, "device_us": 100.0 + 256 * 812.5, "records": 10 + 256 * 75,
                                            "launches": 20 + 256 * 21, "waits": 512, "steps": 257}]}]
            return [None]

    llm = LLM()
    got = bench.profile_batch(llm, ["p"])
    assert llm.calls == [1, 257]
    assert got == {"steps": 256, "device_us": 208000.0, "us_per_step": 812.5, "records_per_step": 75.0,
                   "launches_per_step": 21.0, "dropped": 2, "waits_per_step": 2.0, "prefill_us": 100.0,
                   "prefill_launches": 20, "prefill_steps": 1, "prefill_qdq_calls": 8, "prefill_qdq_host_us": 96.5,
                   "prefill_qdq_launches": 8}
    assert bench._prefill_text(got) == ("0.10 ms (20 host launches in 1 steps; QDQ 8 calls, 0.10 ms on the host, "
                                        "8 launches)")
    llm = LLM()  # tokens=0: the first batch alone (a prefill-heavy row: its whole timed batch)
    assert bench.profile_batch(llm, ["p"], 0, first=128)["prefill_us"] == 100.0 and llm.calls == [128]
    assert bench._profile_text(got) == ("812 us (75 records, 21.0 host launches; 2 of implausible duration left out; "
                                         "2.0 synchronization records a step left out)")
    assert bench.profile_batch(LLM(fail=True), ["p"]) == {"error": "RuntimeError: CUPTI unavailable"}


def test_throughput_bench_judges_decode_past_host_hiccups(tmp_path: Path, monkeypatch, capsys) -> None:
    """A host that stretches every other batch of the QDQ engine by seconds in a few steps: its
    decode row, judged on the bound of its (equal) profiled device time, passes while the wall
    ratios shown beside it swing, and its median and best core steps read 1 too; so does its
    prefill row, judged on the bound of its whole batch's (equal) profile, its wall median 0.625."""
    import json

    bench = _bench_module()
    _stand_in_bench(bench, monkeypatch, hiccup={"on": 3.0}, kernel=dict.fromkeys(("off", "on", "kv", "aa"), 500.0))
    out = tmp_path / "rows.json"
    rc = bench.main(["--models", "gptoss", "--out", str(tmp_path), "--kv-cache", "nvfp4", "--pairs", "4",
                     "--min-seconds", "1", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    rows = {(r["mode"], r["shape"]): r for r in json.loads(out.read_text())}
    dec = rows["act", "decode"]
    assert dec["step_ratio_median"] == 1.0 and sorted({round(r["ratio"], 3) for r in dec["raw"]}) == [0.4, 1.0]
    pre = rows["act", "prefill"]
    assert pre["judged_on"] == "bound" and sorted({r["ratio"] for r in pre["raw"]}) == [0.25, 1.0]
    lines = {tuple(ln.split()[:3]): ln for ln in text.splitlines() if ln.startswith("gptoss ")}
    assert "1.000*" in lines["gptoss", "act", "decode"] and "PASS" in lines["gptoss", "act", "decode"]
    assert lines["gptoss", "act", "prefill"].endswith("1.000*  4  PASS") and " 0.625 " in lines["gptoss", "act", "prefill"]
    assert "PASS" in lines["gptoss", "kv", "decode"] and "A/A control off" not in text
    assert "A/A control within" not in text
    assert "[1.000]" in text  # the rounds' lines show each turn's step ratio beside its wall ratio
    # the hiccups are in the mean step, not in the median or best one
    assert dec["step_mean_ratio_median"] == 0.7 and dec["best_ratio"] == 1.0
    assert "Judged figure at target" not in text


def test_throughput_bench_bound_beats_a_slow_host_state(tmp_path: Path, monkeypatch, capsys) -> None:
    """The H200's decode noise (results/h200-2026-12-03d, e): whole batches of one engine in a slow
    host state, here two of every three of the QDQ engine's, 1.5x slower in every step. The
    median over turns, of wall or step ratios, reads 0.667; the bound of QDQ's device time (the
    same profiled time on and off) reads 1.0, the rows (decode, and prefill on its whole batch)
    pass, and the table says that their median over turns is below the target. A real device cost (0.8 ms a step on a 20-ms best step) fails
    on the bound, the slow host state or not; with the profile left out, the row falls back to
    the best batch (one quiet batch of three: 1.0, its second best 0.667)."""
    import json

    bench = _bench_module()
    equal = dict.fromkeys(("off", "on"), 500.0)
    _stand_in_bench(bench, monkeypatch, slow={"on": 1.5}, kernel=equal)
    out = tmp_path / "rows.json"
    argv = ["--models", "dense", "--out", str(tmp_path), "--no-aa", "--pairs", "3", "--min-seconds", "1",
            "--json", str(out)]
    assert bench.main(argv) == 0  # the prefill row too, on its whole batch's bound (wall median 0.667)
    text = capsys.readouterr().out
    dec = {r["shape"]: r for r in json.loads(out.read_text())}["decode"]
    assert round(dec["ratio_median"], 3) == round(dec["step_ratio_median"], 3) == 0.667, dec
    assert dec["bound_ratio"] == 1.0 and dec["judged_on"] == "bound" and dec["best_ratio"] == 1.0
    line = next(ln for ln in text.splitlines() if ln.startswith("dense    act  decode"))
    assert " 1.000* " in line and line.endswith("PASS"), line
    assert ("Judged figure at target, the median over turns below it (dense act prefill: step median 0.667; "
            "dense act decode: step median 0.667)") in text
    assert ("No A/A control (--no-aa) for dense act prefill, dense act decode: the bound's resolution is "
            "unchecked.") in text
    assert text.strip().splitlines()[-1] == "verdict: PASS: 2 rows >= 0.97"
    _stand_in_bench(bench, monkeypatch, slow={"on": 1.5}, kernel={"off": 500.0, "on": 1300.0})
    assert bench.main([*argv, "--shapes", "decode"]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == "verdict: FAIL: below 0.97: dense act decode 0.962 (bound)"
    _stand_in_bench(bench, monkeypatch, slow={"on": 1.5})
    assert bench.main([*argv, "--shapes", "decode", "--no-device-steps"]) == 0
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if ln.startswith("dense    act  decode"))
    assert "1.000*" in line and "PASS (2nd best below the target)" in line, line


def test_throughput_bench_aa_control_and_fallback(tmp_path: Path, monkeypatch, capsys) -> None:
    """The A/A warning reads the figure each row is judged on: hiccups of the second QDQ-off
    engine move its wall figures but not its bounds (quiet); where the rows fall back to wall time
    (the off engine without core-step times), the same hiccups are warned of, and a steady 1%
    slot bias is said as one. An engine without core-step times: its rows fall back to wall
    time, and the table says so rather than skip them."""
    bench = _bench_module()
    equal = dict.fromkeys(("off", "on", "kv", "aa"), 500.0)
    _stand_in_bench(bench, monkeypatch, hiccup={"aa": 3.0}, kernel=equal)
    argv = ["--models", "gptoss", "--out", str(tmp_path), "--kv-cache", "nvfp4", "--pairs", "4", "--min-seconds", "1"]
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert text.strip().splitlines()[-1] == "verdict: PASS: 3 rows >= 0.97", text
    assert "Judged on wall time" not in text and "A/A control off" not in text
    _stand_in_bench(bench, monkeypatch, hiccup={"aa": 3.0}, kernel=equal, no_steps="off")
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert ("A/A control off 1 beyond the target's margin (gptoss prefill (wall), gptoss decode (wall)):"
            in text), text
    assert text.strip().splitlines()[-1] == "verdict: PASS: 3 rows >= 0.97 (A/A beyond the margin: within noise)"
    assert "Judged on wall time for want of core-step times: gptoss prefill (wall), gptoss decode (wall)." in text
    # a steady 1% slot bias: within the margin, its interval missing 1, said as such
    _stand_in_bench(bench, monkeypatch, speed={"aa": 1.01}, kernel=equal, no_steps="off")
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert ("A/A control within the target's margin, its 95% CI missing 1 (gptoss prefill (wall): 0.990, CI "
            "0.990-0.990; gptoss decode (wall): 0.990, CI 0.990-0.990)") in text, text
    # judged on bounds, which have no interval, the A/A rows are only held to the target
    _stand_in_bench(bench, monkeypatch, speed={"aa": 1.01}, kernel=equal)
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    aa = next(ln for ln in text.splitlines() if ln.startswith("gptoss   aa   decode"))
    assert " 0.990  " in aa and " 1.000* " in aa, aa  # its best batch, then its bound (the one judged)
    assert "A/A control off" not in text and "A/A control within" not in text
    # an A/A control whose profiled device time is 40% above off's: 200 us on a 20-ms step, a bound
    # of 0.990, within the target; at 1.2 ms its bound misses the target, so the profile does not
    # resolve it, and the QDQ decode rows fail on that, whatever their own bound
    _stand_in_bench(bench, monkeypatch, kernel={**equal, "aa": 700.0})
    assert bench.main(argv) == 0
    assert " 0.990* " in next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("gptoss   aa   decode"))
    _stand_in_bench(bench, monkeypatch, kernel={**equal, "aa": 1200.0})
    assert bench.main(argv) == 1
    text = capsys.readouterr().out
    assert "FAIL: A/A bound 0.966 below the target (the profile does not resolve it)" in text
    assert "A/A control's bound below the target or missing (gptoss decode (bound) 0.966)" in text
    assert text.strip().splitlines()[-1] == ("verdict: FAIL: below 0.97: gptoss act decode 1.000 (A/A bound 0.966), "
                                             "gptoss kv decode 1.000 (A/A bound 0.966)")
    # an off profile that came out high (aa 1 ms below it): QDQ's cost would hide in it, and the
    # control, on the absolute difference, catches it
    _stand_in_bench(bench, monkeypatch, kernel={"off": 1500.0, "on": 1500.0, "kv": 1500.0, "aa": 500.0})
    assert bench.main(argv) == 1
    text = capsys.readouterr().out
    assert text.strip().splitlines()[-1] == ("verdict: FAIL: below 0.97: gptoss act decode 1.000 (A/A bound 0.952), "
                                             "gptoss kv decode 1.000 (A/A bound 0.952)")
    assert "gptoss aa -1000.0 us, +0.00 launches" in text
    _stand_in_bench(bench, monkeypatch, no_steps="kv", kernel=equal)
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert "gptoss kv decode: 4 of 4 turns have no core-step time" in text
    assert "Judged on wall time for want of core-step times: gptoss decode (wall)." in text
    assert "A/A control off" not in text and "A/A control within" not in text
    # device spans without core steps: the same fallback (the device span is never judged)
    _stand_in_bench(bench, monkeypatch, no_steps="kv", device={"off": 1.0, "on": 1.0, "kv": 1.0, "aa": 1.0},
                    kernel=equal)
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert "gptoss kv decode: 4 of 4 turns have no core-step time" in text
    assert "Judged on wall time for want of core-step times: gptoss decode (wall)." in text


def test_core_steps_intervals_per_batch() -> None:
    """CoreSteps / timed_generate on a stand-in engine core with a set clock: only messages that
    carry tokens are stamped, stamps from before a batch (warm-up) are dropped, and each batch
    of S stamps gives S - 1 intervals, none spanning two batches."""
    from types import SimpleNamespace

    bench = _bench_module()
    clock = [100.0]

    class Core:
        def __init__(self):
            self.queue = []

        def get_output(self):
            t, n = self.queue.pop(0)
            return SimpleNamespace(outputs=[0] * n, timestamp=t)

    core = Core()
    llm = SimpleNamespace(llm_engine=SimpleNamespace(engine_core=core))
    steps = bench.CoreSteps(llm)

    def generate(prompts, params, use_tqdm=False):
        # a batch: an empty message, then 5 token-returning steps 0.01 s apart but the 4th 0.5 s late
        t0 = clock[0]
        core.queue = [(t0, 0)] + [(t0 + 0.01 * (k + 1) + (0.5 if k >= 3 else 0.0), 2) for k in range(5)]
        for _ in range(6):
            core.get_output()
        clock[0] = t0 + 10.0  # the gap before the next batch
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[1, 2, 3])]) for _ in prompts]

    llm.generate = generate
    core.queue = [(50.0, 1), (60.0, 1)]  # warm-up stamps, before any timed batch
    core.get_output(), core.get_output()
    got = bench.timed_generate(llm, steps, [0, 1], None, reps=2)
    assert got["intervals"] == 2 * 4 and got["generated"] == 2 * 2 * 3, got
    assert abs(got["step_s"] - 0.01) < 1e-9  # the median leaves the late step out
    assert abs(got["step_mean_s"] - (3 * 0.01 + 0.51) / 4) < 1e-9  # the mean keeps it
    assert abs(got["step_p90_s"] - 0.01) < 1e-9 or abs(got["step_p90_s"] - 0.51) < 1e-9
    assert got["intervals_us"] == [10000, 10000, 510000, 10000] * 2
    assert steps.intervals() == []


def test_throughput_bench_cpu_lists_and_pinning_errors(tmp_path: Path, monkeypatch, capsys) -> None:
    """``--cpus``: Linux CPU lists both ways; a malformed list, or CPUs this process may not run
    on, exit 2 at start-up naming the value and the accepted CPUs; a good one is what the
    workers get (``QDQ_BENCH_CPUS``) and what the host line and every row say."""
    import json
    import os

    bench = _bench_module()
    assert bench.parse_cpus("0-2,5, 7") == {0, 1, 2, 5, 7} and bench.cpu_ranges({0, 1, 2, 5, 7}) == "0-2,5,7"
    assert bench.cpu_ranges(bench.parse_cpus("3")) == "3"
    for bad in ("", "a", "1-", "-3", "1,,2", "0-1,7-3"):
        with pytest.raises(ValueError):
            bench.parse_cpus(bad)
    allowed = os.sched_getaffinity(0)
    _stand_in_bench(bench, monkeypatch)
    argv = ["--models", "dense", "--out", str(tmp_path), "--no-aa", "--pairs", "3", "--min-seconds", "1"]
    for cpus, msg in (("x7", f"--cpus 'x7'; accepted: a CPU list such as 0-7,16-23 of this process's CPUs "
                              f"{bench.cpu_ranges(allowed)}"),
                      (f"{max(allowed) + 1}", f"--cpus '{max(allowed) + 1}': CPUs {max(allowed) + 1} are not this "
                                              f"process's; accepted: a list of {bench.cpu_ranges(allowed)}")):
        with pytest.raises(SystemExit) as e:
            bench.main([*argv, "--cpus", cpus])
        assert e.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(msg)
    monkeypatch.delenv("QDQ_BENCH_CPUS", raising=False)
    one = str(min(allowed))
    out = tmp_path / "rows.json"
    bench.main([*argv, "--cpus", one, "--json", str(out)])
    assert os.environ["QDQ_BENCH_CPUS"] == one and f"engines pinned to {one}" in capsys.readouterr().out
    assert {r["host_topology"]["pinned"] for r in json.loads(out.read_text())} == {one}
    bench.main(argv)  # not given: unpinned, whatever the environment said before
    assert "QDQ_BENCH_CPUS" not in os.environ


def test_throughput_bench_host_states_line() -> None:
    """The host-state line compares a shape's slow batches (median step > 1.15x the engine's
    best) with its quiet ones on the engine core's preemptions and CPU sharing, counts each batch
    once however many rows hold it (``off``'s are in every row), and is absent without probe
    figures."""
    bench = _bench_module()

    def batch(step: float, nv: int, shared: bool) -> dict:
        return {"step_s": step, "seconds": 1.0, "host": {
            "front": {"pid": 1, "cpu_s": 0.5, "nvcsw": 0, "busy_cpus": [1]},
            "core": {"pid": 2, "cpu_s": 0.9, "nvcsw": nv, "busy_cpus": [1] if shared else [3]}}}

    raw = [{"round": 1, "turn": 1, "off": batch(2.5, 10, False), "on": batch(2.5, 20, False), "aa": batch(4.0, 300, True)},
           {"round": 1, "turn": 2, "off": batch(3.9, 200, True), "on": batch(2.6, 30, False), "aa": batch(2.5, 10, False)}]
    rows = [{"model": "m", "mode": "act", "shape": "decode", "raw": [{k: v for k, v in r.items() if k != "aa"} for r in raw]},
            {"model": "m", "mode": "aa", "shape": "decode", "raw": [{k: v for k, v in r.items() if k != "on"} for r in raw]},
            {"model": "m", "mode": "act", "shape": "prefill", "raw": [{**r, "off": batch(9.0, 999, True)} for r in raw]}]
    assert bench.host_states(rows) == (
        "decode host states: 2 of 6 batches slow (median step > 1.15x its engine's best); slow: core preemptions "
        "250/s (median), core on a CPU of the front end's in 2 of 2; quiet: core preemptions 15/s (median), core "
        "on a CPU of the front end's in 0 of 4")
    # two NUMA nodes: where the core's busy CPUs were, per group (CPU 1 on node0, CPU 3 on node1)
    assert bench.host_states(rows, numa={"node0": "0-1", "node1": "2-3"}).endswith(
        "slow: core preemptions 250/s (median), core on a CPU of the front end's in 2 of 2, core's NUMA node(s) "
        "node0 x2; quiet: core preemptions 15/s (median), core on a CPU of the front end's in 0 of 4, core's "
        "NUMA node(s) node1 x4")
    assert "NUMA" not in bench.host_states(rows, numa={"node0": "0-3", "node1": ""})  # one node with CPUs
    for r in raw:
        for b in r.values():
            if isinstance(b, dict):
                b.pop("host")
    assert bench.host_states(rows) is None


def test_throughput_bench_host_states_reads_steal_and_clock() -> None:
    """Where the engine core's figures hold the stolen share of its CPUs' time and their clock
    (:meth:`HostProbe.cpu_state`), the host-state line gives the median share and the clock's
    range per group; a batch without them counts for the other figures only. With device times
    per step (StepTimer), it gives each group's median device step over its engine's least: a
    slow device, or a slow host around a device as fast as ever."""
    bench = _bench_module()

    def batch(step: float, steal: float | None, mhz: float | None = None) -> dict:
        core = {"pid": 2, "cpu_s": 0.9, "nvcsw": 0, "busy_cpus": [3]}
        core.update({k: v for k, v in (("steal", steal), ("mhz", mhz)) if v is not None})
        return {"step_s": step, "seconds": 1.0, "host": {
            "front": {"pid": 1, "cpu_s": 0.5, "nvcsw": 0, "busy_cpus": [1]}, "core": core}}

    raw = [{"round": 1, "turn": 1, "off": batch(2.5, 0.0, 2000), "on": batch(2.5, 0.01, 2100)},
           {"round": 1, "turn": 2, "off": batch(4.0, 0.3, 1900), "on": batch(4.0, None)},
           {"round": 1, "turn": 3, "off": batch(4.0, 0.2, 1800), "on": batch(2.5, 0.0)}]
    line = bench.host_states([{"model": "m", "mode": "act", "shape": "decode", "raw": raw}])
    assert "device span" not in line
    assert line == (
        "decode host states: 3 of 6 batches slow (median step > 1.15x its engine's best); slow: core preemptions "
        "0/s (median), core on a CPU of the front end's in 0 of 3, core CPUs' stolen time 25.0% (median), their "
        "clock 1800-1900 MHz; quiet: core preemptions 0/s (median), core on a CPU of the front end's in 0 of 3, "
        "core CPUs' stolen time 0.0% (median), their clock 2000-2100 MHz"), line
    # device times per step: a slow batch whose device steps were as fast as its engine's least
    for r in raw:
        for e in ("off", "on"):
            r[e]["device_step_s"] = 0.001
    raw[1]["off"]["device_step_s"] = raw[2]["off"]["device_step_s"] = 0.002  # two of the three slow ones
    line = bench.host_states([{"model": "m", "mode": "act", "shape": "decode", "raw": raw}])
    assert "2000-2100 MHz, device span per step 1.00x its engine's least (median)" in line, line
    assert "1800-1900 MHz, device span per step 2.00x" in line, line  # slow: 2.0x, 2.0x, 1.0x


def test_host_probe_cpu_state() -> None:
    """``HostProbe.cpus`` reads every CPU's stolen seconds (and clock where ``/proc/cpuinfo``
    lists one) on Linux; ``cpu_state`` turns two readings into the stolen share of the given
    CPUs' time over the interval and their mean clock at its end, and is empty for CPUs it has
    no readings of."""
    import os

    bench = _bench_module()
    now = bench.HostProbe.cpus()
    assert set(os.sched_getaffinity(0)) & set(now), now  # this process's CPUs are listed
    assert all(s >= 0 and (m is None or m > 0) for s, m in now.values()), now
    before = {0: (10.0, 2000.0), 1: (5.0, None), 2: (1.0, 1500.0)}
    after = {0: (10.5, 2200.0), 1: (5.1, None), 2: (1.0, 1500.0)}
    assert bench.HostProbe.cpu_state(before, after, [0, 1], 2.0) == {"steal": 0.15, "mhz": 2200}
    assert bench.HostProbe.cpu_state(before, after, [1], 2.0) == {"steal": 0.05}  # no clock listed
    assert bench.HostProbe.cpu_state(before, after, [7], 2.0) == {}
    assert bench.HostProbe.cpu_state(before, after, [], 2.0) == {}


def test_host_probe_sees_a_busy_thread_and_its_cpu() -> None:
    """HostProbe on this process: a thread that spins for 0.3 CPU-s shows as CPU seconds of the
    probed (``front``) process and as a busy thread on one of this process's CPUs; the ``core``
    (the busiest descendant) is none, or a child an earlier test left (a resource tracker) that
    used less."""
    import os
    import threading
    import time

    bench = _bench_module()
    probe = bench.HostProbe()
    before = probe.snapshot()
    assert os.getpid() in before and before[os.getpid()]

    spun, release = threading.Event(), threading.Event()

    def spin() -> None:  # 0.3 s of this thread's CPU time, however busy the machine
        while time.thread_time() < 0.3:
            pass
        spun.set()
        release.wait()  # alive (a finished thread leaves /proc/PID/task) and off the GIL while read

    t0 = time.perf_counter()
    th = threading.Thread(target=spin)
    th.start()
    assert spun.wait(60)
    snap = probe.snapshot()
    release.set()
    th.join()
    got = bench.HostProbe.delta(before, snap, time.perf_counter() - t0)
    assert got["front"]["pid"] == os.getpid() and got["front"]["cpu_s"] >= 0.1, got
    assert got["front"]["busy_cpus"] and set(got["front"]["busy_cpus"]) <= os.sched_getaffinity(0), got
    # no busy child: none, or a helper another test left behind (a resource tracker) that idled
    assert got["core"] is None or got["core"]["cpu_s"] < got["front"]["cpu_s"], got


def test_throughput_bench_budget_stops_rounds_in_time(tmp_path: Path, monkeypatch, capsys) -> None:
    """``--budget-s``: rounds stop before one would end past the budget (engine starts count), the
    rows say how many ran; fewer than 3 in the budget is an error naming it."""
    import json

    bench = _bench_module()
    clock = [0.0]
    _stand_in_bench(bench, monkeypatch, clock=clock, start_s=10.0, kernel={"off": 500.0, "on": 500.0})
    out = tmp_path / "rows.json"
    # two engines (off, on): start 20 s, calibration 3 s, a round 2 x (3 x 1 s + 2 x 2 s) = 14 s
    argv = ["--models", "dense", "--out", str(tmp_path), "--no-aa", "--pairs", "50", "--min-seconds", "3",
            "--json", str(out)]
    assert bench.main([*argv, "--budget-s", "100"]) == 0
    text = capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert {r["rounds"] for r in rows} == {5} and clock[0] <= 100, (clock, text)  # 23 + 5 x 14 = 93
    assert "dense: 5 rounds in the 100-s budget (a round takes up to 14 s)" in text
    assert rows[0]["samples"] == 5 * 3
    # fewer rounds asked than fit: the rounds asked, no budget line
    clock[0] = 0.0
    assert bench.main([*argv[:-4], "--pairs", "3", "--json", str(out), "--budget-s", "100"]) == 0
    assert {r["rounds"] for r in json.loads(out.read_text())} == {3}
    assert "budget" not in capsys.readouterr().out
    # 60 s: after round 1 (23 + 14 = 37 s) only one more fits: stopped there, not after round 2
    clock[0] = 0.0
    with pytest.raises(SystemExit, match=r"dense: only 2 round\(s\) fit in --budget-s 60 \(one takes up to 14 s "
                                         r"after 23 s of start-up\); at least 3 are needed"):
        bench.main([*argv, "--budget-s", "60"])
    assert clock[0] == 37.0
    clock[0] = 0.0
    with pytest.raises(SystemExit, match=r"dense: start-up took 23 s, the whole --budget-s 20: no round fits"):
        bench.main([*argv, "--budget-s", "20"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        bench.main([*argv, "--budget-s", "0"])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("--budget-s 0; accepted: a number of seconds > 0")
    with pytest.raises(SystemExit):
        bench.main([*argv, "--min-seconds", "0"])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("--min-seconds 0; accepted: a number of seconds > 0")


def test_throughput_bench_together_starts_every_model_at_once(tmp_path: Path, monkeypatch, capsys) -> None:
    """``--together``: every model's engines start before any batch runs (one start-up), then each
    model's calibration and profiles, then rounds model by model (gptoss's round 1, dense's round
    1, ...) within one ``--budget-s``; a verdict line per model before the whole run's, and a
    smaller KV cache per engine unless ``QDQ_BENCH_KV_BYTES`` is set."""
    import json
    import os

    bench = _bench_module()
    calls: list[tuple[str, str, int]] = []
    clock = [0.0]
    started: list[str] = []
    _stand_in_bench(bench, monkeypatch, calls=calls, clock=clock, start_s=10.0,
                    speed={"off": 1.0, "on": 1.0}, kernel={"off": 500.0, "on": 500.0})
    stand_in = bench.Engine

    def starting(model, llm_kwargs, name, log, qdq_config=None):
        started.append(f"{log.name} after {len(calls)} batches")
        return stand_in(model, llm_kwargs, name, log, qdq_config)

    monkeypatch.setattr(bench, "Engine", starting)
    monkeypatch.setenv("QDQ_BENCH_KV_BYTES", "1")  # restored after the test: main sets it
    monkeypatch.delenv("QDQ_BENCH_KV_BYTES")
    out = tmp_path / "rows.json"
    argv = ["--models", "gptoss,dense", "--together", "--out", str(tmp_path), "--no-aa", "--pairs", "50",
            "--min-seconds", "3", "--json", str(out)]
    # four engines (10 s each here), two calibrations of 3 s, rounds of 2 x 14 s
    assert bench.main([*argv, "--budget-s", "165"]) == 0
    text = capsys.readouterr().out
    assert started == [f"bench-{m}-qdq-{e}.log after 0 batches" for m in ("gptoss", "dense") for e in ("off", "on")]
    assert os.environ["QDQ_BENCH_KV_BYTES"] == str(bench.TOGETHER_KV_BYTES)
    rows = json.loads(out.read_text())
    assert {(r["model"], r["rounds"]) for r in rows} == {("gptoss", 4), ("dense", 4)}, text  # 46 + 4 x 28 = 158; a 5th ends at 186
    assert "gptoss+dense: 4 rounds in the 165-s budget (a round takes up to 28 s)" in text
    lines = [ln for ln in text.splitlines() if (" round " in ln or "turns per round" in ln or "profiler" in ln)
             and "budget" not in ln]
    assert [ln.split()[0] for ln in lines] == ["gptoss"] * 4 + ["dense"] * 4 + ["gptoss", "gptoss", "dense",
                                                                                 "dense"] * 4
    assert [ln for ln in text.splitlines() if ln][-3:] == ["verdict gptoss: PASS: 2 rows >= 0.97",
                                              "verdict dense: PASS: 2 rows >= 0.97",
                                              "verdict: PASS: 4 rows >= 0.97"]
    # one model below the target (dense's QDQ engine adds 1 ms of device time a decode step): its
    # line says so, the other's passes, the whole run fails
    clock[0] = 0.0

    def both(model, llm_kwargs, name, log, qdq_config=None):
        e = stand_in(model, llm_kwargs, name, log, qdq_config)
        prof, f = e.profile, 3.0 if log.name == "bench-dense-qdq-on.log" else 1.0

        def profile(shape):
            got = prof(shape)
            return {**got, "us_per_step": got["us_per_step"] * f, "prefill_us": got["prefill_us"] * f}

        e.profile = profile
        return e

    monkeypatch.setattr(bench, "Engine", both)
    assert bench.main([*argv, "--pairs", "3"]) == 1
    last = [ln for ln in capsys.readouterr().out.splitlines() if ln][-3:]
    assert last[0] == "verdict gptoss: PASS: 2 rows >= 0.97"
    assert last[1:] == ["verdict dense: FAIL: below 0.97: dense act decode 0.952 (bound)",
                        "verdict: FAIL: below 0.97: dense act decode 0.952 (bound)"], last
    # the budget's errors name the run
    clock[0] = 0.0
    monkeypatch.setattr(bench, "Engine", stand_in)
    with pytest.raises(SystemExit, match=r"gptoss\+dense: only 2 round\(s\) fit in --budget-s 110"):
        bench.main([*argv, "--budget-s", "110"])
    # without --together: one model after another, each its own start-up and budget (as before)
    started.clear()
    monkeypatch.setattr(bench, "Engine", starting)
    clock[0] = 0.0
    calls.clear()
    assert bench.main([a for a in argv if a != "--together"] + ["--pairs", "3"]) == 0
    n = len(calls)  # dense's engines start after every batch of gptoss's
    assert started[:2] == [f"bench-gptoss-qdq-{e}.log after 0 batches" for e in ("off", "on")]
    assert [x.split(" after ")[0] for x in started[2:]] == ["bench-dense-qdq-off.log", "bench-dense-qdq-on.log"]
    assert 0 < int(started[2].split()[-2]) < n
    capsys.readouterr()


def _repro_module():
    return _script_module("gpu_compile_repro")


def test_compile_repro_report_names_the_driver_whose_compiled_run_moved() -> None:
    """scripts/gpu_compile_repro.py's verdict, on logprobs made up here: a QDQ-off driver whose
    compiled run (or only its compiled-again run) sits 1 nat from its eager run is named, with the
    compiled-vs-compiled-again figure that tells a compile-time choice from a run-time fault;
    drivers within the threshold are not, and the QDQ-on neighbour (compiled 0.15 from eager, as
    its QDQ makes it on the H200) is reported, never judged."""
    repro = _repro_module()
    base = [[-1.0, -2.0, -3.0], [-4.0, -5.0]]
    near = [[x + 0.01 for x in p] for p in base]
    far = [[x + 1.0 for x in p] for p in base]
    qdq_on = [[x + 0.15 for x in p] for p in base]
    results = {"off0": {"compiled": near, "compiled-again": near, "eager": base},
               "off1": {"compiled": far, "compiled-again": far, "eager": base},
               "off2": {"compiled": near, "compiled-again": far, "eager": base},
               "on": {"compiled": qdq_on, "compiled-again": qdq_on, "eager": base}}
    lines, anomalies = repro.report(results, threshold=0.1)
    assert anomalies == ["off1", "off2"]
    off1 = next(ln for ln in lines if ln.startswith("off1:"))
    assert "compiled vs eager mean 1 max 1" in off1 and "compiled vs compiled-again mean 0 " in off1 and "ANOMALY" in off1
    off2 = next(ln for ln in lines if ln.startswith("off2:"))
    assert "compiled vs compiled-again mean 0.99 " in off2 and "ANOMALY" in off2
    on = next(ln for ln in lines if ln.startswith("on:"))
    assert "compiled vs eager mean 0.15 " in on and "ANOMALY" not in on and "not judged" in on
    assert not any("ANOMALY" in ln for ln in lines if ln.startswith("off0"))
    # across the QDQ-off drivers, run by run (the QDQ-on neighbour differs by its QDQ: left out)
    assert "compiled: off0 vs off1 mean 0.99 max 0.99" in lines
    assert not any(" on " in ln for ln in lines if not ln.startswith("on:"))
    # a driver without one of the runs is an error naming it, not a silent pass
    with pytest.raises(ValueError, match="'off0' reported no \\['eager'\\]"):
        repro.report({"off0": {"compiled": base, "compiled-again": base}}, 0.1)


@pytest.mark.parametrize("argv, msg", [(["--caches", "both"], "--caches 'both'; accepted: shared, separate"),
                                       (["--drivers", "9"], "--drivers 9; accepted: 1 to 6"),
                                       (["--model", "qwen"], "--model 'qwen'; accepted: gptoss, llama"),
                                       (["--inductor", "combo_kernels"], "--inductor 'combo_kernels': expected KEY=VALUE with VALUE a JSON "
                                        "number, string or true/false (e.g. combo_kernels=false)"),
                                       (["--inductor", "combo_kernels=nope"], "(e.g. combo_kernels=false)")])
def test_compile_repro_bad_arguments(tmp_path: Path, capsys, argv: list[str], msg: str) -> None:
    repro = _repro_module()
    (tmp_path / "out").mkdir()
    with pytest.raises(SystemExit) as e:
        repro.main(["--out", str(tmp_path / "out"), *argv])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(msg)


def test_compile_repro_refuses_a_used_out_directory(tmp_path: Path, capsys) -> None:
    """A second run into the same --out would load the first one's compile caches and measure a
    warm start instead of a compile: refused, naming the directory."""
    repro = _repro_module()
    (tmp_path / "off0").mkdir()
    with pytest.raises(SystemExit) as e:
        repro.main(["--out", str(tmp_path)])
    assert e.value.code == 2
    assert f"--out {str(tmp_path)!r} is not empty" in capsys.readouterr().err


_CORE_STEPS_DRIVER = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("bench", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
bench.pin_from_env()  # as the bench's worker does, before vLLM is imported
from vllm import LLM
from vllm_qdq.study.tiny import build_tiny_llama
model = build_tiny_llama(sys.argv[2])
llm = LLM(model=str(model), dtype="float32", max_model_len=64, enforce_eager=True, seed=0,
          enable_prefix_caching=False, worker_extension_cls=bench.STEP_TIMER)
clock = llm.collective_rpc("qdq_bench_time_steps")[0]
steps = bench.CoreSteps(llm)
prompts = [{"prompt_token_ids": [5 + k, 10, 20, 30, 40, 50, 60, 70]} for k in range(4)]
got = bench.timed_generate(llm, steps, prompts, bench._params(12), reps=2, probe=bench.HostProbe(),
                           device_steps=True)
prof = bench.profile_batch(llm, prompts, 8)
print("RESULT " + json.dumps({**got, "clock": clock, "prof": prof}), flush=True)
"""


@pytest.mark.slow
def test_core_steps_clock_the_real_engine(tmp_path: Path) -> None:
    """The bench's core-step clock on the real vLLM CPU engine, its engine core in its own
    process as with vLLM's defaults: a batch of 4 prompts x 12 greedy tokens returns tokens in
    at least 12 core steps (the prefill's, then 11 decode steps) and at most 12 + 3 (a prompt
    that reaches the core after the first step is scheduled has its prefill in a later step),
    so two batches give 2 x 11 to 2 x 14 intervals (none across the two); the median step is
    positive and the steps fit in the wall time. Pinned to one CPU (``QDQ_BENCH_CPUS``, as
    ``--cpus`` sets it for the workers), the host probe finds the engine core as a separate
    process that used CPU time, every busy thread of both processes on that CPU, and the share
    of that CPU's time stolen meanwhile."""
    import json
    import os
    import subprocess
    import sys

    cpu = str(min(os.sched_getaffinity(0)))
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="1",
               VLLM_CACHE_ROOT=str(tmp_path / "cache"), VLLM_QDQ="0", QDQ_BENCH_CPUS=cpu,
               VLLM_CPU_OMP_THREADS_BIND=cpu,  # the CPU engine binds its OpenMP threads itself
               PYTHONPATH=os.pathsep.join([str(REPO / "overlay"), str(REPO), str(REPO / "scripts"), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", _CORE_STEPS_DRIVER, str(REPO / "scripts" / "bench_plugin_throughput.py"),
                        str(tmp_path / "llama")], env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert p.returncode == 0 and lines, (p.stdout + p.stderr)[-4000:]
    got = json.loads(lines[-1][len("RESULT "):])
    clock, prof = got.pop("clock"), got.pop("prof")
    assert got["generated"] == 2 * 4 * 12 and 2 * 11 <= got["intervals"] <= 2 * 14, got
    assert 0 < got["step_s"] <= got["step_p90_s"] and got["intervals"] * got["step_mean_s"] < got["seconds"], got
    host = got["host"]
    assert host["core"] and host["core"]["pid"] != host["front"]["pid"] and host["core"]["cpu_s"] > 0, host
    assert set(host["core"]["busy_cpus"]) | set(host["front"]["busy_cpus"]) <= {int(cpu)}, host
    assert host["core"]["busy_cpus"], host
    assert 0 <= host["core"]["steal"] <= 1, host  # the share of its CPU's time a hypervisor took
    # the step timer, in the engine core: a host-clock span per step, at least one per interval
    assert clock == "host clock" and got["device_steps"] >= got["intervals"], (clock, got)
    # the runner's calls lie inside the batches: their sum within the wall time, their median within a step's
    assert 0 < got["device_step_mean_s"] * got["device_steps"] <= got["seconds"], got
    assert 0 < got["device_step_s"] <= 1.1 * got["step_s"], got
    # the profiler in the engine core: 8 decode steps between a 1-token and a 9-token batch (9 at
    # most, 7 at least: a prompt that reaches the core a step late has its prefill in a step of
    # its own in one batch and beside the others' decode in the other), no device records on a CPU engine
    assert 7 <= prof["steps"] <= 9 and prof["device_us"] == 0 and prof["us_per_step"] == 0, prof
    assert prof["launches_per_step"] == 0 and prof["dropped"] == 0, prof  # no CUDA launches on a CPU engine
    assert _bench_module()._profile_text(prof) == "none (no device records: a CPU engine, or no device tracing)"


STACK_DUMPS = REPO / "scripts" / "stack_dumps"


def _python_with_dumps(tmp_path: Path, spec: str, code: str, extra_path: Path | None = None):
    import os
    import subprocess
    import sys

    path = os.pathsep.join(str(p) for p in (STACK_DUMPS, extra_path) if p)
    env = dict(os.environ, QDQ_STACK_DUMPS=spec, PYTHONPATH=path)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)


def test_stack_dumps_write_each_threads_stack_on_schedule(tmp_path: Path) -> None:
    """``SMOKE_STACK_DUMPS``' hook (scripts/stack_dumps/sitecustomize.py): a process that lives past
    the scheduled seconds writes every thread's stack to stderr, headed with its pid and the time,
    one dump per time it lived to; the stack shows where it waits (here a named function sleeping);
    its stdout is untouched. A site's own sitecustomize, later on the path, still runs."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['SITE_RAN'] = '1'\n")
    code = ("import os, time\n"
            "def waiting_here():\n    time.sleep(1.6)\n"
            "waiting_here(); print('out', os.environ.get('SITE_RAN'))")
    r = _python_with_dumps(tmp_path, "0.4,0.8,30", code, extra_path=site)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "out 1\n"
    heads = [ln for ln in r.stderr.splitlines() if ln.startswith("=== qdq stack dump: pid ")]
    assert [h.split(" at ")[-1] for h in heads] == ["0.4 s ===", "0.8 s ==="], r.stderr  # not 30: it ended
    assert "in waiting_here" in r.stderr and "qdq-stack-dumps" not in r.stdout


def test_stack_dumps_once_with_two_copies_and_a_site_file_compiled_as_its_own(tmp_path: Path) -> None:
    """Two copies of the hook on the path (a link to it, as a second checkout would put there) run
    one schedule, not one each nor one per recursion, and the site's own sitecustomize after them
    runs once, compiled without the hook's compiler flags (an annotation naming nothing fails there
    as it would alone); a child made by fork dumps on its own schedule."""
    link = tmp_path / "again"
    link.symlink_to(STACK_DUMPS, target_is_directory=True)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['SITE_RAN'] = os.environ.get('SITE_RAN', '') + 'x'\n"
                                           "try:\n    y: undefined_name = 1\n    os.environ['ANN'] = 'lazy'\n"
                                           "except NameError:\n    os.environ['ANN'] = 'eager'\n")
    code = ("import os, threading, time\n"
            "print(os.environ.get('SITE_RAN'), os.environ.get('ANN'), threading.active_count(), flush=True)\n"
            "pid = os.fork()\n"
            "if pid == 0:\n    time.sleep(0.8); os._exit(0)\n"
            "os.waitpid(pid, 0)")
    import os
    import subprocess
    import sys

    env = dict(os.environ, QDQ_STACK_DUMPS="0.3,5", PYTHONPATH=os.pathsep.join(map(str, (STACK_DUMPS, link, site))))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "x eager 2\n", (r.stdout, r.stderr)  # the site file once, its annotation evaluated; one dump thread
    pids = [ln.split()[5] for ln in r.stderr.splitlines() if ln.startswith("=== qdq stack dump: pid ")]
    assert len(pids) == 2 and len(set(pids)) == 2, r.stderr  # parent and forked child, 0.3 s each


@pytest.mark.parametrize("spec", ["0", "a", "60,-1"])
def test_stack_dumps_bad_schedule_is_said(tmp_path: Path, spec: str) -> None:
    """A schedule that is not seconds > 0 is said on stderr, naming it, and schedules nothing; the
    process runs on (gpu-smoke.sh refuses such a value at start-up, tested below)."""
    r = _python_with_dumps(tmp_path, spec, "print('ran')")
    assert r.returncode == 0 and r.stdout == "ran\n"
    assert f"qdq stack dumps: QDQ_STACK_DUMPS={spec!r}; accepted: seconds > 0" in r.stderr
    assert "=== qdq stack dump" not in r.stderr


@pytest.mark.parametrize("spec", ["0", "60,0", "a", "60,", "1e3"])
def test_gpu_smoke_refuses_a_bad_stack_dump_schedule(tmp_path: Path, spec: str) -> None:
    """``SMOKE_STACK_DUMPS`` is checked at start-up, before anything runs: exit 2 naming the value
    and what is accepted, as the last line; a good one passes that check (the unknown step after
    it is the next error)."""
    import os
    import subprocess

    env = dict(os.environ, SMOKE_STACK_DUMPS=spec, SMOKE_OUT=str(tmp_path / "out"))
    r = subprocess.run(["bash", str(SMOKE), "no-such-step"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (f"gpu-smoke: SMOKE_STACK_DUMPS='{spec}'; accepted: seconds > 0 after "
                                                 "each process starts, comma-separated (e.g. 60,90,120)")
    env["SMOKE_STACK_DUMPS"] = "60,90.5,120,0.5,.25"
    r = subprocess.run(["bash", str(SMOKE), "no-such-step"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown step 'no-such-step'" in r.stderr


def test_gpu_smoke_step_passes_the_schedule_to_its_processes(tmp_path: Path) -> None:
    """gpu-smoke.sh's ``step`` function (taken out of the script and run with a stand-in command,
    the suite itself needing a GPU): with ``SMOKE_STACK_DUMPS`` set, the step's Python process (and
    every process it starts, which inherit both variables) writes its scheduled dumps into the
    step's log, and the step's result line is written as ever; unset, the log holds none."""
    import subprocess
    import sys

    text = SMOKE.read_text()
    func = text[text.index("step() {"):]
    func = func[:func.index("\n}\n") + 3]
    cmd = "import os, time; time.sleep(1.0); print('done', os.environ['PYTHONPATH'].split(':')[-1] == '/kept')"
    for dumps, expect in (("0.3", 1), ("", 0)):
        out = tmp_path / f"out{expect}"
        out.mkdir()
        script = (f"set -uo pipefail\ncd {REPO}\nexport PYTHONPATH=/kept\n{func}\nOUT={out}; CACHE_BASE={out}/cache; JOBS=2; fail=0\n"
                  f"DUMPS='{dumps}'\nstep demo {sys.executable} -c \"{cmd}\"\n")
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        log = (out / "demo.log").read_text()
        assert log.count("=== qdq stack dump: pid ") == expect, log
        assert "done True" in log and (out / "demo.result").read_text().startswith("PASS ")  # PYTHONPATH kept


@pytest.mark.parametrize("value", ["2", "yes", ""])
def test_gpu_smoke_refuses_a_bad_jit_warm_setting(tmp_path: Path, value: str) -> None:
    """``SMOKE_JIT_WARM`` is 0 or 1, checked at start-up: exit 2 naming the value as the last line."""
    import os
    import subprocess

    env = dict(os.environ, SMOKE_JIT_WARM=value, SMOKE_OUT=str(tmp_path / "out"))
    r = subprocess.run(["bash", str(SMOKE), "summary"], env=env, capture_output=True, text=True, timeout=60)
    if value == "":  # empty is unset: the default (1)
        assert r.returncode in (0, 1) and "SMOKE_JIT_WARM" not in r.stderr
        return
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"gpu-smoke: SMOKE_JIT_WARM='{value}'; accepted: 1 ")


@pytest.mark.parametrize("value", ["2", "full"])
def test_gpu_smoke_refuses_a_bad_bench_full_setting(tmp_path: Path, value: str) -> None:
    """``SMOKE_BENCH_FULL`` is 0 or 1, checked at start-up: exit 2 naming the value as the last line."""
    import os
    import subprocess

    env = dict(os.environ, SMOKE_BENCH_FULL=value, SMOKE_OUT=str(tmp_path / "out"))
    r = subprocess.run(["bash", str(SMOKE), "summary"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"gpu-smoke: SMOKE_BENCH_FULL='{value}'; accepted: 0 ")


@pytest.mark.parametrize("value", ["0", "many", "-4"])
def test_gpu_smoke_refuses_a_bad_xdist_setting(tmp_path: Path, value: str) -> None:
    """``SMOKE_XDIST`` (the kernels step's xdist workers) is a positive whole number, checked at
    start-up: exit 2 naming the value as the last line."""
    import os
    import subprocess

    env = dict(os.environ, SMOKE_XDIST=value, SMOKE_OUT=str(tmp_path / "out"))
    r = subprocess.run(["bash", str(SMOKE), "summary"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"gpu-smoke: SMOKE_XDIST='{value}'; accepted: a positive ")


@pytest.mark.parametrize(("name", "value"), [("SMOKE_BENCH_ROUNDS", "2"), ("SMOKE_BENCH_ROUNDS", "many"),
                                           ("SMOKE_BENCH_BUDGET", "0"), ("SMOKE_BENCH_BUDGET", "7.5"),
                                           ("SMOKE_BENCH_MIN_S", "0"), ("SMOKE_BENCH_MIN_S", "0.0"),
                                           ("SMOKE_BENCH_MIN_S", "-3"), ("SMOKE_BENCH_MIN_S", "3s"),
                                           ("SMOKE_BENCH_MIN_S", "."), ("OMP_NUM_THREADS", "0"),
                                           ("OMP_NUM_THREADS", "all")])
def test_gpu_smoke_refuses_a_bad_bench_or_thread_setting(tmp_path: Path, name: str, value: str) -> None:
    """The throughput bench's settings (rounds >= 3, a budget of whole seconds > 0, seconds > 0 a
    round) and a user's ``OMP_NUM_THREADS`` (the kernels step's threads) are checked at start-up:
    exit 2 naming the value as the last line; good ones pass."""
    import os
    import subprocess

    env = dict(os.environ, SMOKE_OUT=str(tmp_path / "out"), **{name: value})
    r = subprocess.run(["bash", str(SMOKE), "summary"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"gpu-smoke: {name}='{value}'; accepted: "), r.stderr
    for min_s in ("2.5", "4", ".5", "3."):
        good = dict(os.environ, SMOKE_OUT=str(tmp_path / "out"), SMOKE_BENCH_ROUNDS="3", SMOKE_BENCH_BUDGET="300",
                    SMOKE_BENCH_MIN_S=min_s, OMP_NUM_THREADS="2")
        r = subprocess.run(["bash", str(SMOKE), "summary"], env=good, capture_output=True, text=True, timeout=60)
        assert "accepted" not in r.stderr, (min_s, r.stderr)


def test_gpu_smoke_bench_steps_take_their_smoke_arguments() -> None:
    """The suite's kernel benches: by default ``bench_qdq_triton.py --no-sweeps`` and
    ``bench_sage3.py --dims 128 --no-ws-probe``, whole with SMOKE_BENCH_FULL=1; both scripts accept those
    arguments (they parse them before they look for a GPU: exit 2 "needs a CUDA GPU" here, not an
    argparse error)."""
    import subprocess
    import sys

    text = SMOKE.read_text()
    case = text[text.index("    bench-qdq)"):text.index("    bench-plugin-gptoss|bench-plugin-dense|bench-plugin)")]
    assert 'then step bench-qdq "$PY" scripts/bench_qdq_triton.py\n' in case
    assert 'else step bench-qdq "$PY" scripts/bench_qdq_triton.py --no-sweeps; fi' in case
    assert 'then step bench-sage3 "$PY" scripts/bench_sage3.py --no-check\n' in case
    assert 'else step bench-sage3 "$PY" scripts/bench_sage3.py --no-check --dims 128 --no-ws-probe; fi' in case
    for argv in (["scripts/bench_qdq_triton.py", "--no-sweeps"],
                 ["scripts/bench_sage3.py", "--no-check", "--dims", "128", "--no-ws-probe"]):
        r = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert "unrecognized arguments" not in r.stderr and "usage:" not in r.stderr, r.stderr
        assert r.returncode == 2 and "CUDA" in r.stderr + r.stdout, (r.returncode, r.stdout, r.stderr)


def test_gpu_smoke_bench_plugin_step_writes_a_result_per_model(tmp_path: Path) -> None:
    """gpu-smoke.sh's ``bench-plugin`` step (its ``run_step`` and ``step`` functions taken out of
    the script, the bench itself standing in: it needs a GPU): it runs the throughput bench once
    with ``--together`` on both models, and writes each model's result line (the summary's two
    rows) from that model's verdict line; a model whose line is missing fails, naming the run's
    last line."""
    import subprocess

    text = SMOKE.read_text()
    funcs = ""
    for name in ("step() {", "run_step() {"):
        f = text[text.index(name):]
        funcs += f[:f.index("\n}\n") + 3]
    cases = {
        "one below": ("verdict gptoss: PASS: 3 rows >= 0.97\nverdict dense: FAIL: below 0.97: dense act decode "
                      "0.950 (bound)\n\nverdict: FAIL: below 0.97: dense act decode 0.950 (bound)", 1),
        "no rounds": ("gptoss+dense: only 2 round(s) fit in --budget-s 300 (one takes up to 60 s after 200 s of "
                      "start-up); at least 3 are needed", 1),
        "both pass": ("verdict gptoss: PASS: 3 rows >= 0.97\nverdict dense: PASS: 3 rows >= 0.97\n\n"
                      "verdict: PASS: 6 rows >= 0.97", 0),
    }
    for label, (said, rc) in cases.items():
        out = tmp_path / label.replace(" ", "-")
        out.mkdir()
        fake = out / "fake-python"
        fake.write_text(f'#!/bin/sh\necho "$@" > {out}/argv\nprintf "%s\\n" "{said}"\nexit {rc}\n')
        fake.chmod(0o755)
        script = (f"set -uo pipefail\ncd {REPO}\n{funcs}\nOUT={out}; CACHE_BASE={out}/cache; JOBS=2; fail=0\n"
                  f"PY={fake}; SMOKE_MODELS={out}/models; DUMPS=''\nrun_step bench-plugin\necho fail=$fail\n")
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        argv = (out / "argv").read_text().split()
        assert argv[:4] == ["scripts/bench_plugin_throughput.py", "--models", "gptoss,dense", "--together"], argv
        assert argv[argv.index("--min-seconds") + 1] == "4" and argv[argv.index("--budget-s") + 1] == "450"
        got = {m: (out / f"bench-plugin-{m}.result").read_text().strip() for m in ("gptoss", "dense")}
        assert r.stdout.strip().splitlines()[-1] == f"fail={1 if rc else 0}", r.stdout
        assert r.stdout.strip().splitlines()[-2] == f"gpu-smoke: bench-plugin-dense {got['dense']}"
        if label == "one below":
            assert got["gptoss"].startswith("PASS ") and got["gptoss"].endswith(
                " s gptoss: PASS: 3 rows >= 0.97 (step bench-plugin: both models' engines up at once)"), got
            assert got["dense"].startswith("FAIL ") and got["dense"].endswith(
                " s dense: FAIL: below 0.97: dense act decode 0.950 (bound) (step bench-plugin)"), got
        elif label == "no rounds":
            for m in ("gptoss", "dense"):
                assert got[m].startswith("FAIL ") and f"no verdict line for {m}: rc=1: gptoss+dense: only 2 round(s)" \
                    in got[m], got
        else:
            assert all(v.startswith("PASS ") for v in got.values()), got


def test_gpu_smoke_kernels_step_threads(tmp_path: Path) -> None:
    """gpu-smoke.sh's ``kernels`` step (its functions taken out of the script, pytest standing in:
    the tests need a GPU) gives each process the host's cores over its pytest-xdist workers as CPU
    threads (``OMP_NUM_THREADS``, at least 1), all of them without xdist, and a value the user set
    as it is."""
    import os
    import subprocess

    text = SMOKE.read_text()
    funcs = ""
    for name in ("step() {", "kernel_threads() {", "run_step() {"):
        f = text[text.index(name):]
        funcs += f[:f.index("\n}\n") + 3]
    cores = int(subprocess.check_output(["nproc"], text=True))
    for workers, preset, want in [("8", None, max(1, cores // 8)), ("1", None, cores), (None, None, cores),
                                  ("8", "3", 3)]:
        out = tmp_path / f"{workers}-{preset}"
        out.mkdir()
        fake = out / "fake-python"
        fake.write_text(f'#!/bin/sh\n[ "$1" = -c ] && exit 0\necho "$OMP_NUM_THREADS" > {out}/threads\n'
                        f'echo "1 passed in 0.01s"\n')
        fake.chmod(0o755)
        xdist = f"xdist=(-n {workers}); XDIST={workers}" if workers else "xdist=(); XDIST=8"
        script = (f"set -uo pipefail\ncd {REPO}\n{funcs}\nOUT={out}; CACHE_BASE={out}/cache; JOBS=1; fail=0\n"
                  f"PY={fake}; DUMPS=''; pytest_args=(-m gpu); {xdist}\nrun_step kernels\necho fail=$fail\n")
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        if preset:
            env["OMP_NUM_THREADS"] = preset
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0 and r.stdout.strip().endswith("fail=0"), (r.stdout, r.stderr)
        assert (out / "threads").read_text().strip() == str(want), (workers, preset)


@pytest.mark.parametrize("workers", [None, "2"])
def test_test_times_are_written_as_each_test_ends(tmp_path: Path, workers: str | None) -> None:
    """``QDQ_TEST_TIMES`` (tests/support/timings.py, what the kernels step sets): every test's
    setup and call phase, one line each, written once also under pytest-xdist, with its outcome;
    unset, nothing is written."""
    import os
    import subprocess
    import sys

    (tmp_path / "test_demo.py").write_text(
        "import time\nimport pytest\n\n@pytest.fixture\ndef slow():\n    time.sleep(0.3)\n\n"
        "def test_fast():\n    pass\n\ndef test_slow(slow):\n    time.sleep(0.2)\n\n"
        "def test_fails():\n    assert False\n")
    times = tmp_path / "times.txt"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.support.timings",
            "--rootdir", str(tmp_path), str(tmp_path / "test_demo.py"), *(["-n", workers] if workers else [])]
    env = dict(os.environ, PYTHONPATH=str(REPO), QDQ_TEST_TIMES=str(times))
    r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "1 failed, 2 passed" in r.stdout, r.stdout + r.stderr
    lines = sorted(ln.split(" ", 1)[1] for ln in times.read_text().splitlines())
    assert lines == sorted([f"setup passed test_demo.py::{n}" for n in ("test_fast", "test_slow", "test_fails")]
                           + ["call passed test_demo.py::test_fast", "call passed test_demo.py::test_slow",
                              "call failed test_demo.py::test_fails"]), lines
    secs = {ln.split()[1] + " " + ln.split()[3]: float(ln.split()[0]) for ln in times.read_text().splitlines()}
    assert secs["setup test_demo.py::test_slow"] >= 0.3 and secs["call test_demo.py::test_slow"] >= 0.2
    env.pop("QDQ_TEST_TIMES")
    times.unlink()
    subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert not times.exists()


def test_gpu_smoke_jit_warm_says_what_it_did(tmp_path: Path) -> None:
    """gpu-smoke.sh's ``jit_warm`` (taken out of the script, running the real scripts/gpu_jit_warm.py):
    on a host without CUDA the script builds nothing and says so, and the suite prints that line with
    the log's path; with SMOKE_JIT_WARM=0 it runs nothing. Either way it marks itself done (once a run)."""
    import subprocess
    import sys

    text = SMOKE.read_text()
    func = text[text.index("jit_warm() {"):]
    func = func[:func.index("\n}\n") + 3]
    for warm in ("1", "0"):
        out = tmp_path / f"out{warm}"
        out.mkdir()
        script = (f"set -uo pipefail\ncd {REPO}\n{func}\nOUT={out}; PY={sys.executable}; JIT_WARM={warm}\n"
                  "jit_warm\necho done=${jit_done:-}\n")
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[-1] == "done=1"
        if warm == "1":
            assert "gpu-smoke: jit-warm: no CUDA device: nothing to build (" in r.stdout, r.stdout
            assert f"log {out}/jit-warm.log)" in r.stdout
        else:
            assert "jit-warm" not in r.stdout and not (out / "jit-warm.log").exists()



def test_gpu_jit_warm_marker(tmp_path: Path) -> None:
    """scripts/gpu_jit_warm.py ``--marker``: a marker naming a library that exists, written under
    the installed FlashInfer's version, ends the run at once with a line naming them, before torch
    is imported (a later call on the same machine); one of another version, or naming a missing
    library (a fresh machine's stale file), runs the real check (here: no CUDA device), and no
    marker is written when nothing was built or found."""
    import subprocess
    import sys

    script = REPO / "scripts" / "gpu_jit_warm.py"
    lib = tmp_path / "sampling.so"
    lib.write_bytes(b"\x7fELF")
    marker = tmp_path / "jit-warm.ready"
    probe = ("import runpy, sys; sys.argv = [sys.argv[1], '--marker', sys.argv[2]]\n"
             "import importlib.metadata as m; m.version = lambda d: '9.9.post1' if d == 'flashinfer-python' "
             "else (_ for _ in ()).throw(m.PackageNotFoundError(d))\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as e:\n    print('rc', e.code, 'torch' in sys.modules)\n")
    marker.write_text(f"{lib}\n9.9.post1\n")
    r = subprocess.run([sys.executable, "-c", probe, str(script), str(marker)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"jit-warm: FlashInfer 9.9.post1 sampling kernels found built ({lib}; marker "
                                     f"{marker}, no imports)", "rc 0 False"]
    marker.write_text(f"{lib}\n9.8\n")  # written under another FlashInfer: the real check runs
    r = subprocess.run([sys.executable, "-c", probe, str(script), str(marker)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["jit-warm: no CUDA device: nothing to build", "rc 0 True"]
    lib.unlink()  # the marker names a library that is gone: the real check runs
    r = subprocess.run([sys.executable, str(script), "--marker", str(marker)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "jit-warm: no CUDA device: nothing to build"
    assert marker.read_text() == f"{lib}\n9.8\n"  # untouched: nothing was built or found


_MEET = '''
import os, time, pytest
from pathlib import Path

@pytest.mark.parametrize("k", ["alpha", "beta"])
def test_meet(k):
    d = Path(os.environ["SBS_DIR"])
    (d / k).write_text("here")
    other = {"alpha": "beta", "beta": "alpha"}[k]
    for _ in range(int(os.environ["SBS_TICKS"])):  # waits for the other selection's process: passes only side by side
        if (d / other).exists():
            break
        time.sleep(0.05)
    assert (d / other).exists(), "ran alone"
    assert k != os.environ.get("SBS_FAIL")
'''


def test_pytest_side_by_side_runs_selections_at_once(tmp_path: Path) -> None:
    """``scripts/pytest-side-by-side.sh`` (the ``kv-cache`` step's runner with SMOKE_JOBS > 1) runs
    each ``-k`` selection in its own pytest process at the same time (each test here waits for the
    other's file: run one after the other, both would fail), prints both outputs, then one line with
    the summed counts, each selection's own line, and the exit status of a failing one; the smoke
    step's result line quotes that last line (the step's pattern). Bad arguments exit 2."""
    import os
    import subprocess
    import sys

    test = tmp_path / "test_meet.py"
    test.write_text(_MEET)
    script = REPO / "scripts" / "pytest-side-by-side.sh"

    def run(fail: str = "", sels: str = "alpha beta", ticks: int = 1200):
        d = tmp_path / f"meet-{fail or 'none'}-{sels.replace(' ', '')}"
        d.mkdir()
        env = dict(os.environ, SBS_DIR=str(d), SBS_FAIL=fail, SBS_TICKS=str(ticks))
        return subprocess.run(["bash", str(script), sys.executable, str(test), sels, "-q", "-p", "no:cacheprovider"],
                              capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)

    ok = run()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    last = ok.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"2 passed in \d+ s side by side \(alpha: 1 passed, 1 deselected in [\d.]+s; "
                        r"beta: 1 passed, 1 deselected in [\d.]+s\)", last), last
    assert "--- alpha: " in ok.stdout and "--- beta: " in ok.stdout
    code = SMOKE.read_text()
    pattern = re.search(r"grep -E '(\^\(=\+ .*?\)\$)'", code).group(1)
    picked = [ln for ln in ok.stdout.splitlines() if re.fullmatch(pattern, ln)]
    assert picked[-1] == last, picked
    bad = run(fail="beta")
    assert bad.returncode == 1, bad.stdout
    assert re.fullmatch(r"1 failed, 1 passed in \d+ s side by side \(alpha: 1 passed, 1 deselected in [\d.]+s; "
                        r"beta: 1 failed, 1 deselected in [\d.]+s\)", bad.stdout.strip().splitlines()[-1])
    alone = run(sels="alpha", ticks=10)  # one selection: no partner, so its test fails, and says so
    assert alone.returncode == 1 and "1 failed, 0 passed" in alone.stdout.strip().splitlines()[-1]
    usage = subprocess.run(["bash", str(script), sys.executable], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "usage: pytest-side-by-side.sh" in usage.stderr
    blank = subprocess.run(["bash", str(script), sys.executable, str(test), "  "], capture_output=True, text=True,
                           timeout=30)
    assert blank.returncode == 2 and "no selection in '  '" in blank.stderr
    # every selection skipped: its own summary line is quoted, nothing counted as passed or failed
    skip = tmp_path / "test_skip.py"
    skip.write_text("import pytest\n\n@pytest.mark.skip(reason='x')\ndef test_a():\n    pass\n")
    sk = subprocess.run(["bash", str(script), sys.executable, str(skip), "test_a", "-q", "-p", "no:cacheprovider"],
                        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert sk.returncode == 0 and re.fullmatch(r"0 passed in \d+ s side by side \(test_a: 1 skipped in [\d.]+s\)",
                                               sk.stdout.strip().splitlines()[-1]), sk.stdout
    # stopped by SIGTERM (a step's timeout) while both run: what each wrote so far is printed first,
    # and with SBS_LOG_DIR the logs stay
    hang = tmp_path / "test_hang.py"
    hang.write_text("import time\nimport pytest\n\n@pytest.mark.parametrize('k', ['alpha', 'beta'])\n"
                    "def test_hang(k):\n    print('started', k, flush=True)\n    time.sleep(600)\n")
    logs = tmp_path / "logs"
    p = subprocess.Popen(["bash", str(script), sys.executable, str(hang), "alpha beta", "-p", "no:cacheprovider",
                          "-s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, SBS_LOG_DIR=str(logs)), cwd=tmp_path)
    import time
    for _ in range(1200):  # both processes inside their tests
        if all((logs / f).is_file() and "started" in (logs / f).read_text() for f in ("0-alpha.log", "1-beta.log")):
            break
        time.sleep(0.05)
    p.terminate()
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 143, out
    assert "--- alpha: " in out and "--- beta: " in out and "(rc=stopped)" in out, out
    assert "started alpha" in out and "started beta" in out
    assert out.strip().splitlines()[-1].startswith("pytest-side-by-side: stopped by a signal after"), out
    assert sorted(f.name for f in logs.iterdir()) == ["0-alpha.log", "1-beta.log"]
    gone = subprocess.run(["bash", str(script), sys.executable, str(tmp_path / "nope.py"), "a"],
                          capture_output=True, text=True, timeout=30)
    assert gone.returncode == 2 and "nope.py' does not exist" in gone.stderr
    assert "scripts/pytest-side-by-side.sh" in code and "tests/gpu/test_kv_cache_gpu.py \"gptoss llama\"" in code


@pytest.mark.parametrize(("argv", "env", "rc", "msg"), [
    ([], {"OUT": "x"}, 2, "gpu-lease: mode ''; accepted: prep, checks, wait SECONDS, bench MODEL BUDGET_S [summary], tune SECONDS, restore"),
    (["warm"], {"OUT": "x"}, 2, "gpu-lease: mode 'warm'; accepted: prep, checks, wait SECONDS, bench"),
    (["tune"], {"OUT": "x"}, 2, "gpu-lease: tune SECONDS ''; accepted: a whole number of seconds, at most 560"),
    (["tune", "900"], {"OUT": "x"}, 2, "gpu-lease: tune SECONDS '900'; accepted"),
    (["bench", "llama", "300"], {"OUT": "x"}, 2, "gpu-lease: bench MODEL 'llama'; accepted: gptoss, dense"),
    (["bench", "dense", "5m"], {"OUT": "x"}, 2, "gpu-lease: bench BUDGET_S '5m'; accepted: a whole number of seconds"),
    (["bench", "dense", "540"], {"OUT": "x"}, 2, "gpu-lease: bench BUDGET_S '540'; accepted: a whole number of "
                                                 "seconds, at most 520"),
    (["bench", "dense", "300", "table"], {"OUT": "x"}, 2, "gpu-lease: bench's 4th argument 'table'; accepted: summary"),
    (["checks"], {"OUT": "x", "LEASE_KERNELS": "both"}, 2, "gpu-lease: LEASE_KERNELS='both'; accepted: checks "),
    (["prep"], {"OUT": "x", "LEASE_PREP": "bench-qdq kernels"}, 2, "gpu-lease: LEASE_PREP='bench-qdq kernels' ('kernels'); "
     "accepted: bench-qdq, bench-sage3"),
    (["checks"], {"OUT": "x", "LEASE_RERUN": "yes"}, 2, "gpu-lease: LEASE_RERUN='yes'; accepted: 0 "),
    (["checks"], {"OUT": "x", "LEASE_CHECKS_LIMIT": "0"}, 2, "gpu-lease: LEASE_CHECKS_LIMIT='0'; accepted: a whole "),
    (["checks"], {"OUT": "x", "LEASE_CHECKS_TIMEOUT": "600"}, 2, "gpu-lease: LEASE_CHECKS_TIMEOUT='600'; accepted: "
     "a whole number of seconds, at most 590"),
    (["checks"], {"LEASE_CHECKS_TIMEOUT": "590", "LEASE_CHECKS_LIMIT": "2000"}, 2, "gpu-lease: $OUT is not set"),
    (["checks"], {}, 2, "gpu-lease: $OUT is not set"),
    (["checks"], {"OUT": "x"}, 3, "gpu-lease: /opt/gpu-site/env.sh is missing: stage vLLM on this machine first"),
])
def test_gpu_lease_refuses_bad_calls(argv: list[str], env: dict, rc: int, msg: str) -> None:
    """``scripts/gpu-lease.sh`` (one mode per device call) names a bad mode, model, budget or
    argument and the accepted ones, needs the device tool's ``$OUT``, and says how to stage vLLM
    when this machine has none, before running anything."""
    import os
    import subprocess

    if rc == 3 and Path("/opt/gpu-site/env.sh").exists():
        pytest.skip("vLLM is staged on this machine")
    base = {k: v for k, v in os.environ.items() if k != "OUT"}
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu-lease.sh"), *argv], capture_output=True, text=True,
                       timeout=30, env={**base, **env})
    assert r.returncode == rc and r.stderr.strip().splitlines()[-1].startswith(msg), (r.returncode, r.stderr)


def test_gpu_lease_checks_runs_only_what_this_machine_has_not_passed(tmp_path: Path) -> None:
    """A second ``gpu-lease.sh checks`` call on the same machine runs the check steps whose result
    there is not PASS or SKIP (a FAIL, or none: cut by the first call's limit), in the suite's
    order, and with every one passed runs none; each call packs the logs."""
    import os
    import subprocess

    site, smoke, out = tmp_path / "site", tmp_path / "smoke", tmp_path / "out"
    for d in (site, smoke, out):
        d.mkdir()
    (site / "env.sh").write_text(": staged\n")
    steps = ["study", "kernels", "kv-cache", "plugin-gptoss", "plugin-dense", "plugin-exact", "method-llama",
             "method-moe", "serve", "tp2"]
    for s in steps:
        (smoke / f"{s}.result").write_text("SKIP 0 s one GPU\n" if s == "tp2" else "PASS 10 s ok\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEASE_", "SMOKE_"))}
    env.update(OUT=str(out), LEASE_SITE=str(site), LEASE_SMOKE=str(smoke), PYTHON="false")

    def call() -> str:
        r = subprocess.run(["bash", str(REPO / "scripts" / "gpu-lease.sh"), "checks"], capture_output=True,
                           text=True, timeout=120, env=env, cwd=tmp_path)
        assert (out / "smoke-checks.tgz").exists(), r.stdout + r.stderr
        return r.stdout + r.stderr

    log = call()
    assert "gpu-lease: no check step left to run" in log and "checks rc=" not in log
    (smoke / "kv-cache.result").write_text("FAIL 477 s rc=1\n")
    (smoke / "study.result").unlink()
    log = call()
    assert "gpu-lease: checks to run: study kv-cache\n" in log, log
    assert ("checks already passed or skipped on this machine: kernels plugin-gptoss plugin-dense plugin-exact "
            "method-llama method-moe serve tp2") in log
    assert "checks rc=" in log
    env["LEASE_RERUN"] = "1"
    assert "gpu-lease: checks to run: study kernels kv-cache plugin-gptoss" in call()


def test_gpu_lease_checks_outlive_the_call_and_wait_collects_them(tmp_path: Path) -> None:
    """``gpu-lease.sh checks`` starts the check steps in a process session of their own and waits
    ``LEASE_CHECKS_TIMEOUT`` for them: past it the call returns saying they still run (the device
    tool ends a call's processes, not another session's); meanwhile ``bench`` (and ``prep``,
    ``tune``) refuse to start, and ``checks`` waits for the run instead of starting a second; ``wait
    S`` prints each step's result line as it lands and the run's exit status, and packs the logs.
    Run on a copy of the script with ``gpu-smoke.sh`` stubbed (each step sleeps, then says PASS)."""
    import os
    import shutil
    import subprocess
    import time

    root, site, smoke, out = (tmp_path / d for d in ("repo", "site", "smoke", "out"))
    for d in (root / "scripts", site, smoke, out):
        d.mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "gpu-lease.sh", root / "scripts")
    (site / "env.sh").write_text(": staged\n")
    (root / "scripts" / "gpu-smoke.sh").write_text(
        'for s in "$@"; do sleep 1; echo "PASS 1 s ok" > "$SMOKE_OUT/$s.result"; echo "gpu-smoke: $s PASS 1 s ok"; done\n'
        'echo "jobs=$SMOKE_JOBS"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEASE_", "SMOKE_"))}
    env.update(OUT=str(out), LEASE_SITE=str(site), LEASE_SMOKE=str(smoke), LEASE_CHECKS_TIMEOUT="1")

    def call(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(root / "scripts" / "gpu-lease.sh"), *argv], capture_output=True,
                              text=True, timeout=120, env=env, cwd=root)

    t0 = time.monotonic()
    r = call("checks")
    assert r.returncode == 0 and time.monotonic() - t0 < 8, r.stdout + r.stderr
    assert "gpu-lease: checks to run: study kernels kv-cache plugin-gptoss plugin-dense plugin-exact method-llama " \
           "method-moe serve tp2" in r.stdout
    assert "gpu-lease: checks still running after 1 s (pid " in r.stdout and (out / "smoke-checks.tgz").exists()
    b = call("bench", "gptoss", "300")
    assert b.returncode == 3 and "bench would time beside it; bash scripts/gpu-lease.sh wait SECONDS first" in \
        b.stderr.strip().splitlines()[-1], b.stderr
    again = call("checks")
    assert "is still going: waiting for it" in again.stdout and "checks to run" not in again.stdout, again.stdout
    w = call("wait", "60")
    assert w.returncode == 0 and w.stdout.strip().splitlines()[-3] == "checks rc=0", w.stdout
    assert "gpu-smoke: tp2 PASS 1 s ok" in w.stdout and (out / "smoke-wait.tgz").exists()
    assert "jobs=10" in (smoke / "checks-bg.log").read_text()
    assert all((smoke / f"{s}.result").read_text().startswith("PASS") for s in ("study", "kernels", "tp2"))
    assert call("bench", "gptoss", "5m").returncode == 2  # (no longer refused for the run: its own check)
    r = call("checks")
    assert "gpu-lease: no check step left to run" in r.stdout, r.stdout
    bad = call("wait", "900")
    assert bad.returncode == 2 and bad.stderr.strip().endswith("accepted: a whole number of seconds, at most 590")


def test_batch_bound_terms_and_control() -> None:
    """``batch_bound`` (prefill-heavy rows): QDQ's added device time and its calls' host time, each
    taken as at least 0 (a device profile that came out below off's must not cancel the host time),
    on off's best batch; the A/A control on the absolute differences; launches outside QDQ's calls
    per step of each engine's own batch."""
    bench = _bench_module()
    off = {"prefill_us": 1_000_000.0, "prefill_launches": 4000, "prefill_steps": 100, "prefill_qdq_host_us": 0.0}
    on = {"prefill_us": 985_000.0, "prefill_launches": 4164, "prefill_steps": 100, "prefill_qdq_calls": 144,
          "prefill_qdq_host_us": 40_000.0, "prefill_qdq_launches": 144}
    b = bench.batch_bound(off, on, 1_390_000.0)
    assert b["bound_ratio"] == 1_390_000.0 / 1_430_000.0 and b["added_device_us"] == -15000.0
    assert b["added_qdq_host_us"] == 40000.0 and b["qdq_calls"] == 144 and b["added_launches_per_step"] == pytest.approx(0.2)
    # over each engine's own steps: one more step of the same launches a step adds none
    assert bench.batch_bound(off, {**off, "prefill_launches": 4040, "prefill_steps": 101},
                             1_000_000.0)["added_launches_per_step"] == 0.0
    aa = bench.batch_bound(off, {**off, "prefill_us": 985_000.0}, 1_390_000.0, control=True)
    assert aa["bound_ratio"] == 1_390_000.0 / 1_405_000.0
    assert bench.batch_bound(off, {**off, "prefill_us": 1_020_000.0}, 1_000_000.0)["bound_ratio"] == 1 / 1.02


def test_throughput_bench_prefill_gate_and_kv_prefill(tmp_path: Path, monkeypatch, capsys) -> None:
    """Prefill-heavy rows are gated by their A/A control's bound like decode ones: an A/A profile
    50 ms off off's on a 1-s batch (0.952) fails the QDQ prefill row whatever its own bound; a
    KV-cache engine timed on the prefill shape is judged on wall time there, saying why (its QDQ
    is Python in the attention layer, not an op the profile times), not as a fallback."""
    import json

    bench = _bench_module()
    kernel = {"off": 500.0, "on": 500.0, "kv": 500.0, "aa": 5500.0}  # a whole batch: 10x: aa +50 ms
    _stand_in_bench(bench, monkeypatch, kernel=kernel)
    out = tmp_path / "rows.json"
    assert bench.main(["--models", "dense", "--out", str(tmp_path), "--pairs", "3", "--min-seconds", "1",
                       "--kv-cache", "nvfp4", "--kv-shapes", "prefill,decode", "--json", str(out)]) == 1
    text = capsys.readouterr().out
    rows = {(r["mode"], r["shape"]): r for r in json.loads(out.read_text())}
    assert abs(rows["aa", "prefill"]["bound_ratio"] - 1 / 1.05) < 1e-9
    line = next(ln for ln in text.splitlines() if ln.startswith("dense    act  prefill"))
    assert "FAIL: A/A bound 0.952 below the target (the profile does not resolve it)" in line, line
    assert rows["kv", "prefill"]["judged_on"] == "wall" and "bound_ratio" not in rows["kv", "prefill"]
    assert ("dense kv prefill: judged on wall time: KV-cache QDQ's calls are Python in the attention layer, not "
            "ops a profile times on the host (batch_bound)") in text
    assert "for want of core-step times" not in text
    # (the stand-in's decode profile moves with it: +5 ms a step on a 20-ms step, those rows fail too)
    assert text.strip().splitlines()[-1] == ("verdict: FAIL: below 0.97: dense act prefill 1.000 (A/A bound 0.952), "
                                             "dense act decode 1.000 (A/A bound 0.800), dense kv decode 1.000 "
                                             "(A/A bound 0.800)")


@pytest.mark.parametrize(("prep", "want"), [
    (None, ["smoke bench-qdq", "jit-warm", "bench-models", "smoke bench-sage3"]),
    ("bench-qdq", ["smoke bench-qdq", "jit-warm", "bench-models"]),
    ("bench-sage3", ["jit-warm", "bench-models", "smoke bench-sage3"]),
    ("", ["jit-warm", "bench-models"]),
])
def test_gpu_lease_prep_runs_bench_qdq_alone(tmp_path: Path, prep: str | None, want: list[str]) -> None:
    """``gpu-lease.sh prep`` runs bench-qdq with nothing else on the CPUs (its eager table is host
    time a call) and only then starts FlashInfer's build and the throughput benches' models (where
    the bench step reads them), beside bench-sage3; ``LEASE_PREP`` picks the benches. Run on a copy of the script with ``gpu-smoke.sh``, ``python3`` and ``nvidia-smi``
    stubbed: each records when it starts and ends."""
    import os
    import shutil
    import subprocess

    root, site, smoke, out, bin_ = (tmp_path / d for d in ("repo", "site", "smoke", "out", "bin"))
    for d in (root / "scripts", root / "overlay", site, smoke, out, bin_):
        d.mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "gpu-lease.sh", root / "scripts")
    (site / "env.sh").write_text(": staged\n")
    trace = tmp_path / "trace"
    stub = f'echo "start $NAME" >> {trace}; sleep 1; echo "end $NAME" >> {trace}\n'
    (root / "scripts" / "gpu-smoke.sh").write_text(f"NAME=\"smoke $*\"\n{stub}")
    (bin_ / "python3").write_text(f"#!/bin/sh\ncase \"$*\" in *gpu_jit_warm*) NAME=jit-warm;; "
                                  f"*bench_plugin_throughput.py\\ --build-only\\ --models\\ gptoss,dense\\ --out\\ {smoke}/models) "
                                  f"NAME=bench-models;; *) exit 0;; esac\n{stub}")
    (bin_ / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: stub'\n")
    for f in ("python3", "nvidia-smi"):
        (bin_ / f).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEASE_", "SMOKE_"))}
    env.update(OUT=str(out), LEASE_SITE=str(site), LEASE_SMOKE=str(smoke), PATH=f"{bin_}:{env['PATH']}")
    if prep is not None:
        env["LEASE_PREP"] = prep
    r = subprocess.run(["bash", str(root / "scripts" / "gpu-lease.sh"), "prep"], capture_output=True, text=True,
                       timeout=60, env=env, cwd=tmp_path)
    assert r.returncode == 0 and (out / "smoke-prep.tgz").exists(), r.stdout + r.stderr
    events = trace.read_text().splitlines()
    assert sorted({e.split(" ", 1)[1] for e in events}) == sorted(want), events
    if "smoke bench-qdq" in want:  # nothing else runs while bench-qdq does
        assert events[:2] == ["start smoke bench-qdq", "end smoke bench-qdq"], events
    if "smoke bench-sage3" in want:  # the build and the bench models beside bench-sage3
        for job in ("jit-warm", "bench-models"):
            assert events.index(f"start {job}") < events.index("end smoke bench-sage3"), events
            assert events.index("start smoke bench-sage3") < events.index(f"end {job}"), events
