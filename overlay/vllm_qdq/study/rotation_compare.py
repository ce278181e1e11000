"""Hadamard-128 MXFP4 vs plain MXFP4 vs the baseline on the study's tiny model, CPU (issue 18).

``python -m vllm_qdq.study.rotation_compare [--out out/rotation-study]`` builds ``make demo``'s
tiny random Llama (:func:`vllm_qdq.study.tiny.build_study_llama`, bf16), runs it in vLLM's real
CPU engine (eager) once per variant, each in a process of its own, and writes ``report.md`` with,
side by side:

* **KL** ``KL(baseline || variant)`` per prompt position over the full next-token distribution
  (``prompt_logprobs`` = the vocabulary), mean / p90 / max, and top-1 agreement with the
  baseline;
* **per-layer SQNR** of the activations each linear layer's GEMM receives (``VLLM_QDQ_STATS``,
  the ``qdq`` method's recorder: signal over error of ``x`` against ``x_sim``, summed over every
  served step), one column per variant.

Variants: ``baseline`` (no quantization), ``mxfp4`` (the ``qdq`` method: MXFP4 weights and
activations), ``mxfp4_had128`` (the same with ``"rotate": {"block": 128}`` on weights and
activations: ``QDQ(R x) . QDQ(R w)``), ``mxfp4_had128_random`` (random signs, seed 1).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from .. import config

VARIANTS: dict[str, dict | None] = {
    "baseline": None,
    "mxfp4": {"weight": "mxfp4", "act": "mxfp4"},
    "mxfp4_had128": {"weight": {"format": "mxfp4", "rotate": {"block": 128}},
                     "act": {"format": "mxfp4", "rotate": {"block": 128}}},
    "mxfp4_had128_random": {"weight": {"format": "mxfp4", "rotate": {"block": 128, "seed": 1}},
                            "act": {"format": "mxfp4", "rotate": {"block": 128, "seed": 1}}},
}


def prompts(n: int = 8, length: int = 48, vocab: int = 500, seed: int = 0) -> list[list[int]]:
    import random

    r = random.Random(seed)
    return [[r.randrange(3, vocab) for _ in range(length)] for _ in range(n)]


def worker(spec: dict) -> None:
    """In the variant's process: run the engine, write every prompt position's full log-probs."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    kw = {"model": spec["model"], "dtype": "bfloat16", "max_model_len": 256, "enforce_eager": True, "seed": 0,
          "max_logprobs": spec["vocab"]}
    if spec["qdq"] is not None:
        kw |= {"quantization": "qdq", "hf_overrides": {"quantization_config": {"quant_method": "qdq", **spec["qdq"]}}}
    llm = LLM(**kw)
    sp = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=spec["vocab"])
    rows = []
    for ids in spec["prompts"]:
        out = llm.generate([TokensPrompt(prompt_token_ids=ids)], sp, use_tqdm=False)[0]
        for d in out.prompt_logprobs[1:]:
            lp = [-math.inf] * spec["vocab"]
            for tok, v in d.items():
                if tok < spec["vocab"]:
                    lp[tok] = v.logprob
            rows.append(lp)
    from .. import stats

    stats.flush_if_dirty()
    Path(spec["out"]).write_text(json.dumps(rows))


def _kl(p_log: list[float], q_log: list[float]) -> float:
    return sum(math.exp(a) * (a - b) for a, b in zip(p_log, q_log, strict=True) if a > -math.inf)


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def report(out: Path, runs: dict[str, list[list[float]]], layer_sqnr: dict[str, dict[str, float]]) -> str:
    base = runs["baseline"]
    lines = ["# Hadamard-128 MXFP4 vs MXFP4 vs baseline (tiny study Llama, vLLM CPU engine, bf16, eager)", "",
             "Made by `python -m vllm_qdq.study.rotation_compare`. Weights and activations QDQ'd by the "
             "`qdq` method; the rotated variants compute `QDQ(R x) . QDQ(R w)`.", "",
             "## KL(baseline || variant) per prompt position (nats)", "",
             "| variant | positions | mean KL | p90 KL | max KL | top-1 agreement |", "|---|---:|---:|---:|---:|---:|"]
    for name, rows in runs.items():
        if name == "baseline":
            continue
        kls = [_kl(p, q) for p, q in zip(base, rows, strict=True)]
        agree = sum(max(range(len(p)), key=p.__getitem__) == max(range(len(q)), key=q.__getitem__)
                    for p, q in zip(base, rows, strict=True)) / len(base)
        lines.append(f"| {name} | {len(kls)} | {sum(kls) / len(kls):.4f} | {_pct(kls, 0.9):.4f} | "
                     f"{max(kls):.4f} | {agree:.3f} |")
    names = [n for n in runs if n != "baseline"]
    layers = sorted({k for v in layer_sqnr.values() for k in v})
    lines += ["", "## Per-layer activation SQNR (dB, x vs x_sim over every served step)", "",
              "| layer | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for layer in layers:
        lines.append(f"| {layer} | " + " | ".join(f"{layer_sqnr[n].get(layer, math.nan):.2f}" for n in names) + " |")
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/rotation-study"))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(json.loads(a.worker))
        return 0
    from .tiny import build_study_llama

    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = build_study_llama(out / "model")
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    ps = prompts(vocab=min(vocab, 500))
    runs: dict[str, list[list[float]]] = {}
    layer_sqnr: dict[str, dict[str, float]] = {}
    for name, qdq in VARIANTS.items():
        stats_dir = out / f"stats-{name}"
        env = config.process_env() | {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
        env.pop("VLLM_QDQ_CONFIG", None)
        env.pop("VLLM_QDQ_STATS", None)
        if qdq is not None:
            env["VLLM_QDQ_STATS"] = str(stats_dir)
        spec = {"model": str(model), "vocab": vocab, "prompts": ps, "qdq": qdq, "out": str(out / f"{name}.json")}
        print(f"running {name} ...", flush=True)
        p = subprocess.run([sys.executable, "-m", "vllm_qdq.study.rotation_compare", "--worker", json.dumps(spec)],
                           env=env, capture_output=True, text=True, timeout=900)
        (out / f"{name}.log").write_text(p.stdout + p.stderr)
        if p.returncode != 0:
            print(f"{name} failed (rc={p.returncode}); log: {out / f'{name}.log'}\n{p.stderr[-3000:]}")
            return 1
        runs[name] = json.loads((out / f"{name}.json").read_text())
        if qdq is not None:
            from ..stats import load_stats

            layer_sqnr[name] = {k.op: k.sqnr_db for k in load_stats(stats_dir)}
    print(report(out, runs, layer_sqnr))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
