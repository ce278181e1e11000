"""The study (vllm_qdq.study.run, .report, stats): divergence math, stats writer, report, and one
real run against two CPU `vllm serve` servers (slow)."""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from vllm_qdq.qdq import quantize_dequantize
from vllm_qdq.stats import OTHER, KeyStats, QDQStats, load_stats
from vllm_qdq.study import run as study
from vllm_qdq.study.report import write_report

REPO = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def _lp(probs: dict[str, float]) -> dict[str, float]:
    return {t: math.log(p) for t, p in probs.items()}


# ----------------------------------------------------------------------------- KL / top-1


def test_kl_equals_exact_kl_when_lists_cover_the_vocabulary() -> None:
    p = {"a": 0.5, "b": 0.25, "c": 0.15, "d": 0.1}
    q = {"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1}
    exact = sum(p[t] * math.log(p[t] / q[t]) for t in p)
    kl, same = study.position_divergence(_lp(p), _lp(q), "b", math.log(p["b"]), math.log(q["b"]), k=4)
    assert kl == pytest.approx(exact, rel=1e-12)
    assert same


def test_kl_zero_for_identical_and_top1_disagreement() -> None:
    p = _lp({"a": 0.6, "b": 0.3})
    kl, same = study.position_divergence(p, p, "a", p["a"], p["a"], k=2)
    assert kl == pytest.approx(0.0, abs=1e-15) and same
    q = _lp({"b": 0.6, "a": 0.3})
    kl, same = study.position_divergence(p, q, "a", p["a"], q["a"], k=2)
    assert not same
    # support {a, b} plus a rest bin of 0.1 on both sides
    assert kl == pytest.approx(0.6 * math.log(2) + 0.3 * math.log(0.5), rel=1e-12)


def test_kl_missing_token_takes_the_smallest_listed_probability() -> None:
    # k=2: baseline lists a, b; the QDQ server lists a, c; b is imputed with min(q_a, q_c) = 0.2
    p = {"a": 0.7, "b": 0.2}
    q = {"a": 0.5, "c": 0.2}
    kl, _ = study.position_divergence(_lp(p), _lp(q), "a", math.log(0.7), math.log(0.5), k=2)
    p_rest, q_rest = 1 - 0.9, 1 - 0.7
    want = 0.7 * math.log(0.7 / 0.5) + 0.2 * math.log(0.2 / 0.2) + p_rest * math.log(p_rest / q_rest)
    assert kl == pytest.approx(want, rel=1e-12)


def test_kl_uses_the_actual_token_beyond_top_k() -> None:
    # the scored token "z" is outside both top-1 lists but its logprob is known on both sides
    p = _lp({"a": 0.9, "z": 0.05})
    q = _lp({"a": 0.8, "z": 0.15})
    kl, _ = study.position_divergence(p, q, "z", p["z"], q["z"], k=1)
    want = 0.9 * math.log(0.9 / 0.8) + 0.05 * math.log(0.05 / 0.15) + 0.05 * math.log(0.05 / 0.05)
    assert kl == pytest.approx(want, rel=1e-9)


def test_summarize_divergence() -> None:
    s = study.summarize_divergence([
        {"kl": [0.0, 0.2], "top1": [True, False], "next_same": True},
        {"kl": [0.4], "top1": [True], "next_same": False},
    ])
    assert s["positions"] == 3 and s["prompts"] == 2
    assert s["kl_mean"] == pytest.approx(0.2) and s["kl_median"] == pytest.approx(0.2)
    assert s["kl_max"] == pytest.approx(0.4)
    assert s["top1_agreement"] == pytest.approx(2 / 3)
    assert s["greedy_next_agreement"] == pytest.approx(0.5)


def test_endpoint_and_task_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="base URL"):
        study.main(["bench", "--qdq", "http://x:1/v1", "--baseline", "http://y:2", "--model", "m",
                    "--out", "/tmp/never"])
    with pytest.raises(ValueError, match="--tasks"):
        study._task_list(" , ")
    assert study._task_list("local") == list(study.LOCAL_TASKS)
    assert study._task_list("gsm8k, mmlu_anatomy") == ["gsm8k", "mmlu_anatomy"]


def test_warmup_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--num-warmups / STUDY_NUM_WARMUPS (empty: the default, one full batch); negative is refused
    before any request is sent."""
    base = ["bench", "--qdq", "http://a:1", "--baseline", "http://b:2", "--model", "m", "--out", str(tmp_path)]
    monkeypatch.setenv("STUDY_NUM_WARMUPS", "")
    assert study._parser().parse_args(base).num_warmups is None
    monkeypatch.setenv("STUDY_NUM_WARMUPS", "3")
    assert study._parser().parse_args(base).num_warmups == 3
    assert study._parser().parse_args([*base, "--num-warmups", "0"]).num_warmups == 0
    with pytest.raises(ValueError, match="num_warmups=-1"):
        study.run_bench("http://a:1", "qdq", "m", tmp_path, num_warmups=-1)
    monkeypatch.setenv("STUDY_NUM_WARMUPS", "a few")
    with pytest.raises(ValueError, match=r"STUDY_NUM_WARMUPS='a few'; accepted: an integer or empty"):
        study._parser()
    monkeypatch.delenv("STUDY_NUM_WARMUPS")
    monkeypatch.setenv("STUDY_NUM_PROMPTS", "")  # a required size: empty is not a value
    with pytest.raises(ValueError, match=r"STUDY_NUM_PROMPTS=''; accepted: an integer$"):
        study._parser()


def test_shipped_study_files_exist() -> None:
    for name in study.LOCAL_TASKS:
        assert (study.TASKS_DIR / f"{name}.yaml").is_file()
        assert (study.TASKS_DIR / f"{name}.jsonl").is_file()
    prompts = study.PROMPTS_FILE.read_text().splitlines()
    assert len(prompts) >= 8 and all(json.loads(p)["prompt"] for p in prompts)
    # the study image pins new packages by the same lock as the CPU environment: one file, which
    # scripts/constraints-cpu.txt links to (a Docker build context cannot reach outside itself)
    link = REPO / "scripts/constraints-cpu.txt"
    assert link.is_symlink() and link.resolve() == (REPO / "docker/study/constraints.txt").resolve()
    assert (REPO / "docker/study/constraints.txt").read_bytes() == (REPO / "scripts/constraints-cpu.txt").read_bytes()


# ----------------------------------------------------------------------------- stats writer


def test_stats_figures_match_direct_computation(tmp_path: Path) -> None:
    x = torch.randn(8, 64) * 3
    y = quantize_dequantize(x, "mxfp8_e4m3")
    rec = QDQStats(tmp_path, flush_every=1000)
    rec.record("model.layers.0.qkv_proj", "mxfp8_e4m3", x, y)
    rec.record("model.layers.0.qkv_proj", "mxfp8_e4m3", x, y)
    path = rec.flush()
    assert path.name == f"qdq-stats-{os.getpid()}.jsonl"
    (ks,) = load_stats(tmp_path)
    err = (x.double() - y.double())
    assert ks.calls == 2 and ks.numel == 2 * x.numel()
    assert ks.sqnr_db == pytest.approx(10 * math.log10(float(x.double().square().sum() / err.square().sum())))
    assert ks.max_abs_err == pytest.approx(float(err.abs().max()))
    assert ks.max_abs_x == pytest.approx(float(x.abs().max()))


def test_stats_saturation_counts_clipped_elements_only(tmp_path: Path) -> None:
    # one MX block: amax 7 -> floor scale 2^0, E2M1 max 6: 7 clips (saturated); 5 rounds to 4 (not).
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1], x[0, 2] = 7.0, 5.0, -6.0
    rec = QDQStats(tmp_path)
    rec.record("blk", "mxfp4", x, quantize_dequantize(x, "mxfp4"))
    # per-token INT8 / FP8: the amax lands exactly on the largest code -> no clipping at all
    w = torch.randn(4, 64)
    for fmt in ("int8_per_token", "fp8_e4m3_per_token"):
        rec.record("row", fmt, w, quantize_dequantize(w, fmt))
    # mxfp4 with the `ceil` rule never clips
    rec.record("blk_ceil", "mxfp4", x, quantize_dequantize(x, "mxfp4", scale_rule="ceil"), scale_rule="ceil")
    got = {(k.op, k.fmt): k.saturated for k in rec.snapshot()}
    assert got == {("blk", "mxfp4"): 1, ("row", "int8_per_token"): 0, ("row", "fp8_e4m3_per_token"): 0,
                   ("blk_ceil", "mxfp4"): 0}


def test_stats_nan_groups_and_exact_qdq(tmp_path: Path) -> None:
    x = torch.randn(2, 32)
    x[1, 3] = float("nan")
    y = quantize_dequantize(x, "mxfp4")
    rec = QDQStats(tmp_path)
    rec.record("n", "mxfp4", x, y)
    (ks,) = rec.snapshot()
    assert ks.nonfinite == 32 and ks.numel == 32  # the NaN block is counted apart, not in SQNR
    z = torch.tensor([[1.0, 2.0, 0.5, 0.0]])
    rec.record("exact", "int8_per_token", z, z.clone())
    exact = next(k for k in rec.snapshot() if k.op == "exact")
    assert exact.sqnr_db == math.inf and exact.max_abs_err == 0.0


def test_stats_bounded_keys_flush_cadence_and_merge(tmp_path: Path) -> None:
    rec = QDQStats(tmp_path / "a", flush_every=2, max_keys=2)
    x = torch.randn(4, 32)
    y = quantize_dequantize(x, "mxfp4")
    for op in ("l0", "l1", "l2", "l3"):
        rec.record(op, "mxfp4", x, y)
    assert rec.path.is_file()  # flushed after the 2nd and 4th calls, without an explicit flush
    ops = {json.loads(line)["op"]: json.loads(line)["calls"] for line in rec.path.read_text().splitlines()}
    assert ops == {"l0": 1, "l1": 1, OTHER: 2}
    # a second process's file in the same directory: totals add up per key
    other = tmp_path / "a" / "qdq-stats-999999.jsonl"
    d = KeyStats("l0", "mxfp4", 3, 10, 1.0, 0.5, 2.0, 3.0, 1, 0).to_json()
    other.write_text(json.dumps(d) + "\n")
    merged = {k.op: k for k in load_stats(tmp_path / "a")}
    assert merged["l0"].calls == 4 and merged["l0"].max_abs_x >= 3.0
    with pytest.raises(ValueError, match="shape"):
        rec.record("bad", "mxfp4", x, y[:2])
    with pytest.raises(ValueError, match="flush_every"):
        QDQStats(tmp_path, flush_every=0)


def test_stats_write_failure_keeps_serving_and_loses_nothing(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A full disk (here: the stats directory replaced by a file) must not raise into the forward
    pass: the error is logged, totals are kept, and the next flush that can write has every call."""
    d = tmp_path / "stats"
    rec = QDQStats(d, flush_every=1)
    x = torch.randn(4, 32)
    y = quantize_dequantize(x, "mxfp4")
    rec.record("l0", "mxfp4", x, y)
    rec.path.unlink()
    d.rmdir()
    d.write_text("not a directory")  # every open() under it now fails with an OSError
    with caplog.at_level("ERROR", logger="vllm_qdq"):
        for _ in range(3):
            rec.record("l0", "mxfp4", x, y)  # flushes each call, and must not raise
        assert rec.flush() is None
    assert rec.failed_flushes == 4
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "cannot write" in errors[0].getMessage()  # once, not per call
    d.unlink()
    d.mkdir()
    assert rec.flush() == rec.path
    (row,) = [json.loads(line) for line in rec.path.read_text().splitlines()]
    assert row["calls"] == 4
    assert not list(d.glob("*.tmp*"))


def test_record_is_a_no_op_without_stats_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm_qdq import stats

    monkeypatch.delenv("VLLM_QDQ_STATS", raising=False)
    monkeypatch.setattr(stats, "_RECORDER", None)
    stats.record("l", "mxfp4", torch.ones(1, 32), torch.ones(1, 32))
    assert stats._RECORDER is None
    monkeypatch.setenv("VLLM_QDQ_STATS", str(tmp_path / "s"))
    stats.record("l", "mxfp4", torch.ones(1, 32), torch.ones(1, 32))
    assert stats.get_recorder() is not None
    stats.get_recorder().flush()
    assert [k.op for k in load_stats(tmp_path / "s")] == ["l"]
    monkeypatch.setattr(stats, "_RECORDER", None)


# ----------------------------------------------------------------------------- report


def _bench(scale: float) -> dict:
    d = {"completed": 16, "failed": 0, "num_prompts": 16, "total_input_tokens": 512,
         "total_output_tokens": 256, "request_rate": "inf", "duration": 4.0 * scale,
         "request_throughput": 4.0 / scale, "output_throughput": 64.0 / scale,
         "total_token_throughput": 192.0 / scale}
    for i, m in enumerate(("ttft", "tpot", "itl", "e2el")):
        for p in (50, 90, 99):
            d[f"p{p}_{m}_ms"] = (10.0 * (i + 1) + p / 10) * scale
    return d


def _eval(acc: float) -> dict:
    return {"label": "x", "limit": None, "n_samples": {"qdq_tiny_mc": 32},
            "results": {"qdq_tiny_mc": {"acc": {"value": acc, "stderr": 0.07, "filter": "none"},
                                        "sample_len": {"value": 32, "filter": ""}}}}


def _synthetic(d: Path) -> None:
    (d / "bench").mkdir(parents=True)
    (d / "eval").mkdir()
    (d / "logprobs").mkdir()
    (d / "bench/baseline.json").write_text(json.dumps(_bench(1.0)))
    (d / "bench/qdq.json").write_text(json.dumps(_bench(1.25)))
    (d / "eval/baseline.json").write_text(json.dumps(_eval(0.50)))
    (d / "eval/qdq.json").write_text(json.dumps(_eval(0.4375)))
    prompts = [{"prompt": "p", "kl": [0.01, 0.2, 0.0], "top1": [True, False, True], "next_same": True}]
    (d / "logprobs/divergence.json").write_text(json.dumps(
        {"k": 10, "prompts": prompts, "summary": study.summarize_divergence(prompts)}))
    rec = QDQStats(d / "stats" / "qdq")
    for layer in range(3):
        x = torch.randn(8, 64) * (layer + 1)
        for fmt in ("mxfp4", "fp8_e4m3_per_token"):
            rec.record(f"model.layers.{layer}.mlp.down_proj", fmt, x, quantize_dequantize(x, fmt))
    rec.flush()


def test_report_from_synthetic_results(tmp_path: Path) -> None:
    _synthetic(tmp_path)
    text = write_report(tmp_path).read_text()
    assert "| qdq_tiny_mc | acc | 0.500 | 0.438 | -0.062 |" in text
    assert "sample_len" not in text
    assert "| requests/s | 4.000 | 3.200 | 0.800 |" in text
    for m in ("TTFT", "TPOT", "ITL", "E2EL"):
        for p in (50, 90, 99):
            assert f"| {m} p{p} |" in text
    assert "| top-1 agreement (teacher-forced) | 0.667 |" in text
    assert "| mxfp4 | 3 | 3 |" in text and "| fp8_e4m3_per_token | 3 | 3 |" in text
    assert "Not run" not in text and "No per-layer" not in text
    assert "warm-up requests: not recorded." in text  # _bench() results carry no warm-up count
    for lb, n in (("baseline", 4), ("qdq", 4)):
        b = json.loads((tmp_path / f"bench/{lb}.json").read_text())
        (tmp_path / f"bench/{lb}.json").write_text(json.dumps({**b, "study_num_warmups": n}))
    assert "each after 4 untimed warm-up requests." in write_report(tmp_path).read_text()
    b = json.loads((tmp_path / "bench/qdq.json").read_text())
    (tmp_path / "bench/qdq.json").write_text(json.dumps({**b, "study_num_warmups": 0}))
    assert "after 4 (baseline) / 0 (QDQ) untimed warm-up requests: not comparable." in (
        write_report(tmp_path).read_text())
    for name in ("accuracy", "throughput", "latency", "kl", "layer_sqnr"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000, name
        assert f"(plots/{name}.png)" in text


def test_report_says_what_is_missing(tmp_path: Path) -> None:
    _synthetic(tmp_path)
    (tmp_path / "eval/qdq.json").unlink()
    for f in (tmp_path / "stats/qdq").iterdir():
        f.unlink()
    text = write_report(tmp_path).read_text()
    assert "_Not run: no eval results for qdq" in text
    assert "_No per-layer statistics" in text
    assert "| requests/s |" in text
    with pytest.raises(ValueError, match="does not exist"):
        write_report(tmp_path / "nope")


_QDQ_LOG = """\
(APIServer pid=11) INFO 12-02 04:02:43 [api_utils.py:347]  \u2584\u2584 \u2584\u2588  version 0.30.0
(APIServer pid=11) INFO 12-02 04:02:43 [api_utils.py:286] non-default args: {'model_tag': '/m', 'model': '/m', \
'dtype': 'bfloat16', 'quantization': 'qdq', 'api_key': '***', 'max_num_seqs': 16}
(APIServer pid=11) INFO 12-02 04:02:50 [plugin.py:65] vllm-qdq: activation QDQ enabled in pid 11: wrapped 14 op \
wrappers of vllm._custom_ops (marlin_gemm, gptq_gemm); rebound 2 by-name imports; settings: linear=auto \
moe=auto; digest ab12; compile-cache factors VLLM_QDQ
(EngineCore pid=12) INFO 12-02 04:02:51 [plugin.py:65] vllm-qdq: activation QDQ enabled in pid 12: wrapped 14 op \
wrappers of vllm._custom_ops (marlin_gemm, gptq_gemm); rebound 2 by-name imports; settings: linear=auto \
moe=auto; digest ab12; compile-cache factors VLLM_QDQ
(EngineCore pid=12) INFO 12-02 04:03:01 [qdq_method.py:418] vllm-qdq: qdq method w=mxfp4/floor a=nvfp4 layers=1 \
(VLLM_QDQ_CONFIG)
(EngineCore pid=12) INFO 12-02 04:03:01 [qdq_method.py:430] vllm-qdq: qdq w=mxfp4/floor a=nvfp4 -> 8 layer(s): \
model.layers.*.mlp.down_proj
"""


def test_report_settings_floors_and_caveats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13 item 5: settings, model and caveats head the report, from what the servers logged
    and the study detected (nothing assumed); a latency ratio under the floor is n/a with the reason."""
    _synthetic(tmp_path)
    b = json.loads((tmp_path / "bench/baseline.json").read_text())
    b.update(p50_itl_ms=0.011, duration=0.047, itls=[[1e-5, 2e-5, 1.4e-3], [1e-5, 1.2e-3]], output_lens=[16, 16],
             mean_ttft_ms=40.0, mean_e2el_ms=60.0,
             study_server_metrics={"requests": 16, "queue_ms": 0.02, "prefill_ms": 5.0, "decode_ms": 20.0,
                                   "ttft_ms": 9.0, "e2e_ms": 30.0})
    (tmp_path / "bench/baseline.json").write_text(json.dumps(b))
    q = json.loads((tmp_path / "bench/qdq.json").read_text())
    q.update(mean_ttft_ms=30.0, mean_e2el_ms=90.0, itls=[[0.01] * 15], output_lens=[16],
             study_server_metrics={"requests": 16, "queue_ms": 0.03, "prefill_ms": 20.0, "decode_ms": 60.0,
                                   "ttft_ms": 25.0, "e2e_ms": 85.0})
    (tmp_path / "bench/qdq.json").write_text(json.dumps(q))
    meta = {"model": "/m", "endpoints": {"baseline": "http://127.0.0.1:1", "qdq": "http://127.0.0.1:2"},
            "model_provenance": {"random_weights": False, "source": "no marker"},
            "steps": {"run": {"num_prompts": 16, "input_len": 32, "output_len": 16}}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    text = write_report(tmp_path).read_text()
    head = text.split("## Accuracy")[0]
    assert "## Settings, model and caveats" in head
    # no logs: says so, guesses nothing
    assert "QDQ (http://127.0.0.1:2): settings not recorded: no `logs/serve-qdq.log`" in head
    assert "random weights" not in text  # not a random model: no such caveat
    assert "16 requests of random prompts of about 32 tokens, each generating 16 tokens" in head
    assert "512 input and 256 output tokens in all per server" in head
    # the floor: ratio n/a, the reason, the share of sub-floor gaps; other rows keep their ratio
    assert "| ITL p50 | 0.011 | 43.750 | n/a (under 0.5 ms) |" in text
    assert "| TPOT p50 | 25.000 | 31.250 | 1.250 |" in text
    assert "baseline 3 of 5 (60%)" in text and "parsed microseconds apart" in text
    assert "A timed run shorter than 1 s (baseline 0.047 s, QDQ 5.000 s)" in head
    # where the time goes: the engine's own figures beside the client's, and what they say
    assert "| engine prefill (scheduled -> first token) | 5.000 | 20.000 | 4.000 |" in text
    assert "| engine queue (waiting to be scheduled) | 0.020 | 0.030 | n/a (under 0.5 ms) |" in text
    assert "| streamed messages / output tokens per request | 3.5 / 16.0 | 16.0 / 16.0 |  |" in text
    assert "baseline 34.980 ms, QDQ 9.970 ms" in text  # client TTFT - (queue + prefill)
    assert "ranks the servers the other way round from their engines' queue + prefill" in head
    assert "The baseline server streamed 3.5 messages per 16-token request" in head
    assert "The QDQ server streamed" not in head
    assert "recorded per-layer statistics (VLLM_QDQ_STATS, files found)" in head  # _synthetic() wrote some
    assert "Both servers and the benchmark client ran on this one machine" in head
    assert "| qdq_tiny_mc | acc | 0.500 | 0.438 | -0.062 | 0.070 / 0.070 | 0.63 |" in text
    # logs and a random model: what the servers ran heads the report
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs/serve-qdq.log").write_text(_QDQ_LOG.replace("\\\n", ""))
    (tmp_path / "logs/serve-baseline.log").write_text(
        "(APIServer pid=9) INFO 12-02 04:02:44 [api_utils.py:286] non-default args: {'model': '/m', 'dtype': 'bfloat16'}\n")
    meta["model_provenance"] = study.model_provenance(str(_tiny_marker_dir(tmp_path / "tiny")))
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    head = write_report(tmp_path).read_text().split("## Accuracy")[0]
    assert "vLLM 0.30.0; arguments `model='/m', dtype='bfloat16', quantization='qdq', api_key='***'" in head
    assert "  - `qdq method w=mxfp4/floor a=nvfp4 layers=1 (VLLM_QDQ_CONFIG)`" in head
    assert "  - `qdq w=mxfp4/floor a=nvfp4 -> 8 layer(s): model.layers.*.mlp.down_proj`" in head
    assert head.count("activation QDQ enabled (14 op wrappers wrapped); settings: linear=auto moe=auto") == 1
    assert "baseline (http://127.0.0.1:1): vLLM (version not logged); arguments `model='/m', dtype='bfloat16'`; " \
           "no vllm-qdq line (QDQ off)." in head
    assert "**random weights** (built by vllm_qdq.study.tiny: 2 layers, hidden 128)" in head
    assert "**The model has random weights**" in head and "chance level" in head
    # a QDQ engine faster than the baseline's (QDQ only adds work): the load changed between the runs
    assert "only adds work" not in head
    q["study_server_metrics"].update(prefill_ms=2.0, decode_ms=10.0)
    (tmp_path / "bench/qdq.json").write_text(json.dumps(q))
    head = write_report(tmp_path).read_text().split("## Accuracy")[0]
    assert "The QDQ server's engine took less time per request than the baseline's (prefill + decode 12.000 ms " \
           "vs 25.000 ms)" in head


def _tiny_marker_dir(d: Path) -> Path:
    d.mkdir()
    (d / study.TINY_MARKER).write_text(json.dumps({"config": {"num_hidden_layers": 2, "hidden_size": 128}}))
    return d


def test_model_provenance(tmp_path: Path) -> None:
    assert study.model_provenance(str(_tiny_marker_dir(tmp_path / "t")))["random_weights"] is True
    assert study.model_provenance(str(tmp_path))["random_weights"] is False
    assert study.model_provenance("Qwen/Qwen2.5-7B-Instruct")["random_weights"] is None


# ----------------------------------------------------------------------------- API key


KEY = "study-test-key-5c1e"


class _KeyServer(BaseHTTPRequestHandler):
    """A small OpenAI-style completions server that requires ``Authorization: Bearer KEY`` on /v1
    (401 otherwise, like vLLM's --api-key) and answers what the study's clients ask: /v1/models,
    streamed completions (vllm bench serve), echo + logprobs (lm-eval log-likelihood, the logprob
    divergence) and plain generations (lm-eval generate_until). Records (path, authorized) per request."""

    seen: ClassVar[list[tuple[str, bool]]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        ok = self.headers.get("Authorization") == f"Bearer {KEY}"
        self.seen.append((self.path, ok))
        if not ok:
            self._send(401, b'{"error": "Unauthorized"}')
        return ok

    def do_GET(self) -> None:
        if not self.path.startswith("/v1/"):  # vLLM guards /v1 only: /health, /metrics stay open
            return self._send(200 if self.path == "/health" else 404, b"")
        if self._authorized():
            self._send(200, json.dumps({"data": [{"id": "m", "root": "m", "max_model_len": 1024}]}).encode())

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not self.path.startswith("/v1/"):  # e.g. the bench's /tokenize probe: not offered here
            return self._send(404, b"")
        if not self._authorized():
            return
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        n = body.get("max_tokens") or 1
        if body.get("stream"):
            events = [{"choices": [{"index": 0, "text": "a"}]} for _ in range(n)]
            events.append({"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": n}})
            data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            return self._send(200, data.encode(), "text/event-stream")
        choices = []
        for i, prompt in enumerate(prompts):
            if body.get("echo"):  # one "token" a byte, plus the generated one; every list long enough
                toks = [f"token_id:{b}" for b in str(prompt).encode()] + ["token_id:97"]
                lps = [None] + [-1.0] * (len(toks) - 1)
                tops = [None] + [{t: -1.0, "token_id:98": -2.0} for t in toks[1:]]
                lp = {"tokens": toks, "token_logprobs": lps, "top_logprobs": tops}
                choices.append({"index": i, "text": "a", "logprobs": lp})
            else:
                choices.append({"index": i, "text": " 14"})
        self._send(200, json.dumps({"choices": choices}).encode())


@pytest.fixture()
def key_server() -> Iterator[str]:
    _KeyServer.seen = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _KeyServer)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.mark.slow  # about a minute: one `vllm bench serve` and one lm-eval run (no engine)
def test_study_clients_send_the_api_key(key_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With VLLM_API_KEY set, every request of the study (GET /v1/models, the logprob requests,
    `vllm bench serve`, lm-eval) carries `Authorization: Bearer <key>`; without it the first /v1
    request fails naming VLLM_API_KEY; the key is written to no result file."""
    from vllm_qdq.study.tiny import build_study_llama

    model = str(build_study_llama(tmp_path / "model"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv(study.API_KEY_ENV, raising=False)
    base = ["--qdq", key_server, "--baseline", key_server, "--model", model]
    with pytest.raises(RuntimeError, match=r"HTTP 401 .*set VLLM_API_KEY"):
        study.main(["logprobs", *base, "--out", str(tmp_path / "nokey")])
    monkeypatch.setenv(study.API_KEY_ENV, KEY)
    out = tmp_path / "out"
    counts = {}
    for step, run in (
        ("logprobs", lambda: study.main(["logprobs", *base, "--out", str(out)])),  # + GET /v1/models
        ("bench", lambda: study.run_bench(key_server, "qdq", model, out, num_prompts=2, input_len=8, output_len=4)),
        ("eval", lambda: study.run_eval(key_server, "qdq", model, out, limit=1)),
    ):
        _KeyServer.seen = []
        run()
        assert _KeyServer.seen and all(ok for _, ok in _KeyServer.seen), (step, _KeyServer.seen)
        counts[step] = sum(p == "/v1/completions" for p, _ in _KeyServer.seen)
    assert "OPENAI_API_KEY" not in os.environ  # set for the clients only while they ran
    assert counts["logprobs"] == 2 * len(study.PROMPTS_FILE.read_text().splitlines())
    assert counts["bench"] >= 2 and counts["eval"] >= 2, counts
    assert json.loads((out / "bench" / "qdq.json").read_text())["completed"] == 2
    meta = json.loads((out / "meta.json").read_text())
    assert meta["api_key_sent"] is True and meta["served"]["qdq"]["models"][0]["root"] == "m"
    for f in out.rglob("*"):
        if f.is_file():
            assert KEY not in f.read_text(errors="replace"), f


# ----------------------------------------------------------------------------- the real thing


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_study_against_two_cpu_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two real `vllm serve` CPU servers of a tiny random Llama, both requiring an API key
    (VLLM_API_KEY, which vLLM reads); the whole study; the report, headed by what the servers ran."""
    import urllib.error
    import urllib.request

    from vllm_qdq.study.demo import QDQ_SERVER, run_study

    monkeypatch.setenv(study.API_KEY_ENV, KEY)
    refused: list[int] = []
    run_logprobs = study.run_logprobs

    def probe_then_run(eps: dict[str, str], *args: object, **kw: object) -> Path:
        # the servers are up here: a request without the key must be refused by both
        for url in eps.values():
            req = urllib.request.Request(f"{url}/v1/models")
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=30)
            refused.append(e.value.code)
        return run_logprobs(eps, *args, **kw)

    monkeypatch.setattr(study, "run_logprobs", probe_then_run)
    report = run_study(tmp_path, num_prompts=4, input_len=16, output_len=8, limit=4)
    assert refused == [401, 401]
    text = report.read_text()
    for label in ("baseline", "qdq"):
        b = json.loads((tmp_path / "bench" / f"{label}.json").read_text())
        assert b["completed"] == 4 and b["failed"] == 0
        e = json.loads((tmp_path / "eval" / f"{label}.json").read_text())
        assert set(e["results"]) == set(study.LOCAL_TASKS)
        assert 0.0 <= e["results"]["qdq_tiny_mc"]["acc"]["value"] <= 1.0
    s = json.loads((tmp_path / "logprobs" / "divergence.json").read_text())["summary"]
    assert s["positions"] > 100 and 0.0 <= s["top1_agreement"] <= 1.0 and s["kl_mean"] >= 0.0
    if QDQ_SERVER == "method":  # weights and activations QDQ'd: the two servers must disagree
        assert s["kl_mean"] > 1e-3 and s["top1_agreement"] < 1.0
    else:  # VLLM_QDQ=1 alone has no quantized GEMM to act on in this unquantized model
        assert s["kl_mean"] == 0.0 and s["top1_agreement"] == 1.0
    assert "| qdq_tiny_mc | acc |" in text and "| TTFT p99 |" in text and "KL mean" in text
    assert "each after 4 untimed warm-up requests" in text  # default: one full batch
    for name in ("accuracy", "throughput", "latency", "kl"):
        assert (tmp_path / "plots" / f"{name}.png").read_bytes()[:8] == PNG
    # both servers are gone
    for log in (tmp_path / "logs").glob("serve-*.log"):
        assert "Application startup complete" in log.read_text()
    # the report's head: what the servers ran (from their logs), the random model, the caveats
    head = text.split("## Accuracy")[0]
    assert "**random weights** (built by vllm_qdq.study.tiny: 2 layers, hidden 128)" in head
    assert "**The model has random weights**" in head
    assert "requests carried an API key (VLLM_API_KEY)" in head and KEY not in text
    qdq_log = (tmp_path / "logs" / "serve-qdq.log").read_text()
    method_line = next(line for line in qdq_log.splitlines() if "vllm-qdq: qdq method " in line)
    assert f"`{method_line.split('vllm-qdq: ', 1)[1].strip()}`" in head
    assert "quantization='qdq'" in head.split("- QDQ (")[1] and "quantization" not in head.split("- QDQ (")[0]
    assert "no vllm-qdq line (QDQ off)" in head.split("- QDQ (")[0]
    meta = json.loads((tmp_path / "meta.json").read_text())
    for label in ("baseline", "qdq"):
        assert meta["served"][label]["models"][0]["root"] == str(tmp_path / "model")
        bench = json.loads((tmp_path / "bench" / f"{label}.json").read_text())
        assert bench["itls"]  # --save-detailed
        sm = bench["study_server_metrics"]  # /metrics around the timed run only: its 4 requests
        assert sm["requests"] == 4 and sm["prefill_ms"] > 0 and sm["e2e_ms"] > sm["prefill_ms"], sm
    assert "| engine prefill (scheduled -> first token) |" in text


def test_report_kv_cache_and_query_table(tmp_path: Path) -> None:
    """KV-cache / query statistics (``<layer>.k_cache``, ``.v_cache``, ``.q``, issue 19) get a
    table of their own, one row per attention layer in layer order, with the SQNR of K, V and Q,
    and stay out of the GEMM activation rows."""
    from vllm_qdq.numerics.kv import qdq_kv
    from vllm_qdq.stats import load_stats

    _synthetic(tmp_path)
    rec = QDQStats(tmp_path / "stats" / "qdq-kv")
    for layer in (0, 1, 10):
        name = f"model.layers.{layer}.self_attn.attn"
        k, v, q = (torch.randn(5, 2, 64) * (layer + 1) for _ in range(3))
        rec.record(f"{name}.k_cache", "nvfp4", k, qdq_kv(k, "nvfp4"))
        rec.record(f"{name}.v_cache", "nvfp4", v, qdq_kv(v, "nvfp4"))
        if layer:
            rec.record(f"{name}.q", "mxfp8_e4m3", q, qdq_kv(q, "mxfp8_e4m3"))
    rec.flush()
    text = write_report(tmp_path).read_text()
    assert "| mxfp4 | 3 | 3 |" in text and "| nvfp4 |" not in text.split("KV cache and attention query")[0]
    stats = {k.op: k for k in load_stats(tmp_path / "stats" / "qdq-kv")}
    k0, v0 = stats["model.layers.0.self_attn.attn.k_cache"], stats["model.layers.0.self_attn.attn.v_cache"]
    row0 = f"| model.layers.0.self_attn.attn | {k0.sqnr_db:.3f} (nvfp4) | {v0.sqnr_db:.3f} (nvfp4) | – | 1 |"
    assert row0 in text, text
    lines = [ln for ln in text.splitlines() if ln.startswith("| model.layers.") and "self_attn.attn |" in ln]
    assert [ln.split(" | ")[0] for ln in lines] == [f"| model.layers.{i}.self_attn.attn" for i in (0, 1, 10)]
    assert "(mxfp8_e4m3)" in lines[1] and "| all layers |" in text
