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
