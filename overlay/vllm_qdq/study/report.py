"""Turn a study directory (see :mod:`vllm_qdq.study`) into ``report.md`` with PNG plots.

Sections, each from its own result files; a section whose files are missing says so in the
report (it is never dropped silently):

* Settings, model and caveats (first): what each server ran, from its start-up log
  ``logs/serve-{baseline,qdq}.log`` beside the results (vLLM's ``non-default args`` line and
  every ``vllm-qdq:`` start-up line: the qdq method's formats and layer plan, the activation
  plugin's settings), what it serves (``GET /v1/models``, in ``meta.json``), whether the model
  has random weights (``meta.json``'s ``model_provenance``, detected by the study), the workload,
  and the caveats the figures below need. Nothing is assumed: a missing log says so.
* Accuracy: every task and metric of ``eval/{baseline,qdq}.json``, delta = QDQ - baseline,
  with lm-eval's standard errors and ``|delta| / sigma`` (``sigma`` the two standard errors
  combined; under 2 the delta is within sampling noise); plot ``plots/accuracy.png``.
* Throughput and latency: from ``bench/{baseline,qdq}.json`` (``vllm bench serve``): request
  and token throughput, TTFT / TPOT / ITL / E2EL at p50 / p90 / p99 (ms), QDQ / baseline
  ratios; a ratio where either figure is under :data:`LATENCY_FLOOR_MS` is ``n/a`` with the
  reason (see there); plots ``plots/throughput.png`` and ``plots/latency.png``.
* Logprob divergence: ``logprobs/divergence.json``: KL (top-k approximation) and top-1
  agreement; plot ``plots/kl.png``.
* Per-layer numerics: ``qdq-stats-*.jsonl`` files under the stats directory (default
  ``DIR/stats``): per format, energy-weighted SQNR ``10 log10(sum x^2 / sum (x-y)^2)`` over
  every layer and call, the worst layer, largest abs error and saturated fraction, then the
  worst layers; plot ``plots/layer_sqnr.png``.
"""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

__all__ = ["LATENCY_FLOOR_MS", "SHORT_RUN_S", "load_results", "server_settings", "write_report"]

LABELS = ("baseline", "qdq")
LAT_METRICS = ("ttft", "tpot", "itl", "e2el")
PCTS = (50, 90, 99)
THROUGHPUT_KEYS = (
    ("request_throughput", "requests/s"),
    ("output_throughput", "output tokens/s"),
    ("total_token_throughput", "total tokens/s"),
)
COLORS = {"baseline": "#4C72B0", "qdq": "#DD8452"}
NAMES = {"baseline": "baseline", "qdq": "QDQ"}
#: A latency figure (ms) under this is not server time, and a ratio of it is shown as n/a.
#: ``vllm bench serve`` timestamps each streamed message when it parses it; messages that reach
#: it in one network read (a server that falls behind flushes several tokens at once) are
#: parsed microseconds apart, so a percentile that lands on those gaps measures the client.
#: A vLLM decode step plus its streamed response take longer than 0.5 ms.
LATENCY_FLOOR_MS = 0.5
#: A timed run shorter than this (s) gets a caveat: its figures move from run to run.
SHORT_RUN_S = 1.0


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def load_results(d: Path) -> dict:
    """Every result file of a study directory that exists (missing ones are ``None``)."""
    d = Path(d)
    return {
        "meta": _load(d / "meta.json") or {},
        "bench": {lb: _load(d / "bench" / f"{lb}.json") for lb in LABELS},
        "eval": {lb: _load(d / "eval" / f"{lb}.json") for lb in LABELS},
        "logprobs": _load(d / "logprobs" / "divergence.json"),
    }


def _fmt(v: float | None, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{nd}g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.{nd}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------- settings

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ACT_LINE = re.compile(r"activation QDQ enabled in pid \d+: wrapped (\d+) op wrappers.*?settings: (.*?); digest (\S+)")
#: At most this many distinct ``vllm-qdq:`` lines of one log go into the report.
QDQ_LINES_MAX = 16


def server_settings(log: Path) -> dict:
    """What one server ran, read from its start-up log ``log``.

    Returns ``{"log": str, "found": bool, "version": str | None, "args": dict | str | None,
    "qdq": [str, ...]}``: the vLLM version of its banner, its ``non-default args`` line (a dict,
    or the raw text when it is not a literal), and its distinct ``vllm-qdq:`` lines (the prefix,
    process ids and the activation plugin's op list left out), in order. ``found`` is False when
    the file does not exist; nothing is guessed then.
    """
    out: dict = {"log": str(log), "found": log.is_file(), "version": None, "args": None, "qdq": []}
    if not out["found"]:
        return out
    seen: set[str] = set()
    for raw in log.read_text(errors="replace").splitlines():
        line = _ANSI.sub("", raw)
        if out["version"] is None and (m := re.search(r"\bversion (\d+\.\d+\S*)", line)) and "api_utils" in line:
            out["version"] = m.group(1)
        if out["args"] is None and "non-default args: " in line:
            text = line.split("non-default args: ", 1)[1].strip()
            try:
                out["args"] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                out["args"] = text
        if "vllm-qdq: " in line:
            msg = line.split("vllm-qdq: ", 1)[1].strip()
            if m := _ACT_LINE.search(msg):
                msg = f"activation QDQ enabled ({m.group(1)} op wrappers wrapped); settings: {m.group(2)}; digest {m.group(3)}"
            msg = re.sub(r"\bpid \d+", "pid N", msg)
            if msg not in seen and len(seen) < QDQ_LINES_MAX:
                seen.add(msg)
                out["qdq"].append(msg)
    return out


def _args_text(args: dict | str | None) -> str:
    if args is None:
        return "no `non-default args` line"
    if isinstance(args, str):
        return f"`{args}`"
    # vLLM's log line has redacted api_key already (redact_sensitive_args)
    return "`" + ", ".join(f"{k}={v!r}" for k, v in args.items() if k != "model_tag") + "`"


def _step_args(meta: dict) -> dict:
    """The bench arguments the study ran with (``run`` or ``bench`` step of meta.json)."""
    steps = meta.get("steps", {})
    return steps.get("bench") or steps.get("run") or {}


def _workload(res: dict) -> str:
    b, q = res["bench"]["baseline"], res["bench"]["qdq"]
    meta = res["meta"]
    parts = []
    if b and q:
        a = _step_args(meta)
        n = b.get("num_prompts")
        in_len = a.get("input_len") or (round(b["total_input_tokens"] / n) if n and b.get("total_input_tokens") else None)
        out_len = a.get("output_len") or (round(b["total_output_tokens"] / n) if n and b.get("total_output_tokens") else None)
        conc = b.get("max_concurrency") or a.get("max_concurrency")
        parts.append(
            f"bench (`vllm bench serve`, the same on each server): {n} requests of random prompts of about "
            f"{in_len} tokens, each generating {out_len} tokens (EOS ignored); "
            f"{b.get('total_input_tokens')} input and {b.get('total_output_tokens')} output tokens in all per "
            f"server; request rate {b.get('request_rate')}, "
            + (f"at most {conc} at once" if conc else "all requests in flight at once")
            + "; baseline measured first, then QDQ")
    ev = res["eval"]["baseline"] or res["eval"]["qdq"]
    if ev:
        parts.append(f"accuracy (lm-eval `local-completions`): tasks {', '.join(ev.get('tasks') or ['(not recorded)'])}, "
                     f"limit {ev.get('limit') or 'none'}")
    lp = res["logprobs"]
    if lp:
        s = lp["summary"]
        parts.append(f"logprobs: {s['prompts']} prompts scored teacher-forced, top-{lp['k']}")
    return "; ".join(parts) + "." if parts else "no results."


def _caveats(res: dict, stats_on: bool) -> list[str]:
    meta, bn = res["meta"], res["bench"]
    out = []
    prov = meta.get("model_provenance") or {}
    if prov.get("random_weights"):
        out.append("**The model has random weights** (" + prov.get("source", "?") + "): its answers are noise, "
                   "so accuracy is chance level on both servers and the accuracy deltas say nothing about the "
                   "format. KL, top-1 agreement and the per-layer figures still measure what QDQ does to this "
                   "model's numbers; speed figures show the pipeline, not a production model's cost.")
    b, q = bn["baseline"], bn["qdq"]
    if b and q:
        under = [f"{m.upper()} p{p}" for m in LAT_METRICS for p in PCTS
                 if any((x.get(f"p{p}_{m}_ms") is not None and x[f"p{p}_{m}_ms"] < LATENCY_FLOOR_MS) for x in (b, q))]
        if under:
            out.append(f"Latency figures under {LATENCY_FLOOR_MS:g} ms measure the benchmark client, not a server "
                       f"({', '.join(under)}): their ratios are n/a (why: under the latency table).")
        durs = [x.get("duration") for x in (b, q)]
        if any(d is not None and d < SHORT_RUN_S for d in durs):
            out.append(f"A timed run shorter than {SHORT_RUN_S:g} s (baseline {_fmt(durs[0])} s, QDQ {_fmt(durs[1])} s): "
                       "a few milliseconds of scheduling noise move its figures by percents; more prompts "
                       "(`--num-prompts`, STUDY_NUM_PROMPTS) steady them.")
        if stats_on:
            out.append("The QDQ server recorded per-layer statistics (VLLM_QDQ_STATS, files found): each QDQ "
                       "call then also re-runs the reference quantizer to count saturated elements, and its "
                       "speed figures include that work.")
        sb, sq = _server_metrics(b), _server_metrics(q)
        if sb and sq and "prefill_ms" in sb and "prefill_ms" in sq and b.get("mean_ttft_ms") and q.get("mean_ttft_ms"):
            eng = [x.get("queue_ms", 0.0) + x["prefill_ms"] for x in (sb, sq)]
            if (b["mean_ttft_ms"] > q["mean_ttft_ms"]) != (eng[0] > eng[1]):
                fe = [_front_end_ms(x) for x in (b, q)]
                out.append(f"The client TTFT ({_fmt(b['mean_ttft_ms'])} ms baseline, {_fmt(q['mean_ttft_ms'])} ms "
                           f"QDQ) ranks the servers the other way round from their engines' queue + prefill "
                           f"({_fmt(eng[0])} ms, {_fmt(eng[1])} ms): the difference lies outside the engine's "
                           f"scheduler ({_fmt(fe[0])} ms, {_fmt(fe[1])} ms of the client TTFT: the API server, the "
                           "benchmark client, Python processes competing for CPU), not in the model.")
        if sb and sq and all(k in sb and k in sq for k in ("prefill_ms", "decode_ms")):
            eb, eq = sb["prefill_ms"] + sb["decode_ms"], sq["prefill_ms"] + sq["decode_ms"]
            if eq < eb:
                out.append(f"The QDQ server's engine took less time per request than the baseline's (prefill + decode "
                           f"{_fmt(eq)} ms vs {_fmt(eb)} ms) although QDQ only adds work to the same model: the "
                           "machine's load changed between the two timed runs (the baseline ran first), so the "
                           "speed comparison of this run is not sound; repeat the bench on a quiet machine.")
        for lb, x in (("baseline", b), ("qdq", q)):
            mpr = _messages_per_request(x)
            if mpr and mpr[0] < 0.9 * mpr[1]:
                out.append(f"The {NAMES[lb]} server streamed {mpr[0]:.1f} messages per {mpr[1]:.0f}-token request: its "
                           "API server fell behind the engine and sent several tokens per message, so its TTFT "
                           "includes decode steps and its inter-token gaps are not per token.")
        eps = meta.get("endpoints", {})
        hosts = {str(u).split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0] for u in eps.values()}
        if len(eps) == 2 and len(hosts) == 1 and hosts & {"127.0.0.1", "localhost", "::1"}:
            out.append("Both servers and the benchmark client ran on this one machine: the idle server and "
                       "the client share its CPUs with the server measured.")
    return out


def _settings(res: dict, logs: Path, stats_on: bool) -> str:
    meta = res["meta"]
    eps = meta.get("endpoints", {})
    lines = []
    prov = meta.get("model_provenance") or {}
    model = f"**Model** `{meta.get('model', '?')}`"
    if prov.get("random_weights"):
        tiny = (prov.get("tiny") or {}).get("config", {})
        arch = (f": {tiny.get('num_hidden_layers')} layers, hidden {tiny.get('hidden_size')}"
                if tiny else "")
        model += f", **random weights** (built by vllm_qdq.study.tiny{arch})"
    elif prov.get("random_weights") is None and prov:
        model += " (provenance not checked: not a directory where the study ran)"
    served = meta.get("served") or {}
    if served:
        desc = {}
        for lb in LABELS:
            sv = served.get(lb) or {}
            if "error" in sv:
                desc[lb] = f"not answered ({sv['error'][:200]})"
            else:
                desc[lb] = ", ".join(f"`{m.get('id')}` (root `{m.get('root')}`, max_model_len {m.get('max_model_len')})"
                                     for m in sv.get("models", [])) or "no model"
        model += "; served (GET /v1/models): " + "; ".join(f"{NAMES[lb]} {desc[lb]}" for lb in LABELS)
        roots = [tuple(m.get("root") for m in (served.get(lb) or {}).get("models", [])) for lb in LABELS]
        if all(roots) and roots[0] != roots[1]:
            model += " — **the two servers serve different models**"
    lines += [model + ".", ""]
    lines += [f"**Servers**, as their start-up logs (`{logs.name}/serve-<label>.log`) record them"
              + ("; requests carried an API key (VLLM_API_KEY)" if meta.get("api_key_sent") else "") + ":", ""]
    for lb in LABELS:
        st = server_settings(logs / f"serve-{lb}.log")
        head = f"- {NAMES[lb]} ({eps.get(lb, 'endpoint not recorded')}): "
        if not st["found"]:
            lines.append(head + f"settings not recorded: no `{logs.name}/serve-{lb}.log` beside the results "
                         "(the demo and the compose files write it; for servers started otherwise, copy each "
                         "server's log there and run `report` again).")
            continue
        head += f"vLLM {st['version'] or '(version not logged)'}; arguments {_args_text(st['args'])}; "
        if st["qdq"]:
            lines.append(head + "vllm-qdq:")
            lines += [f"  - `{m}`" for m in st["qdq"]]
        else:
            lines.append(head + "no vllm-qdq line (QDQ off).")
    lines += ["", f"**Workload**: {_workload(res)}", ""]
    cav = _caveats(res, stats_on)
    if cav:
        lines += ["**Caveats**:", ""] + [f"- {c}" for c in cav] + [""]
    lines.append(f"Study client: vLLM {meta.get('vllm', '?')}, vllm-qdq {meta.get('vllm_qdq', '?')}.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- accuracy


def _accuracy(res: dict, plots: Path) -> tuple[str, Path | None]:
    ev = res["eval"]
    if not (ev["baseline"] and ev["qdq"]):
        missing = [lb for lb in LABELS if not ev[lb]]
        return f"_Not run: no eval results for {', '.join(missing)} (eval/<label>.json)._", None
    rows, bars = [], []
    for task in sorted(set(ev["baseline"]["results"]) | set(ev["qdq"]["results"])):
        b = ev["baseline"]["results"].get(task, {})
        q = ev["qdq"]["results"].get(task, {})
        for metric in sorted((set(b) | set(q)) - {"sample_len"}):  # sample_len: a count
            bv = b.get(metric, {}).get("value")
            qv = q.get(metric, {}).get("value")
            delta = qv - bv if bv is not None and qv is not None else None
            se = [b.get(metric, {}).get("stderr"), q.get(metric, {}).get("stderr")]
            filt = (b.get(metric) or q.get(metric) or {}).get("filter", "")
            rows.append([task, metric + (f" ({filt})" if filt and filt != "none" else ""),
                         _fmt(bv), _fmt(qv), ("+" if (delta or 0) >= 0 else "") + _fmt(delta),
                         " / ".join(_fmt(s) for s in se), _noise(delta, se)])
            bars.append((f"{task}\n{metric}", bv, qv, delta))
    ns = ev["baseline"].get("n_samples", {})
    text = _table(["task", "metric", "baseline", "QDQ", "delta (QDQ - baseline)", "stderr (b / q)",
                   "abs(delta) / sigma"], rows)
    text += "\n\nDocuments per task: " + ", ".join(f"{t}: {n}" for t, n in sorted(ns.items()))
    if ev["baseline"].get("limit"):
        text += f" (limit {ev['baseline']['limit']})"
    text += (". sigma = sqrt(stderr_b² + stderr_q²); abs(delta) / sigma under 2 is within "
             "sampling noise (n/a: a standard error is missing or zero).")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(bars) + 2), 4))
    xs = range(len(bars))
    w = 0.38
    for i, lb in enumerate(LABELS):
        vals = [(bv if lb == "baseline" else qv) or 0.0 for _, bv, qv, _ in bars]
        ax.bar([x + (i - 0.5) * w for x in xs], vals, w, label=lb, color=COLORS[lb])
    for x, (_, bv, qv, d) in zip(xs, bars, strict=True):
        top = max(bv or 0.0, qv or 0.0)
        ax.annotate(f"Δ {d:+.3f}" if d is not None else "Δ n/a", (x, top), ha="center",
                    va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(list(xs), [n for n, *_ in bars], fontsize=8)
    ax.set_ylabel("score")
    ax.set_ylim(0, max(1.05, max((max(b or 0, q or 0) for _, b, q, _ in bars), default=1) * 1.15))
    ax.set_title("Accuracy per task (Δ = QDQ − baseline)")
    ax.legend()
    fig.tight_layout()
    path = plots / "accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return text, path


def _noise(delta: float | None, se: list[float | None]) -> str:
    """``|delta| / sigma`` with sigma the two standard errors combined; n/a without both."""
    if delta is None or any(x is None or not math.isfinite(x) for x in se):
        return "n/a"
    sigma = math.sqrt(se[0] ** 2 + se[1] ** 2)
    if sigma == 0:
        return "n/a"
    return f"{abs(delta) / sigma:.2f}"


# ----------------------------------------------------------------------------- speed


def _ratio(b: float | None, q: float | None, floor: float | None = None) -> str:
    """QDQ / baseline, or n/a with the reason (a figure missing, zero or under ``floor``)."""
    if b is None or q is None:
        return "n/a (missing)"
    if floor is not None and min(b, q) < floor:
        return f"n/a (under {floor:g} ms)"
    if not b:
        return "n/a (baseline 0)"
    return f"{q / b:.3f}"


def _detail_itl(d: dict) -> list[float] | None:
    """Every inter-token gap (ms) of a result saved with ``--save-detailed``, else None."""
    itls = d.get("itls")
    if not isinstance(itls, list):
        return None
    return [1000.0 * x for per_request in itls if isinstance(per_request, list) for x in per_request]


#: Rows of the "where the time goes" table: (label, source, key); source "client" = the bench
#: result's own field, "server" = its ``study_server_metrics`` (vLLM's /metrics, see vllm_qdq.study).
TIME_ROWS = (
    ("client TTFT", "client", "mean_ttft_ms"),
    ("API server TTFT (arrival -> first token processed)", "server", "ttft_ms"),
    ("engine queue (waiting to be scheduled)", "server", "queue_ms"),
    ("engine prefill (scheduled -> first token)", "server", "prefill_ms"),
    ("engine decode (first -> last token)", "server", "decode_ms"),
    ("API server end-to-end", "server", "e2e_ms"),
    ("client E2EL", "client", "mean_e2el_ms"),
)


def _server_metrics(d: dict) -> dict | None:
    sm = d.get("study_server_metrics")
    return sm if isinstance(sm, dict) and "error" not in sm and sm.get("requests") else None


def _messages_per_request(d: dict) -> tuple[float, float] | None:
    """(streamed messages, output tokens) per request, mean, from a ``--save-detailed`` result."""
    itls, outs = d.get("itls"), d.get("output_lens")
    if not isinstance(itls, list) or not itls or not isinstance(outs, list) or len(outs) != len(itls):
        return None
    return (sum(len(x) + 1 for x in itls) / len(itls), sum(outs) / len(outs))


def _front_end_ms(d: dict) -> float | None:
    """Client TTFT minus the engine's queue + prefill: the front-ends' share of the TTFT (ms)."""
    sm = _server_metrics(d)
    if sm is None or d.get("mean_ttft_ms") is None or "prefill_ms" not in sm:
        return None
    return d["mean_ttft_ms"] - sm.get("queue_ms", 0.0) - sm["prefill_ms"]


def _where_time_goes(bn: dict) -> str:
    sms = {lb: _server_metrics(bn[lb]) for lb in LABELS}
    if not all(sms.values()):
        why = "; ".join(f"{NAMES[lb]}: {(bn[lb].get('study_server_metrics') or {}).get('error', 'not recorded')}"
                        for lb in LABELS if not sms[lb])
        return f"Server-side times: not recorded ({why})."
    rows = []
    for name, src, key in TIME_ROWS:
        vals = [(bn[lb].get(key) if src == "client" else sms[lb].get(key)) for lb in LABELS]
        rows.append([name, _fmt(vals[0]), _fmt(vals[1]), _ratio(vals[0], vals[1], LATENCY_FLOOR_MS)])
    mpr = {lb: _messages_per_request(bn[lb]) for lb in LABELS}
    if all(mpr.values()):
        rows.append(["streamed messages / output tokens per request",
                     *(f"{mpr[lb][0]:.1f} / {mpr[lb][1]:.1f}" for lb in LABELS), ""])
    fe = {lb: _front_end_ms(bn[lb]) for lb in LABELS}
    text = ("Where the time goes (ms, mean per request over the timed run; client: `vllm bench serve`; "
            f"server: vLLM's /metrics histograms, {sms['baseline']['requests']} / {sms['qdq']['requests']} "
            "requests):\n\n" + _table(["", "baseline", "QDQ", "QDQ / baseline"], rows))
    if all(v is not None for v in fe.values()):
        text += (f"\n\nClient TTFT minus the engine's queue and prefill, i.e. time outside the engine's "
                 "scheduler (the API server's HTTP, tokenization and streaming, the benchmark client, and any "
                 "wait before the engine core took the request in): baseline "
                 f"{_fmt(fe['baseline'])} ms, QDQ {_fmt(fe['qdq'])} ms.")
    return text


def _under_floor_note(under: list[str], bn: dict) -> str:
    """Why the ratios of ``under`` are n/a, with the share of sub-floor inter-token gaps when the
    results carry them (``--save-detailed``)."""
    shares = []
    for lb in LABELS:
        gaps = _detail_itl(bn[lb])
        if gaps:
            n = sum(g < LATENCY_FLOOR_MS for g in gaps)
            shares.append(f"{NAMES[lb]} {n} of {len(gaps)} ({100 * n / len(gaps):.0f}%)")
    why = (f"n/a (under {LATENCY_FLOOR_MS:g} ms): {', '.join(under)} of at least one server is under "
           f"{LATENCY_FLOOR_MS:g} ms, which is not server time: `vllm bench serve` timestamps each streamed "
           "message as it parses it, and messages that reach it in one network read (a server that falls "
           "behind flushes several tokens at once) are parsed microseconds apart. A ratio of such figures "
           "compares the client with itself. TPOT (a request's first-to-last-message time over its tokens) "
           "averages over the whole request and falls under the floor only when most of its tokens arrive "
           "at once.")
    if shares:
        why += f" Inter-token gaps under {LATENCY_FLOOR_MS:g} ms: " + "; ".join(shares) + "."
    return why


def _speed(res: dict, plots: Path) -> tuple[str, list[Path]]:
    bn = res["bench"]
    if not (bn["baseline"] and bn["qdq"]):
        missing = [lb for lb in LABELS if not bn[lb]]
        return f"_Not run: no bench results for {', '.join(missing)} (bench/<label>.json)._", []
    b, q = bn["baseline"], bn["qdq"]
    rows = [[label, _fmt(b.get(k)), _fmt(q.get(k)), _ratio(b.get(k), q.get(k))] for k, label in THROUGHPUT_KEYS]
    rows.append(["completed / failed requests", f"{b.get('completed')} / {b.get('failed')}",
                 f"{q.get('completed')} / {q.get('failed')}", ""])
    text = "Throughput:\n\n" + _table(["metric", "baseline", "QDQ", "QDQ / baseline"], rows)
    lrows, under = [], []
    for m in LAT_METRICS:
        for p in PCTS:
            k = f"p{p}_{m}_ms"
            if k in b or k in q:
                r = _ratio(b.get(k), q.get(k), LATENCY_FLOOR_MS)
                if r.startswith("n/a (under"):
                    under.append(f"{m.upper()} p{p}")
                lrows.append([f"{m.upper()} p{p}", _fmt(b.get(k)), _fmt(q.get(k)), r])
    text += "\n\nLatency (ms):\n\n" + _table(["metric", "baseline", "QDQ", "QDQ / baseline"], lrows)
    if under:
        text += "\n\n" + _under_floor_note(under, bn)
    text += "\n\n" + _where_time_goes(bn)
    text += f"\n\nTimed runs: {_fmt(b.get('duration'))} s (baseline), {_fmt(q.get('duration'))} s (QDQ)"
    warm = {b.get("study_num_warmups"), q.get("study_num_warmups")}
    if None in warm:
        text += "; warm-up requests: not recorded."
    elif len(warm) == 1:
        text += f", each after {warm.pop()} untimed warm-up requests."
    else:
        text += (f", after {b['study_num_warmups']} (baseline) / {q['study_num_warmups']} (QDQ) untimed "
                 "warm-up requests: not comparable.")
    text += " Workload and caveats: see the first section."
    plt = _plt()
    # one panel a metric: requests/s and tokens/s differ by the output length, one axis hides one
    fig, axes = plt.subplots(1, len(THROUGHPUT_KEYS), figsize=(3.2 * len(THROUGHPUT_KEYS), 3.4))
    for ax, (k, lab) in zip(axes, THROUGHPUT_KEYS, strict=True):
        vals = [bn[lb].get(k) or 0.0 for lb in LABELS]
        ax.bar(range(len(LABELS)), vals, 0.6, color=[COLORS[lb] for lb in LABELS])
        ax.set_xticks(range(len(LABELS)), list(LABELS))
        ax.set_title(lab)
        if vals[0]:
            ax.annotate(f"x{vals[1] / vals[0]:.2f}", (1, vals[1]), ha="center", va="bottom", fontsize=9)
        ax.margins(y=0.15)
    fig.suptitle("Throughput (higher is better; xN = QDQ / baseline)")
    fig.tight_layout()
    p1 = plots / "throughput.png"
    fig.savefig(p1, dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(LAT_METRICS), figsize=(3.2 * len(LAT_METRICS), 3.4))
    for ax, m in zip(axes, LAT_METRICS, strict=True):
        for i, lb in enumerate(LABELS):
            ax.bar([x + (i - 0.5) * 0.38 for x in range(len(PCTS))],
                   [bn[lb].get(f"p{p}_{m}_ms") or 0.0 for p in PCTS], 0.38, label=lb, color=COLORS[lb])
        ax.set_xticks(range(len(PCTS)), [f"p{p}" for p in PCTS])
        ax.set_title(f"{m.upper()} (ms)")
    # one legend for the figure, beside the title: inside a panel it covers bars
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper right", ncol=len(LABELS), frameon=False)
    fig.suptitle("Latency percentiles (lower is better)")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    p2 = plots / "latency.png"
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return text, [p1, p2]


# ----------------------------------------------------------------------------- logprobs


def _divergence(res: dict, plots: Path) -> tuple[str, Path | None]:
    lp = res["logprobs"]
    if not lp:
        return "_Not run: no logprobs/divergence.json._", None
    s = lp["summary"]
    rows = [
        ["prompts / scored positions", f"{s['prompts']} / {s['positions']}"],
        ["KL mean (nats)", _fmt(s["kl_mean"])],
        ["KL median", _fmt(s["kl_median"])],
        ["KL p90", _fmt(s["kl_p90"])],
        ["KL max", _fmt(s["kl_max"])],
        ["top-1 agreement (teacher-forced)", _fmt(s["top1_agreement"])],
        ["greedy next token identical", _fmt(s["greedy_next_agreement"])],
    ]
    text = _table(["KL(baseline ‖ QDQ), top-k approximation", "value"], rows)
    text += (f"\n\nKL over the baseline's top-{lp['k']} tokens plus the scored token and one "
             "rest bin; a QDQ probability missing from its top-k list is set to its smallest "
             "listed one (see vllm_qdq.study).")
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    kls = [x for p in lp["prompts"] for x in p["kl"]]
    floor = 1e-6
    top = max([10.0, *kls])
    bins = [floor * (top / floor) ** (i / 40) for i in range(41)]  # log-spaced, fixed from 1e-6
    a1.hist([max(x, floor) for x in kls], bins=bins, color=COLORS["qdq"])
    a1.set_xscale("log")
    a1.set_xlabel(f"KL per position (nats, values < {floor:g} shown at {floor:g})")
    a1.set_ylabel("positions")
    a1.set_title(f"KL(baseline ‖ QDQ), mean {_fmt(s['kl_mean'])}")
    agree = [sum(p["top1"]) / len(p["top1"]) if p["top1"] else 0.0 for p in lp["prompts"]]
    a2.bar(range(len(agree)), agree, color=COLORS["baseline"])
    a2.set_ylim(0, 1.05)
    a2.set_xlabel("prompt")
    a2.set_ylabel("top-1 agreement")
    a2.set_title(f"Top-1 agreement per prompt, overall {_fmt(s['top1_agreement'])}")
    fig.tight_layout()
    path = plots / "kl.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return text, path


# ----------------------------------------------------------------------------- per-layer


def _numerics(stats_dir: Path, plots: Path) -> tuple[str, Path | None]:
    from ..stats import FILE_GLOB, KeyStats, load_stats

    files = sorted(stats_dir.rglob(FILE_GLOB)) if stats_dir.is_dir() else []
    if not files:
        return (f"_No per-layer statistics: no {FILE_GLOB} under {stats_dir} (start the QDQ server "
                "with VLLM_QDQ_STATS=<dir>)._"), None
    merged: dict[tuple[str, str], KeyStats] = {}
    for d in sorted({f.parent for f in files}):
        for ks in load_stats(d):
            key = (ks.op, ks.fmt)
            if key in merged:
                merged[key].merge(ks)
            else:
                merged[key] = ks
    every = sorted(merged.values(), key=lambda k: (k.fmt, k.op))
    from ..activation.kv_cache import STAT_SUFFIXES

    attn = [k for k in every if k.op.endswith(STAT_SUFFIXES)]
    keys = [k for k in every if not k.op.endswith(STAT_SUFFIXES)]  # the GEMM activations
    rows = []
    for fmt in sorted({k.fmt for k in keys}):
        ks = [k for k in keys if k.fmt == fmt]
        tot = KeyStats("*", fmt)
        for k in ks:
            tot.merge(k)
        worst = min(ks, key=lambda k: k.sqnr_db)
        rows.append([fmt, str(len(ks)), str(tot.calls), _fmt(tot.sqnr_db), f"{_fmt(worst.sqnr_db)} ({worst.op})",
                     _fmt(tot.max_abs_err), f"{tot.frac_saturated:.2e}", str(tot.nonfinite)])
    text = _table(["format", "layers", "calls", "SQNR dB (all)", "worst layer SQNR dB", "max abs err",
                   "saturated fraction", "NaN outputs"], rows) if keys else "_No GEMM activation QDQ recorded._"
    worst = sorted(keys, key=lambda k: k.sqnr_db)[:10]
    if attn:
        text += "\n\n" + _attention_numerics(attn)
    text += "\n\nWorst layers:\n\n" + _table(
        ["layer / op", "format", "calls", "SQNR dB", "max abs err", "max abs x", "saturated fraction"],
        [[k.op, k.fmt, str(k.calls), _fmt(k.sqnr_db), _fmt(k.max_abs_err), _fmt(k.max_abs_x),
          f"{k.frac_saturated:.2e}"] for k in worst])
    text += f"\n\nFrom {len(files)} file(s) under `{stats_dir}`."
    plt = _plt()
    keys = every
    shown = keys[:60]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(shown) + 2), 4))
    fmts = sorted({k.fmt for k in shown})
    cmap = plt.get_cmap("tab10")
    for i, k in enumerate(shown):
        v = k.sqnr_db if math.isfinite(k.sqnr_db) else 0.0
        ax.bar(i, v, color=cmap(fmts.index(k.fmt) % 10))
    ax.set_xticks(range(len(shown)), [k.op for k in shown], rotation=90, fontsize=6)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title("Per-layer QDQ SQNR" + (f" (first {len(shown)} of {len(keys)})" if len(keys) > len(shown) else ""))
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=cmap(i % 10), label=f) for i, f in enumerate(fmts)], fontsize=8)
    fig.tight_layout()
    path = plots / "layer_sqnr.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return text, path


def _attention_numerics(attn: list) -> str:
    """The KV-cache and attention-query statistics (``<layer>.k_cache``, ``.v_cache``, ``.q``):
    one row per attention layer with the SQNR of K, V and Q, and a total row (energy-weighted
    over every layer)."""
    from ..stats import KeyStats

    parts = {".k_cache": "K", ".v_cache": "V", ".q": "Q"}
    by_layer: dict[str, dict[str, KeyStats]] = {}
    totals: dict[str, KeyStats] = {}
    for k in attn:
        suffix = next(x for x in parts if k.op.endswith(x))
        layer = k.op[: -len(suffix)]
        by_layer.setdefault(layer, {})[parts[suffix]] = k
        tot = totals.setdefault(parts[suffix], KeyStats("*", k.fmt))
        tot.merge(k)

    def cell(ks: KeyStats | None) -> str:
        return f"{_fmt(ks.sqnr_db)} ({ks.fmt})" if ks is not None else "–"

    def natural(name: str) -> list:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

    rows = [[layer, cell(d.get("K")), cell(d.get("V")), cell(d.get("Q")), str(d["K"].calls if "K" in d else 0),
             _fmt(max((x.max_abs_err for x in d.values()), default=0.0))]
            for layer, d in sorted(by_layer.items(), key=lambda kv: natural(kv[0]))]
    rows.append(["all layers", cell(totals.get("K")), cell(totals.get("V")), cell(totals.get("Q")),
                 str(totals["K"].calls if "K" in totals else 0),
                 _fmt(max((x.max_abs_err for x in totals.values()), default=0.0))])
    return ("KV cache and attention query (SQNR dB of the keys and values as written to the paged "
            "cache, and of the query; format in brackets):\n\n"
            + _table(["attention layer", "K SQNR dB", "V SQNR dB", "Q SQNR dB", "cache writes", "max abs err"], rows))


# ----------------------------------------------------------------------------- report


def write_report(d: str | Path, stats_dir: str | Path | None = None, logs_dir: str | Path | None = None) -> Path:
    """Write ``d/report.md`` and ``d/plots/*.png``; returns the report path.

    ``stats_dir``: the QDQ server's ``VLLM_QDQ_STATS`` directory (default ``d/stats``);
    ``logs_dir``: where the servers' logs ``serve-{baseline,qdq}.log`` are (default ``d/logs``).
    Raises ``ValueError`` naming ``d`` when it is not a directory or holds no results.
    """
    d = Path(d)
    if not d.is_dir():
        raise ValueError(f"study directory {str(d)!r} does not exist")
    res = load_results(d)
    if not any([*res["bench"].values(), *res["eval"].values(), res["logprobs"]]):
        raise ValueError(f"{d}: no results (bench/, eval/ or logprobs/); run the study first")
    plots = d / "plots"
    plots.mkdir(exist_ok=True)
    stats = Path(stats_dir) if stats_dir else d / "stats"
    from ..stats import FILE_GLOB

    stats_on = stats.is_dir() and any(stats.rglob(FILE_GLOB))
    parts = ["# QDQ study report", "", "## Settings, model and caveats", "",
             _settings(res, Path(logs_dir) if logs_dir else d / "logs", stats_on), ""]
    acc, acc_png = _accuracy(res, plots)
    spd, spd_pngs = _speed(res, plots)
    div, div_png = _divergence(res, plots)
    num, num_png = _numerics(stats, plots)

    def img(p: Path | None, alt: str) -> list[str]:
        return [f"![{alt}](plots/{p.name})", ""] if p else []

    parts += ["## Accuracy", "", acc, "", *img(acc_png, "accuracy")]
    parts += ["## Throughput and latency", "", spd, ""]
    for p in spd_pngs:
        parts += img(p, p.stem)
    parts += ["## Logprob divergence", "", div, "", *img(div_png, "KL and top-1 agreement")]
    parts += ["## Per-layer QDQ numerics", "", num, "", *img(num_png, "per-layer SQNR")]
    out = d / "report.md"
    out.write_text("\n".join(parts))
    return out
