"""The side-by-side study: one model served with QDQ on and off, compared for speed and accuracy.

Runs against any two OpenAI-compatible endpoints (``--qdq URL --baseline URL``, base URLs
without ``/v1``) and writes everything under ``--out DIR``::

    DIR/meta.json                       endpoints, model, sizes, versions
    DIR/bench/{qdq,baseline}.json       ``vllm bench serve --save-result --save-detailed`` output
                                        (plus ``study_num_warmups``)
    DIR/logs/serve-{qdq,baseline}.log   the servers' logs, where the demo and compose write them
    DIR/eval/{qdq,baseline}.json        lm-eval-harness ``local-completions`` results per task
    DIR/logprobs/divergence.json        per-position KL and top-1 agreement (see below)
    DIR/stats/**/qdq-stats-*.jsonl      per-layer QDQ error statistics (``VLLM_QDQ_STATS``)
    DIR/report.md, DIR/plots/*.png      written by ``report``

Subcommands (``python -m vllm_qdq.study SUB ...`` or ``scripts/study.py SUB ...``):
``bench``, ``eval``, ``logprobs`` (one measurement each), ``run`` (all three, then the
report) and ``report DIR``.

Accuracy tasks: ``--tasks local`` (default) runs the two tasks shipped in
:mod:`vllm_qdq.study.tasks` (``qdq_tiny_mc``: multiple choice by log-likelihood;
``qdq_tiny_gen``: greedy exact match), which need no download; any other value is a
comma-separated list of lm-eval task names (e.g. ``gsm8k,mmlu_abstract_algebra``), read from
the Hugging Face cache (``HF_HOME``) or downloaded when the host allows.

API key: when ``VLLM_API_KEY`` is set and not empty (the variable ``vllm serve`` reads for its
own key), every request of the study sends ``Authorization: Bearer <key>``: the logprob and
``/v1/models`` requests directly, ``vllm bench serve`` and lm-eval through the
``OPENAI_API_KEY`` they read (set for them only). The key is never written to a result file.

``meta.json`` also records what each server says it serves (``GET /v1/models``: id, root,
max_model_len) and the model's provenance: a model directory built by :mod:`vllm_qdq.study.tiny`
(marker file :data:`TINY_MARKER`) has random weights, which the report states.

Logprob divergence: each prompt of the fixed set (``study/tasks/logprob_prompts.jsonl``) is
sent once to each endpoint with ``echo``, ``max_tokens=1`` and ``logprobs=k``, so both score
the *same* token sequence (teacher forcing) and return, at every position, their ``k`` most
likely next tokens (by id). Per position, with ``P`` the baseline and ``Q`` the QDQ server:

* support ``S`` = the baseline's top-``k`` tokens plus the actual next token (known exactly
  on both sides), and one bin for everything else (``1 - sum_S``);
* ``Q`` of a token of ``S`` missing from the QDQ server's list is taken as the QDQ server's
  smallest listed probability (an upper bound on it);
* ``KL(P || Q)`` is computed over ``S`` plus the rest bin. Merging tokens into one bin never
  increases KL, so with exact ``Q`` values this is a lower bound of the full-vocabulary KL;
  the imputation makes it an approximation (exact when both lists cover the same tokens).
* top-1 agreement: the two servers' most likely next tokens are the same.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .. import config
from .tiny import MARKER as _TINY_MARKER

__all__ = [
    "API_KEY_ENV",
    "ENDPOINTS",
    "LOCAL_TASKS",
    "TASKS_DIR",
    "TINY_MARKER",
    "api_key",
    "main",
    "model_provenance",
    "position_divergence",
    "run_bench",
    "run_eval",
    "run_logprobs",
    "summarize_divergence",
    "wait_healthy",
]

#: The two servers of the study, in report order.
ENDPOINTS: tuple[str, ...] = ("baseline", "qdq")
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
#: The tasks ``--tasks local`` runs (shipped with the package, no download).
LOCAL_TASKS: tuple[str, ...] = ("qdq_tiny_mc", "qdq_tiny_gen")
PROMPTS_FILE = TASKS_DIR / "logprob_prompts.jsonl"
PERCENTILES = (50, 90, 99)
#: The variable holding the servers' API key (``vllm serve`` reads the same one).
API_KEY_ENV = config.API_KEY_ENV
#: The file :func:`vllm_qdq.study.tiny.build_study_llama` writes into the model directory it builds.
TINY_MARKER = _TINY_MARKER


# ----------------------------------------------------------------------------- helpers


def api_key() -> str | None:
    """The servers' API key from ``VLLM_API_KEY``; ``None`` when unset or empty (no key)."""
    return config.api_key()


def _headers(json_body: bool = False) -> dict[str, str]:
    h = {"Content-Type": "application/json"} if json_body else {}
    if key := api_key():
        h["Authorization"] = f"Bearer {key}"
    return h


def _http_error(method: str, url: str, e: urllib.error.HTTPError) -> RuntimeError:
    hint = ""
    if e.code == 401:
        hint = (f" (the server wants an API key: set {API_KEY_ENV} to the servers' key)" if not api_key()
                else f" (the server refused the key in {API_KEY_ENV})")
    return RuntimeError(f"{method} {url} -> HTTP {e.code}{hint}: {e.read()[:500]!r}")


def _post(url: str, body: dict, timeout: float = 120.0) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=_headers(json_body=True))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise _http_error("POST", url, e) from None


def _get(url: str, timeout: float = 30.0) -> dict:
    req = urllib.request.Request(url, headers=_headers())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise _http_error("GET", url, e) from None


def model_provenance(model: str) -> dict:
    """What the study can tell about ``model`` from where it runs: ``random_weights`` is True for a
    directory built by :mod:`vllm_qdq.study.tiny` (its marker :data:`TINY_MARKER`), False for a directory
    without it, None when ``model`` is not a directory here (a hub id: unknown)."""
    path = Path(model)
    if not path.is_dir():
        return {"random_weights": None, "source": f"{model!r} is not a directory here"}
    marker = path / TINY_MARKER
    if marker.is_file():
        try:
            built = json.loads(marker.read_text())
        except (OSError, ValueError) as e:
            built = {"unreadable": f"{e.__class__.__name__}: {e}"}
        return {"random_weights": True, "source": f"{marker} (written by vllm_qdq.study.tiny)", "tiny": built}
    return {"random_weights": False, "source": f"no {TINY_MARKER} in {path}"}


def served_models(url: str) -> dict:
    """``GET url/v1/models``, condensed to id / root / max_model_len per model (or the error)."""
    try:
        data = _get(f"{url}/v1/models")
        return {"models": [{k: m.get(k) for k in ("id", "root", "max_model_len")} for m in data.get("data", [])]}
    except (RuntimeError, urllib.error.URLError, OSError, ValueError) as e:
        return {"error": f"{e.__class__.__name__}: {e}"}


def wait_healthy(url: str, timeout: float = 600.0) -> None:
    """Wait until ``url/health`` answers 200; raises ``TimeoutError`` naming the URL."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/health did not answer 200 within {timeout:.0f} s")
        time.sleep(1.0)


def _endpoints(args: argparse.Namespace) -> dict[str, str]:
    eps = {"baseline": args.baseline.rstrip("/"), "qdq": args.qdq.rstrip("/")}
    for name, url in eps.items():
        if not url.startswith(("http://", "https://")) or url.endswith("/v1"):
            raise ValueError(f"--{name}={url!r}: give the server's base URL, e.g. http://localhost:8000")
    return eps


def _write_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- bench


#: vLLM's per-request histograms read around the timed run (``/metrics``): key -> metric name.
SERVER_METRICS: dict[str, str] = {
    "queue_ms": "vllm:request_queue_time_seconds",       # engine: waiting to be scheduled
    "prefill_ms": "vllm:request_prefill_time_seconds",   # engine: scheduled -> first token
    "decode_ms": "vllm:request_decode_time_seconds",     # engine: first token -> last token
    "ttft_ms": "vllm:time_to_first_token_seconds",       # API server: arrival -> first token processed
    "e2e_ms": "vllm:e2e_request_latency_seconds",        # API server: arrival -> finished
}
_PROM_LINE = re.compile(r"^(vllm:[A-Za-z0-9_:]+)_(sum|count)(?:\{[^}]*\})? (\S+)$", re.M)


def _metrics_snapshot(url: str) -> dict[str, float]:
    """The ``_sum`` / ``_count`` of every ``vllm:`` histogram at ``url/metrics``, summed over labels."""
    req = urllib.request.Request(f"{url}/metrics", headers=_headers())
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read().decode(errors="replace")
    snap: dict[str, float] = {}
    for name, kind, value in _PROM_LINE.findall(text):
        try:
            snap[f"{name}_{kind}"] = snap.get(f"{name}_{kind}", 0.0) + float(value)
        except ValueError:
            continue
    return snap


def _server_means(before: dict[str, float], after: dict[str, float]) -> dict:
    """Per-request means (ms) of :data:`SERVER_METRICS` between two snapshots, and the request count."""
    out: dict = {}
    for key, name in SERVER_METRICS.items():
        n = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
        if f"{name}_sum" in after and n > 0:
            out[key] = 1000.0 * (after[f"{name}_sum"] - before.get(f"{name}_sum", 0.0)) / n
        if key == "e2e_ms":
            out["requests"] = int(n)
    return out


def run_bench(url: str, label: str, model: str, out: Path, *, tokenizer: str | None = None,
              num_prompts: int = 16, input_len: int = 32, output_len: int = 16,
              max_concurrency: int | None = None, num_warmups: int = 0) -> Path:
    """``vllm bench serve`` (random prompts, fixed lengths) against ``url``; returns its JSON.

    ``num_warmups`` untimed requests run first, concurrently (at most ``max_concurrency``): a
    ``vllm bench serve`` of its own with the same sizes and request shape but other prompts
    (``--seed 1``: no prefix shared with the timed ones), whose result is not kept (its output:
    ``bench/<label>-warmup.log``). A server's first batch of a new size pays one-off costs (kernel
    selection, weight repacking on the CPU engine, allocator growth, first-use code paths) that
    would otherwise land in the first timed requests of whichever server happens to be measured
    cold.

    Around the timed run (and only it: the warm-up is over by then and the timed bench's own
    warm-up and ready-check request are off) the server's ``/metrics`` histograms are read, and
    their per-request means are kept in the result as ``study_server_metrics``
    (:data:`SERVER_METRICS`; ``{"error": ...}`` when the server has no such metrics): the engine's
    queue / prefill / decode times beside the client's TTFT tell the model's time from the
    front-ends' (API server, benchmark client).
    """
    if num_warmups < 0:
        raise ValueError(f"num_warmups={num_warmups!r}; accepted: an integer >= 0")
    from ..vllm_cli import vllm_command

    result_dir = out / "bench"
    result_dir.mkdir(parents=True, exist_ok=True)
    common = [
        *vllm_command(), "bench", "serve",
        "--backend", "vllm", "--base-url", url, "--endpoint", "/v1/completions",
        "--model", model, "--tokenizer", tokenizer or model,
        "--dataset-name", "random", "--random-input-len", str(input_len),
        "--random-output-len", str(output_len), "--ignore-eos",
        "--disable-tqdm", "--num-warmups", "0",
    ]
    if max_concurrency:
        common += ["--max-concurrency", str(max_concurrency)]
    cmd = [
        *common, "--num-prompts", str(num_prompts), "--seed", "0",
        "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--metric-percentiles", ",".join(map(str, PERCENTILES)),
        "--save-result", "--result-dir", str(result_dir), "--result-filename", f"{label}.json",
        "--label", label,
        "--ready-check-timeout-sec", "0",  # the warm-up checked readiness; no extra request in /metrics
        "--save-detailed",  # per-request TTFTs and inter-token gaps: the report checks the latency floor
    ]
    if num_warmups:
        warm = [*common, "--num-prompts", str(num_warmups), "--seed", "1"]
        print(f"study: bench {label}: warm-up, {num_warmups} untimed requests: {' '.join(warm)}", flush=True)
        with config.client_key_env(api_key()) as env:
            proc = subprocess.run(warm, capture_output=True, text=True, env=env)
        (result_dir / f"{label}-warmup.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"warm-up (vllm bench serve) against {url} failed (exit {proc.returncode}); "
                               f"last output:\n{(proc.stdout + proc.stderr)[-3000:]}")
    means: dict = {}
    metrics_error: str | None = None
    try:
        before: dict[str, float] | None = _metrics_snapshot(url)
    except (urllib.error.URLError, OSError, ValueError) as e:
        before, metrics_error = None, f"{e.__class__.__name__}: {e}"
    print(f"study: bench {label}: {' '.join(cmd)}", flush=True)
    with config.client_key_env(api_key()) as env:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    (result_dir / f"{label}.log").write_text(proc.stdout + proc.stderr)
    path = result_dir / f"{label}.json"
    if proc.returncode != 0 or not path.is_file():
        raise RuntimeError(
            f"vllm bench serve against {url} failed (exit {proc.returncode}); "
            f"last output:\n{(proc.stdout + proc.stderr)[-3000:]}"
        )
    data = json.loads(path.read_text())
    if not data.get("completed"):
        raise RuntimeError(f"vllm bench serve against {url}: no request completed ({path})")
    if before is not None:
        try:
            means = _server_means(before, _metrics_snapshot(url))
            metrics_error = None if means.get("requests") else "no vLLM request histograms at /metrics"
        except (urllib.error.URLError, OSError, ValueError) as e:
            metrics_error = f"{e.__class__.__name__}: {e}"
    data["study_server_metrics"] = {"error": metrics_error} if metrics_error else means
    data["study_num_warmups"] = num_warmups  # kept with the result it qualifies (the report reads it)
    _write_json(path, data)
    return path


# ----------------------------------------------------------------------------- eval


def _task_list(tasks: str) -> list[str]:
    if tasks.strip() == "local":
        return list(LOCAL_TASKS)
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise ValueError(f"--tasks={tasks!r}: give 'local' or a comma-separated list of lm-eval tasks")
    return names


def run_eval(url: str, label: str, model: str, out: Path, *, tasks: str = "local",
             tokenizer: str | None = None, limit: int | None = None, num_concurrent: int = 4,
             num_fewshot: int | None = None) -> Path:
    """lm-eval-harness ``local-completions`` on ``tasks`` against ``url``; writes a condensed JSON."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    names = _task_list(tasks)
    model_args = {
        "model": model,
        "base_url": f"{url}/v1/completions",
        "tokenizer_backend": "huggingface",
        "tokenizer": tokenizer or model,
        "num_concurrent": num_concurrent,
        "max_retries": 3,
        "tokenized_requests": False,
        "seed": 0,
    }
    print(f"study: eval {label}: tasks={names} limit={limit} url={url}", flush=True)
    t0 = time.monotonic()
    with config.client_key_env(api_key()):  # local-completions sends OPENAI_API_KEY (a model arg would be logged)
        res = lm_eval.simple_evaluate(
            model="local-completions",
            model_args=model_args,
            tasks=names,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=TaskManager(include_path=str(TASKS_DIR)),
            log_samples=False,
            random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
        )
    if res is None:
        raise RuntimeError(f"lm-eval returned no results for {label} ({url})")
    condensed: dict[str, dict] = {}
    for task, metrics in res["results"].items():
        row = {}
        for key, value in metrics.items():
            if key == "alias" or not isinstance(value, (int, float)) or key.startswith("sample_len"):
                continue
            metric, _, filt = key.partition(",")
            if metric.endswith("_stderr"):
                row.setdefault(metric[: -len("_stderr")], {})["stderr"] = value
            else:
                row.setdefault(metric, {}).update(value=value, filter=filt)
        condensed[task] = {m: v for m, v in row.items() if "value" in v}
    n_samples = {t: (v.get("effective") if isinstance(v, dict) else v) for t, v in res.get("n-samples", {}).items()}
    doc = {"label": label, "url": url, "model": model, "tasks": names, "limit": limit,
           "results": condensed, "n_samples": n_samples, "seconds": round(time.monotonic() - t0, 1)}
    return _write_json(out / "eval" / f"{label}.json", doc)


# ----------------------------------------------------------------------------- logprobs


def _top(d: dict[str, float] | None, k: int) -> list[tuple[str, float]]:
    if not d:
        return []
    return sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def position_divergence(base: dict[str, float], qdq: dict[str, float], actual: str,
                        base_actual_lp: float, qdq_actual_lp: float, k: int) -> tuple[float, bool]:
    """KL(P_base || P_qdq) on the top-k support plus a rest bin, and top-1 agreement (see module doc).

    ``base``/``qdq``: token -> logprob as returned (may include the actual token beyond top-k).
    """
    btop = _top(base, k)
    qtop = _top(qdq, k)
    if not btop or not qtop:
        raise ValueError("position_divergence: empty logprob lists")
    p = {t: math.exp(lp) for t, lp in btop}
    q_known = {t: math.exp(lp) for t, lp in qdq.items()}
    p[actual] = math.exp(base_actual_lp)
    q_known[actual] = math.exp(qdq_actual_lp)
    q_floor = min(math.exp(lp) for _, lp in qtop)
    q = {t: q_known.get(t, q_floor) for t in p}
    eps = 1e-12
    p_rest = max(0.0, 1.0 - sum(p.values()))
    q_rest = max(eps, 1.0 - sum(q.values()))
    kl = sum(pv * math.log(pv / max(q[t], eps)) for t, pv in p.items() if pv > 0)
    if p_rest > 0:
        kl += p_rest * math.log(p_rest / q_rest)
    return max(kl, 0.0), btop[0][0] == qtop[0][0]


def _score(url: str, model: str, prompt: str, k: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
            "logprobs": k, "echo": True, "return_tokens_as_token_ids": True}
    lp = _post(f"{url}/v1/completions", body)["choices"][0]["logprobs"]
    return {"tokens": lp["tokens"], "token_logprobs": lp["token_logprobs"], "top": lp["top_logprobs"]}


def run_logprobs(eps: dict[str, str], model: str, out: Path, *, k: int = 10,
                 prompts_file: Path = PROMPTS_FILE) -> Path:
    """Score the fixed prompt set on both endpoints and write per-position divergence."""
    prompts = [json.loads(line)["prompt"] for line in prompts_file.read_text().splitlines() if line.strip()]
    per_prompt = []
    for i, prompt in enumerate(prompts):
        b = _score(eps["baseline"], model, prompt, k)
        q = _score(eps["qdq"], model, prompt, k)
        # The prompt's own tokens must match; the last (generated) token may differ.
        n = len(b["tokens"]) - 1
        if b["tokens"][:n] != q["tokens"][:n]:
            raise RuntimeError(f"prompt {i}: the two servers tokenized it differently")
        kls, agree = [], []
        for pos in range(1, n):  # position 0 has no prediction; scored positions: 1..n-1
            kl, same = position_divergence(
                b["top"][pos], q["top"][pos], b["tokens"][pos],
                b["token_logprobs"][pos], q["token_logprobs"][pos], k,
            )
            kls.append(kl)
            agree.append(same)
        # the generated token's position: top-1 agreement from the generated tokens themselves
        per_prompt.append({"prompt": prompt, "kl": kls, "top1": agree,
                           "next_same": b["tokens"][n] == q["tokens"][n]})
    doc = {"k": k, "model": model, "endpoints": eps, "prompts": per_prompt,
           "summary": summarize_divergence(per_prompt)}
    return _write_json(out / "logprobs" / "divergence.json", doc)


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    if not s:
        return math.nan
    i = (len(s) - 1) * p / 100.0
    lo, hi = math.floor(i), math.ceil(i)
    return s[lo] + (s[hi] - s[lo]) * (i - lo)


def summarize_divergence(per_prompt: list[dict]) -> dict:
    """Mean / median / p90 / max KL and top-1 agreement over every scored position."""
    kls = [x for p in per_prompt for x in p["kl"]]
    top1 = [x for p in per_prompt for x in p["top1"]]
    return {
        "positions": len(kls),
        "prompts": len(per_prompt),
        "kl_mean": sum(kls) / len(kls) if kls else math.nan,
        "kl_median": _pct(kls, 50),
        "kl_p90": _pct(kls, 90),
        "kl_max": max(kls) if kls else math.nan,
        "top1_agreement": sum(top1) / len(top1) if top1 else math.nan,
        "greedy_next_agreement": (sum(p["next_same"] for p in per_prompt) / len(per_prompt))
        if per_prompt else math.nan,
    }


# ----------------------------------------------------------------------------- CLI


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--qdq", required=True, help="base URL of the server with QDQ on (no /v1)")
    p.add_argument("--baseline", required=True, help="base URL of the server with QDQ off")
    p.add_argument("--model", required=True, help="model name as served (and tokenizer, by default)")
    p.add_argument("--tokenizer", default=None, help="tokenizer path or id (default: --model)")
    p.add_argument("--out", required=True, type=Path, help="result directory")
    p.add_argument("--wait", type=float, default=0.0, help="wait up to this many s for /health")


def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-prompts", type=int, default=config.env_int("STUDY_NUM_PROMPTS", 16))
    p.add_argument("--input-len", type=int, default=config.env_int("STUDY_INPUT_LEN", 32))
    p.add_argument("--output-len", type=int, default=config.env_int("STUDY_OUTPUT_LEN", 16))
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--num-warmups", type=int, default=config.env_int("STUDY_NUM_WARMUPS", None, optional=True),
                   help="untimed requests before each server's timed run (default: one full batch, "
                        "min(num-prompts, max-concurrency))")


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default=config.env_str("STUDY_TASKS", "local"),
                   help="'local' (shipped tasks) or comma-separated lm-eval task names")
    p.add_argument("--limit", type=int, default=config.env_int("STUDY_LIMIT", None, optional=True),
                   help="at most this many documents per task")
    p.add_argument("--num-concurrent", type=int, default=4)
    p.add_argument("--num-fewshot", type=int, default=None)


def _add_logprobs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--logprobs-k", type=int, default=10, help="top-k logprobs per position (<= 20)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="study", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, adders, help_ in (
        ("bench", (_add_bench,), "throughput and latency (vllm bench serve) on both endpoints"),
        ("eval", (_add_eval,), "accuracy (lm-eval local-completions) on both endpoints"),
        ("logprobs", (_add_logprobs,), "KL and top-1 agreement on the fixed prompt set"),
        ("run", (_add_bench, _add_eval, _add_logprobs), "bench + eval + logprobs, then report"),
    ):
        p = sub.add_parser(name, help=help_)
        _add_common(p)
        for add in adders:
            add(p)
    p = sub.add_parser("report", help="write DIR/report.md and DIR/plots/*.png from the results")
    p.add_argument("dir", type=Path)
    p.add_argument("--stats", type=Path, default=None,
                   help="VLLM_QDQ_STATS directory of the QDQ server (default: DIR/stats)")
    p.add_argument("--logs", type=Path, default=None,
                   help="directory of the servers' logs serve-baseline.log / serve-qdq.log, read for the "
                        "settings they ran (default: DIR/logs)")
    return ap


def _meta(args: argparse.Namespace, eps: dict[str, str]) -> None:
    path = args.out / "meta.json"
    meta = json.loads(path.read_text()) if path.is_file() else {}
    try:
        import vllm

        vllm_version = vllm.__version__
    except Exception as e:
        vllm_version = f"unavailable ({e.__class__.__name__})"
    from .. import __version__

    meta.update(model=args.model, tokenizer=args.tokenizer or args.model, endpoints=eps,
                vllm=vllm_version, vllm_qdq=__version__, model_provenance=model_provenance(args.model),
                served={label: served_models(url) for label, url in eps.items()},
                api_key_sent=api_key() is not None)
    meta.setdefault("steps", {})[args.cmd] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "cmd"
    }
    _write_json(path, meta)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "report":
        from .report import write_report

        path = write_report(args.dir, stats_dir=args.stats, logs_dir=args.logs)
        print(f"study: report written to {path}")
        return 0
    eps = _endpoints(args)
    if args.wait:
        for url in eps.values():
            wait_healthy(url, args.wait)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.cmd in ("bench", "run"):
        if args.num_warmups is None:
            args.num_warmups = min(args.num_prompts, args.max_concurrency or args.num_prompts)
    _meta(args, eps)
    if args.cmd in ("bench", "run"):
        for label in ENDPOINTS:
            run_bench(eps[label], label, args.model, args.out, tokenizer=args.tokenizer,
                      num_prompts=args.num_prompts, input_len=args.input_len,
                      output_len=args.output_len, max_concurrency=args.max_concurrency,
                      num_warmups=args.num_warmups)
    if args.cmd in ("eval", "run"):
        for label in ENDPOINTS:
            run_eval(eps[label], label, args.model, args.out, tasks=args.tasks,
                     tokenizer=args.tokenizer, limit=args.limit,
                     num_concurrent=args.num_concurrent, num_fewshot=args.num_fewshot)
    if args.cmd in ("logprobs", "run"):
        path = run_logprobs(eps, args.model, args.out, k=args.logprobs_k)
        s = json.loads(path.read_text())["summary"]
        print(f"study: logprobs: KL mean {s['kl_mean']:.3g} over {s['positions']} positions, "
              f"top-1 agreement {s['top1_agreement']:.3f}")
    if args.cmd == "run":
        from .report import write_report

        print(f"study: report written to {write_report(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
