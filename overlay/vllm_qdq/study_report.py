"""Turn a study directory (see :mod:`vllm_qdq.study`) into ``report.md`` with PNG plots.

Sections, each from its own result files; a section whose files are missing says so in the
report (it is never dropped silently):

* Accuracy: every task and metric of ``eval/{baseline,qdq}.json``, delta = QDQ - baseline,
  with lm-eval's standard errors; plot ``plots/accuracy.png``.
* Throughput and latency: from ``bench/{baseline,qdq}.json`` (``vllm bench serve``): request
  and token throughput, TTFT / TPOT / ITL / E2EL at p50 / p90 / p99 (ms), QDQ / baseline
  ratios; plots ``plots/throughput.png`` and ``plots/latency.png``.
* Logprob divergence: ``logprobs/divergence.json``: KL (top-k approximation) and top-1
  agreement; plot ``plots/kl.png``.
* Per-layer numerics: ``qdq-stats-*.jsonl`` files under the stats directory (default
  ``DIR/stats``): per format, energy-weighted SQNR ``10 log10(sum x^2 / sum (x-y)^2)`` over
  every layer and call, the worst layer, largest abs error and saturated fraction, then the
  worst layers; plot ``plots/layer_sqnr.png``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["load_results", "write_report"]

LABELS = ("baseline", "qdq")
LAT_METRICS = ("ttft", "tpot", "itl", "e2el")
PCTS = (50, 90, 99)
THROUGHPUT_KEYS = (
    ("request_throughput", "requests/s"),
    ("output_throughput", "output tokens/s"),
    ("total_token_throughput", "total tokens/s"),
)
COLORS = {"baseline": "#4C72B0", "qdq": "#DD8452"}


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
                         " / ".join(_fmt(s) for s in se)])
            bars.append((f"{task}\n{metric}", bv, qv, delta))
    ns = ev["baseline"].get("n_samples", {})
    text = _table(["task", "metric", "baseline", "QDQ", "delta (QDQ - baseline)", "stderr (b / q)"], rows)
    text += "\n\nDocuments per task: " + ", ".join(f"{t}: {n}" for t, n in sorted(ns.items()))
    if ev["baseline"].get("limit"):
        text += f" (limit {ev['baseline']['limit']})"
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


# ----------------------------------------------------------------------------- speed


def _ratio(b: float | None, q: float | None) -> str:
    if not b or q is None:
        return "n/a"
    return f"{q / b:.3f}"


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
    lrows = []
    for m in LAT_METRICS:
        for p in PCTS:
            k = f"p{p}_{m}_ms"
            if k in b or k in q:
                lrows.append([f"{m.upper()} p{p}", _fmt(b.get(k)), _fmt(q.get(k)), _ratio(b.get(k), q.get(k))])
    text += "\n\nLatency (ms):\n\n" + _table(["metric", "baseline", "QDQ", "QDQ / baseline"], lrows)
    text += (f"\n\nWorkload: {b.get('num_prompts')} prompts, {b.get('total_input_tokens')} input and "
             f"{b.get('total_output_tokens')} output tokens per server, request rate "
             f"{b.get('request_rate')}, durations {_fmt(b.get('duration'))} s / {_fmt(q.get('duration'))} s")
    warm = {b.get("study_num_warmups"), q.get("study_num_warmups")}
    if None in warm:
        text += "; warm-up requests: not recorded."
    elif len(warm) == 1:
        text += f", each after {warm.pop()} untimed warm-up requests."
    else:
        text += (f", after {b['study_num_warmups']} (baseline) / {q['study_num_warmups']} (QDQ) untimed "
                 "warm-up requests: not comparable.")
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
    from .stats import FILE_GLOB, KeyStats, load_stats

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
    keys = sorted(merged.values(), key=lambda k: (k.fmt, k.op))
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
                   "saturated fraction", "NaN outputs"], rows)
    worst = sorted(keys, key=lambda k: k.sqnr_db)[:10]
    text += "\n\nWorst layers:\n\n" + _table(
        ["layer / op", "format", "calls", "SQNR dB", "max abs err", "max abs x", "saturated fraction"],
        [[k.op, k.fmt, str(k.calls), _fmt(k.sqnr_db), _fmt(k.max_abs_err), _fmt(k.max_abs_x),
          f"{k.frac_saturated:.2e}"] for k in worst])
    text += f"\n\nFrom {len(files)} file(s) under `{stats_dir}`."
    plt = _plt()
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


# ----------------------------------------------------------------------------- report


def write_report(d: str | Path, stats_dir: str | Path | None = None) -> Path:
    """Write ``d/report.md`` and ``d/plots/*.png``; returns the report path."""
    d = Path(d)
    if not d.is_dir():
        raise ValueError(f"study directory {str(d)!r} does not exist")
    res = load_results(d)
    if not any([*res["bench"].values(), *res["eval"].values(), res["logprobs"]]):
        raise ValueError(f"{d}: no results (bench/, eval/ or logprobs/); run the study first")
    plots = d / "plots"
    plots.mkdir(exist_ok=True)
    meta = res["meta"]
    parts = ["# QDQ study report", ""]
    if meta:
        eps = meta.get("endpoints", {})
        parts += [f"Model `{meta.get('model')}`; baseline {eps.get('baseline')}, QDQ {eps.get('qdq')}; "
                  f"vLLM {meta.get('vllm')}, vllm-qdq {meta.get('vllm_qdq')}.", ""]
    acc, acc_png = _accuracy(res, plots)
    spd, spd_pngs = _speed(res, plots)
    div, div_png = _divergence(res, plots)
    num, num_png = _numerics(Path(stats_dir) if stats_dir else d / "stats", plots)

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
