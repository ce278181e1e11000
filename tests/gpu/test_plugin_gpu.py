"""GPU end-to-end: activation QDQ inside vLLM 0.30.0's Marlin kernels (H100, ``pytest -m gpu``).

Models are built on the spot (vllm_qdq.study.tiny):

* a tiny random gpt-oss with MXFP4 experts in the gpt-oss checkpoint layout, run with
  ``moe_backend="marlin"`` -> ``moe_wna16_marlin_gemm`` (gate-up and down);
* a tiny random Llama quantized online to FP8 with ``linear_backend="marlin"`` ->
  ``marlin_gemm`` (FP8 weight-only Marlin) for every dense layer.

QDQ off and QDQ on run in two driver processes side by side (vllm_qdq.study.llm_run: a fixed
KV-cache size lets their engines share the GPU), each running eager then compiled. Checked, per
model: QDQ on changes the prompt logprobs vs off; the trace lines come from the engine process
(not the driver); and with vLLM's defaults (torch.compile + CUDA graphs; for gpt-oss without
Inductor's choices by timing, :data:`NO_TIMED_PICKS`) QDQ changes the results
as under ``enforce_eager`` (compiled-on matches eager-on as closely as compiled-off matches
eager-off, and is far from compiled-off). Off and on share one ``VLLM_CACHE_ROOT``: the QDQ-on
compiled engine must use a compile-cache directory of its own, read from each engine's
"Using cache directory" line (an artifact cached without QDQ reused with it would also show up
as "on == off").

Tiny models go to ``SMOKE_MODELS`` when set (the smoke suite: built once, shared with its serve
step), else to pytest's temporary directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.support.inductor_fingerprint import NO_TIMED_PICKS, print_fingerprint

pytestmark = pytest.mark.gpu

TRACE = "[vllm_qdq trace]"


def _env(qdq: bool, cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(VLLM_QDQ="1" if qdq else "0", VLLM_QDQ_TRACE="1", VLLM_CACHE_ROOT=str(cache),
               VLLM_WORKER_MULTIPROC_METHOD="spawn",
               QDQ_TEST_GPU_UTIL=os.environ.get("QDQ_TEST_GPU_UTIL", "0.1"))
    return env


def run_off_on(model: Path, runs: dict[str, dict], cache: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """Each ``LLM(**kwargs)`` of ``runs`` in turn, QDQ off in one driver process and QDQ on in
    another, the two side by side; ``(off, on)``, each ``{name: {"logprobs", "trace", "driver",
    "log", "start_s"}}``."""
    from vllm_qdq.study.llm_run import drive_many

    got = drive_many({"qdq-off": (model, runs, _env(False, cache)), "qdq-on": (model, runs, _env(True, cache))})
    for tag, (rc, out, res) in got.items():
        assert rc == 0, f"{tag} driver failed:\n" + out[-6000:]
        assert set(res) == set(runs), out[-6000:]
        for r in res.values():
            # engine-process lines carry vLLM's "(EngineCore pid=...)" prefix: keep from the marker on
            r["trace"] = [ln[ln.index(TRACE):] for ln in r["log"].splitlines() if TRACE in ln]
    return got["qdq-off"][2], got["qdq-on"][2]


def diff(a: dict, b: dict) -> float:
    """Largest absolute difference between two runs' prompt logprobs."""
    return max(abs(x - y) for ra, rb in zip(a["logprobs"], b["logprobs"], strict=True)
               for x, y in zip(ra, rb, strict=True))


def per_prompt(a: dict, b: dict) -> str:
    """Each prompt's largest |difference| and the position where it is (a diagnosis aid: one bad
    prompt or position vs differences everywhere)."""
    out = []
    for ra, rb in zip(a["logprobs"], b["logprobs"], strict=True):
        d = [abs(x - y) for x, y in zip(ra, rb, strict=True)]
        k = max(range(len(d)), key=d.__getitem__)
        out.append(f"{d[k]:.3g}@{k}/{len(d)}")
    return " ".join(out)


def compile_hashes(cache: Path) -> set[str]:
    """The compiled-artifact directories (one per compile-cache hash) under ``VLLM_CACHE_ROOT``."""
    root = cache / "torch_compile_cache"
    return {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()


def used_hash(run: dict) -> str | None:
    """The compile-cache hash an engine used, from its "Using cache directory" log line."""
    m = re.search(r"Using cache directory: \S*torch_compile_cache/([0-9a-f]+)/", run["log"])
    return m.group(1) if m else None


def check(model: Path, llm: dict, tmp: Path, op: str, weight: str, fmt: str) -> dict:
    cache = tmp / "cache"
    runs = {"eager": {**llm, "enforce_eager": True}, "compiled": llm}
    # QDQ off and on side by side, one shared compile cache: a compile artifact made without
    # QDQ must not be used with it
    off, on = run_off_on(model, runs, cache)
    off_e, off_c, on_e, on_c = off["eager"], off["compiled"], on["eager"], on["compiled"]
    figures = {
        "eager: |on-off|": diff(on_e, off_e),
        "compiled: |on-off|": diff(on_c, off_c),
        "on: |compiled-eager|": diff(on_c, on_e),
        "off: |compiled-eager|": diff(off_c, off_e),
    }
    print(f"\n{op}: " + ", ".join(f"{k} = {v:.4g}" for k, v in figures.items())
          + f"; engine start s: off {off_e['start_s']}/{off_c['start_s']}, on {on_e['start_s']}/{on_c['start_s']}")
    for label, (x, y) in {"off compiled-eager": (off_c, off_e), "on compiled-eager": (on_c, on_e),
                          "compiled on-off": (on_c, off_c)}.items():
        print(f"per prompt, {label}: {per_prompt(x, y)}; generated {x.get('generated')} / {y.get('generated')}")
    h_off, h_on = used_hash(off["compiled"]), used_hash(on["compiled"])
    print(f"compile-cache hash: off {h_off}, on {h_on}; under the root: {sorted(compile_hashes(cache))}")
    print_fingerprint(op, cache, {"off": off_c["log"], "on": on_c["log"]})
    assert h_off and h_off in compile_hashes(cache), "the compiled QDQ-off engine used no compile cache"
    assert h_on and h_on in compile_hashes(cache), "the compiled QDQ-on engine used no compile cache"
    assert h_on != h_off, f"QDQ on used the compile cache of QDQ off ({h_off})"
    # trace: wrapped calls, in the engine process, with the expected routing, eager and compiled
    want = f"{op} "
    for name, r in (("eager", on_e), ("compiled", on_c)):
        lines = [ln for ln in r["trace"] if want in ln and f"weight={weight}" in ln and f"fmt={fmt}" in ln]
        assert lines, f"{name}: no trace line for {want}\n" + "\n".join(r["trace"][:20])
        pids = {int(re.search(r"pid=(\d+)", ln).group(1)) for ln in lines}
        assert pids - {r["driver"]}, f"{name}: trace lines only from the driver process"
    assert not off_e["trace"] and not off_c["trace"], "QDQ off must not wrap anything"
    # QDQ changes results, eagerly and compiled
    assert figures["eager: |on-off|"] > 1e-3
    assert figures["compiled: |on-off|"] > 1e-3
    # compiled + CUDA graphs: QDQ acts there as strongly as eagerly, far above the compile-vs-eager
    # noise of QDQ off (so no artifact compiled without QDQ was reused, and graph replays QDQ).
    # compiled-on is not compared with eager-on element for element: 4-bit activation QDQ turns
    # the bf16 reordering noise of torch.compile (off: |compiled-eager|) into whole grid steps.
    noise = max(figures["off: |compiled-eager|"], 1e-3)
    assert figures["compiled: |on-off|"] > 5 * noise, figures
    assert 0.25 < figures["compiled: |on-off|"] / figures["eager: |on-off|"] < 4.0, figures
    return figures


def models_dir(tmp: Path) -> Path:
    return Path(os.environ["SMOKE_MODELS"]) if os.environ.get("SMOKE_MODELS") else tmp


def test_gptoss_mxfp4_marlin_moe(tmp_path):
    from vllm_qdq.study.tiny import build_gpu_model

    model = build_gpu_model("gptoss", models_dir(tmp_path))
    # no choice made by timing (NO_TIMED_PICKS): beside other compiling engines (the smoke suite's
    # checks call) Inductor twice built the QDQ-off compiled gpt-oss with 7 kernels, 3 of them
    # combo, and 8 timed picks where it builds 6, 2 and 5 alone, and both times that build landed
    # far from eager with QDQ off (2026-12-05: 0.747 nats in plugin-exact; 05e: 2.77 max here,
    # first generated token changed), which no QDQ check can see through. The dense model keeps
    # vLLM's defaults whole, timed picks included; so do the method, KV-cache, serve and study steps.
    # A compilation_config replaces llm_run's default one whole: its CUDA graph sizes restated (the
    # engines use at most 8 sequences; without them each captured vLLM's default sizes, to 512).
    compiled = {"cudagraph_capture_sizes": [1, 2, 4, 8], "inductor_compile_config": dict(NO_TIMED_PICKS)}
    check(model, {"moe_backend": "marlin", "compilation_config": compiled},
          tmp_path, "moe_wna16_marlin_gemm", "float4_e2m1f/mxfp4", "mxfp4/floor")


def test_dense_fp8_marlin_gemm(tmp_path):
    from vllm_qdq.study.tiny import build_gpu_model

    model = build_gpu_model("llama", models_dir(tmp_path))
    check(model, {"quantization": "fp8", "linear_backend": "marlin"}, tmp_path, "marlin_gemm",
          "float8_e4m3fn", "mxfp8_e4m3/floor")
