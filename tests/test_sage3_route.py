"""SAGE3_ROUTE: the spec's parsing, validation messages and first-match decisions (pure, no vllm-omni),
and the step / layer inference of :class:`vllm_qdq.sage3.route.StepTracker` against vllm-omni's real
forward context. The routed backend inside real vllm-omni layers: tests/test_sage3_backend.py."""

from __future__ import annotations

import json

import pytest
from vllm_qdq.config import ConfigError, load_sage3_config
from vllm_qdq.sage3_route import ROUTE_FORMATS, Route, RouteError, Span, parse_route

EXAMPLE = {
    "default": "mxfp4",
    "rules": [
        {"steps": {"first": 1}, "format": "off"},
        {"steps": {"last": 2}, "format": "mxfp8_s1"},
        {"layers": [0, [5, 6]], "format": "nvfp4"},
        {"name": "single_blocks.*", "steps": [[3, None]], "format": "mxfp4_s1"},
        {"name": "re:blocks\\.1\\.attn", "format": "off"},
    ],
}


def _route(obj: dict, default: str = "mxfp4") -> Route:
    return parse_route(obj, default_format=default)


def test_first_match_wins_and_default() -> None:
    r = _route(EXAMPLE)
    total = 10
    assert r.pick(0, total, 0, "blocks.0.attn") == ("off", 0)  # first step beats the layer rule
    assert r.pick(9, total, 0, "blocks.0.attn") == ("mxfp8_s1", 1)  # last 2: steps 8, 9
    assert r.pick(8, total, 5, "") == ("mxfp8_s1", 1)
    assert r.pick(7, total, 5, "") == ("nvfp4", 2)
    assert r.pick(7, total, 0, "blocks.0.attn") == ("nvfp4", 2)
    assert r.pick(2, total, 3, "single_blocks.3.attn") == ("mxfp4", None)  # step 2 < 3
    assert r.pick(3, total, 3, "single_blocks.3.attn") == ("mxfp4_s1", 3)
    assert r.pick(4, total, 1, "blocks.1.attn") == ("off", 4)  # full-match regex
    assert r.pick(4, total, 1, "xblocks.1.attn") == ("mxfp4", None)
    assert r.uses_steps


def test_unknown_facts_never_match() -> None:
    r = _route(EXAMPLE)
    assert r.pick(None, 10, 9, "x") == ("mxfp4", None)  # unknown step: no steps rule matches
    assert r.pick(8, None, 9, "x") == ("mxfp4", None)  # last N without a total
    assert r.pick(1, 10, None, "") == ("mxfp4", None)  # unknown layer, no prefix
    assert r.pick(12, 10, 9, "x") == ("mxfp4", None)  # a step past the published total is not "last"


def test_selectors() -> None:
    assert Span(2, None).matches(1000, None) and not Span(2, None).matches(1, None)
    assert Span(0, 1, from_end=True).matches(9, 10) and not Span(0, 1, from_end=True).matches(7, 10)
    r = _route({"rules": [{"steps": [0, 5], "format": "off"}]})  # a list is two indices, not a range
    assert [r.pick(s, None, 0, "")[0] for s in range(7)] == ["off", "mxfp4", "mxfp4", "mxfp4", "mxfp4", "off", "mxfp4"]
    r = _route({"rules": [{"steps": [[0, 5]], "format": "off"}]})
    assert [r.pick(s, None, 0, "")[0] for s in range(7)] == ["off"] * 6 + ["mxfp4"]
    r = _route({"rules": [{"steps": 3, "format": "off"}, {"format": "nvfp4"}]})  # no condition: every call
    assert [r.pick(s, None, 0, "")[0] for s in (2, 3, 4)] == ["nvfp4", "off", "nvfp4"]


def test_default_comes_from_sage3_quant_format() -> None:
    assert _route({}, default="nvfp4").default == "nvfp4"
    cfg = load_sage3_config({"SAGE3_QUANT_FORMAT": "mxfp8_s1", "SAGE3_ROUTE": json.dumps({"rules": []})})
    assert cfg.route is not None and cfg.route.default == "mxfp8_s1" and cfg.route.source == "inline"
    assert load_sage3_config({}).route is None and load_sage3_config({}).trace is False
    assert load_sage3_config({"SAGE3_TRACE": "yes"}).trace is True


def test_route_file(tmp_path) -> None:
    p = tmp_path / "route.json"
    p.write_text(json.dumps({"rules": [{"steps": {"last": 1}, "format": "off"}], "total_steps": 20}))
    cfg = load_sage3_config({"SAGE3_ROUTE": str(p)})
    assert cfg.route.source == str(p) and cfg.route.total_steps == 20
    assert cfg.route.pick(19, cfg.route.total_steps, 0, "") == ("off", 0)


ACCEPTED_FORMATS = ", ".join(ROUTE_FORMATS)


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ('{"rules": [], "step": 1}',
         "SAGE3_ROUTE: route: unknown key(s) ['step']; accepted: default, rules, passes_per_step, total_steps"),
        ('{"rules": [{"format": "fp4"}]}',
         f'SAGE3_ROUTE: rules[0].format="fp4" is not a sage3 route format; accepted: {ACCEPTED_FORMATS}'),
        ('{"default": "mxfp6"}',
         f'SAGE3_ROUTE: default="mxfp6" is not a sage3 route format; accepted: {ACCEPTED_FORMATS}'),
        ('{"rules": [{"steps": [[5, 2]], "format": "off"}]}',
         "SAGE3_ROUTE: rules[0].steps[0]=[5, 2] is not a valid range; accepted: an index i >= 0, [lo, hi] "
         'with 0 <= lo <= hi (hi may be null), {"first": N}, {"last": N} (N >= 1)'),
        ('{"rules": [{"steps": {"first": 0}, "format": "off"}]}',
         "SAGE3_ROUTE: rules[0].steps.first=0 must be an integer >= 1; accepted: an index i >= 0, [lo, hi] "
         'with 0 <= lo <= hi (hi may be null), {"first": N}, {"last": N} (N >= 1)'),
        ('{"rules": [{"layers": {"last": 2}, "format": "off"}]}',
         'SAGE3_ROUTE: rules[0].layers={"last": 2} is not a selector; accepted: an index i >= 0, [lo, hi] '
         'with 0 <= lo <= hi (hi may be null), {"first": N} (N >= 1)'),
        ('{"rules": [{"steps": -1, "format": "off"}]}',
         "SAGE3_ROUTE: rules[0].steps=-1 is not a selector; accepted: an index i >= 0"),
        ('{"rules": [{"steps": "0-3", "format": "off"}]}', 'SAGE3_ROUTE: rules[0].steps="0-3" is not a selector'),
        ('{"rules": [{"steps": [], "format": "off"}]}', "SAGE3_ROUTE: rules[0].steps=[] selects nothing"),
        ('{"rules": [{"steps": [true], "format": "off"}]}', "SAGE3_ROUTE: rules[0].steps[0]=true is not a selector"),
        ('{"rules": [{"steps": 1}]}', f'SAGE3_ROUTE: rules[0] has no "format"; accepted: {ACCEPTED_FORMATS}'),
        ('{"rules": [{"layer": 1, "format": "off"}]}',
         "SAGE3_ROUTE: rules[0]: unknown key(s) ['layer']; accepted: format, steps, layers, name"),
        ('{"rules": [{"name": "re:(", "format": "off"}]}', "SAGE3_ROUTE: rules[0].name='re:(' is not a valid regex"),
        ('{"rules": {"format": "off"}}', 'SAGE3_ROUTE: rules must be a JSON list, got {"format": "off"}'),
        ('{"passes_per_step": 0}', "SAGE3_ROUTE: passes_per_step=0 must be an integer >= 1"),
        ('{"total_steps": 2.5}', "SAGE3_ROUTE: total_steps=2.5 must be an integer >= 1 or null"),
        ("{rules: []}", "SAGE3_ROUTE: inline JSON is not valid JSON: Expecting property name"),
        ("/nonexistent/route.json",
         "SAGE3_ROUTE: '/nonexistent/route.json' is neither inline JSON (starting with '{') nor an existing file"),
    ],
)
def test_bad_routes_name_the_value(route: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_sage3_config({"SAGE3_ROUTE": route})
    assert str(e.value).startswith(message), str(e.value)


def test_bad_trace_value() -> None:
    with pytest.raises(ConfigError, match=r"SAGE3_TRACE='maybe' is not a boolean"):
        load_sage3_config({"SAGE3_TRACE": "maybe"})


def test_route_errors_are_value_errors() -> None:
    with pytest.raises(RouteError):
        parse_route([], default_format="mxfp4")


# ----------------------------------------------------------------------------- inference


def test_step_inference_with_the_real_forward_context() -> None:
    """Without a published step: passes counted per forward context; a published index wins."""
    from types import SimpleNamespace

    from vllm_omni.diffusion.forward_context import DenoiseProgressMixin, set_forward_context
    from vllm_qdq.sage3.route import locate, tracker

    tracker.reset()
    layers = [(100, 0), (101, 1), (102, None)]  # (serial, index from the prefix)

    def one_pass(**kw) -> list[tuple]:
        return [
            (s.step, s.step_source, s.layer, s.layer_source, s.total)
            for s in (locate(serial, idx, "", **kw) for serial, idx in layers)
        ]

    with set_forward_context(omni_diffusion_config=SimpleNamespace(step_execution=False)):
        seen = [one_pass(passes_per_step=2, total_steps=7) for _ in range(4)]
    assert [p[0][0] for p in seen] == [0, 0, 1, 1]  # two passes (CFG) per step
    assert seen[0] == [(0, "inferred", 0, "prefix", 7), (0, "inferred", 1, "prefix", 7), (0, "inferred", 2, "order", 7)]
    with set_forward_context(omni_diffusion_config=SimpleNamespace(step_execution=False)):
        assert one_pass()[0][:2] == (0, "inferred")  # a new forward context: step 0 again
        assert one_pass()[0][:2] == (1, "inferred")
        DenoiseProgressMixin().record_denoise_step(5, total_steps=9)  # vllm-omni's own publisher
        assert one_pass() == [(5, "published", 0, "prefix", 9), (5, "published", 1, "prefix", 9),
                              (5, "published", 2, "order", 9)]
    with set_forward_context(omni_diffusion_config=SimpleNamespace(step_execution=True)):
        assert one_pass()[0][:2] == (None, "unknown")  # step execution without a published index
    tracker.reset()


# ----------------------------------------------------------------------------- real vllm-omni layers


@pytest.fixture(scope="module")
def routed() -> dict:
    """tests/support/sage3_route_script.py in a subprocess (TRITON_INTERPRET=1, the real vllm-omni)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(repo / "overlay"))
    for var in ("VLLM_SAGE3_TRITON", "SAGE3_QUANT_FORMAT", "SAGE3_ACC_DTYPE", "SAGE3_SCALE_RULE", "SAGE3_ROUTE",
                "SAGE3_TRACE", "VLLM_PLUGINS"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, str(repo / "tests" / "support" / "sage3_route_script.py")],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")][-1]
    return json.loads(line[4:])


def test_bad_route_stops_registration(routed: dict) -> None:
    assert routed["bad_route"].startswith(
        "ConfigError: SAGE3_ROUTE: rules[0].steps[0]=[3, 1] is not a valid range; accepted: an index i >= 0"
    )


def test_registration_logs_the_route(routed: dict) -> None:
    assert routed["on_path"] == "vllm_qdq.sage3.backend.Sage3AttentionBackend"
    assert routed["impls"] == ["Sage3AttentionImpl"]
    (line,) = routed["register_lines"]
    assert ("route from inline: rules [0] steps 0 -> off; [1] steps last 1 -> off; [2] layers 1 -> nvfp4; "
            "[3] name blocks.2.attn -> mxfp8_s1; default mxfp4; passes_per_step=2 total_steps=3") in line
    assert "SAGE3_TRACE on" in line


def test_published_steps_route_each_call(routed: dict) -> None:
    """Steps from vllm-omni's DenoiseProgressMixin (total 4 published, beating the route's 3);
    layers from the prefix; each call's format read from its output (off: bit-equal to vllm-omni's
    in-tree SDPA impl; sage3 formats: the torch reference within 1e-5, candidates >= 0.1 apart)."""
    assert routed["candidate_gap"] > 0.05
    assert routed["published"] == [
        ["off", "off", "off"],
        ["mxfp4", "nvfp4", "mxfp8_s1"],
        ["mxfp4", "nvfp4", "mxfp8_s1"],
        ["off", "off", "off"],
    ]
    assert routed["fallback_lines"] == []


def test_trace_lines_say_step_layer_and_format(routed: dict) -> None:
    lines = routed["published_trace"]
    assert len(lines) == 12
    assert lines[0].endswith(
        "#1 step=0/4 (published) layer=0 (prefix) prefix='blocks.0.attn' q=(1, 40, 2, 64) float32 "
        "format=off rule=0 ran=in-tree TORCH_SDPA"
    )
    assert lines[4].endswith(
        "#5 step=1/4 (published) layer=1 (prefix) prefix='blocks.1.attn' q=(1, 40, 2, 64) float32 "
        "format=nvfp4 rule=2 ran=sage3"
    )
    assert "step=3/4 (published)" in lines[11] and "format=off rule=1" in lines[11]
    for line, fmt in zip(lines, [f for step in routed["published"] for f in step], strict=True):
        assert f" format={fmt} " in line


def test_inferred_steps_count_passes_per_forward_context(routed: dict) -> None:
    """No published index: two passes per step (passes_per_step=2), the route's total_steps=3 for
    "last 1", prefix-less layers numbered by call order; a new forward context restarts at step 0."""
    assert routed["inferred"] == [["off", "off"]] * 2 + [["mxfp4", "nvfp4"]] * 2 + [["off", "off"]] * 3
    steps = [ln.split(" step=")[1].split(" ")[0] for ln in routed["inferred_trace"]]
    assert steps == ["0/3"] * 4 + ["1/3"] * 4 + ["2/3"] * 4 + ["0/3"] * 2
    assert all("(inferred)" in ln and "(order)" in ln for ln in routed["inferred_trace"])
    assert [ln.split(" layer=")[1].split(" ")[0] for ln in routed["inferred_trace"][:4]] == ["0", "1", "0", "1"]


def test_step_execution_without_index_leaves_steps_unknown(routed: dict) -> None:
    assert routed["unknown"] == [["mxfp4", "nvfp4", "mxfp8_s1"]] * 2  # steps rules skipped, layer rules apply
    assert len(routed["unknown_lines"]) == 1


def test_compiled_calls_follow_the_step(routed: dict) -> None:
    assert routed["compiled"] == ["off", "mxfp4", "mxfp4", "off"]


def test_trace_is_capped(routed: dict) -> None:
    lines = routed["capped_trace"]
    assert len(lines) == 3
    assert lines[-1].endswith("(trace limit reached: later calls are not traced)")
