"""Every GPU test file is run by a step of ``scripts/gpu-smoke.sh`` (a file no step names would
never run on the GPU host or in the GPU CI), and every file a step names exists."""

from __future__ import annotations

import re
from pathlib import Path

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
    import importlib.util
    import json

    import vllm_qdq.study.tiny as tiny

    spec = importlib.util.spec_from_file_location("bench_plugin_throughput", REPO / "scripts" / "bench_plugin_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    small = {"hidden": 64, "intermediate": 64, "heads": 2, "kv_heads": 1, "head_dim": 32, "layers": 1,
             "experts": 4, "top_k": 2}

    def build_small(path: Path, fn, **kw):
        return fn(path, **{k: small.get(k, v) for k, v in kw.items()})

    monkeypatch.setattr(tiny, "build_once", build_small)
    for name in bench.MODELS:
        cfg = json.loads((bench.build(name, tmp_path) / "config.json").read_text())
        assert cfg["max_position_embeddings"] >= bench.MAX_LEN, (name, cfg["max_position_embeddings"], bench.MAX_LEN)


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_plugin_throughput", REPO / "scripts" / "bench_plugin_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_throughput_bench_turns_alternate_batch_by_batch() -> None:
    """The bench times one batch per engine per turn, the order rotated at every turn and on
    across rounds: with two engines off-on, on-off, ...; over len(who) turns each engine goes
    first once, and every turn holds every engine once."""
    turns = _bench_module().turns
    assert turns(["off", "on"], 4) == [["off", "on"], ["on", "off"], ["off", "on"], ["on", "off"]]
    # round 2 of 3 turns goes on from turn 3: an odd turn count does not restart the rotation
    assert turns(["off", "on"], 3, start=3) == [["on", "off"], ["off", "on"], ["on", "off"]]
    three = turns(["off", "on", "kv"], 6, start=2)
    assert three[0] == ["kv", "off", "on"]
    for t in three:
        assert sorted(t) == ["kv", "off", "on"]
    for k in range(3):  # each engine first, second and last equally often
        assert sorted(t[k] for t in three) == ["kv", "kv", "off", "off", "on", "on"]
