"""The sage3 route spec (``SAGE3_ROUTE``): which sage3 format each attention call uses.

Pure data and matching, no vllm-omni: :mod:`vllm_qdq.config` parses and validates it once per
process (a bad spec stops start-up with a ``ConfigError`` naming the value); the vllm-omni
backend (:mod:`vllm_qdq.sage3.route`) finds each call's step and layer and asks :meth:`Route.pick`.

Schema (``SAGE3_ROUTE`` is inline JSON starting with ``{``, or the path of a file holding it;
every key optional, unknown keys are errors)::

    {
      "default": "mxfp4",          # format where no rule matches (default: SAGE3_QUANT_FORMAT)
      "rules": [                   # first match wins
        {"steps": {"first": 1}, "format": "off"},
        {"steps": {"last": 1},  "format": "off"},
        {"layers": [0, [20, 23]], "format": "mxfp8_s1"},
        {"name": "transformer_blocks.*.attn1", "steps": [[10, 19]], "format": "nvfp4"}
      ],
      "passes_per_step": 1,        # inferred steps only: transformer passes per denoising step
      "total_steps": null          # "last N" where the pipeline publishes no step count
    }

A format is one of :data:`ROUTE_FORMATS`: a sage3 format, or ``"off"`` (the call runs vllm-omni's
in-tree ``TORCH_SDPA`` backend, unquantized). ``steps`` and ``layers`` take one selector or a list
of them (any one matching is enough); a selector is an index ``i``, an inclusive range
``[lo, hi]`` (``hi`` may be ``null``: no upper end), ``{"first": N}`` or (steps only)
``{"last": N}``. A list is always a list of selectors: ``[0, 5]`` is steps 0 and 5, the range
0..5 is ``[[0, 5]]``. Steps and layers count from 0. ``name`` is a shell glob on the attention layer's
prefix (``fnmatch``, case-sensitive) or a regular expression written ``"re:..."`` (full match).
A rule matches when every condition it has matches; a rule with no condition matches every call.

Unknown facts never match: a ``steps`` condition does not match a call whose step is unknown, a
``{"last": N}`` selector does not match when the total step count is unknown, a ``layers``
condition does not match a call whose layer index is unknown, a ``name`` condition does not match a
layer built without a prefix. Such a call goes on to the next rule (and to ``default``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from .sage3.numerics.reference import SAGE3_FORMATS
from .schema import check_keys, check_pattern, pattern_matches

__all__ = ["ROUTE_FORMATS", "Route", "RouteError", "RouteRule", "Span", "parse_route", "read_route"]

#: Formats a route may pick: the sage3 formats and ``off`` (vllm-omni's in-tree SDPA backend).
ROUTE_FORMATS: tuple[str, ...] = (*SAGE3_FORMATS, "off")

_TOP_KEYS = ("default", "rules", "passes_per_step", "total_steps")
_RULE_KEYS = ("format", "steps", "layers", "name")


class RouteError(ValueError):
    """A route spec this package does not accept; the message names the value and the accepted ones.

    :func:`vllm_qdq.config.load_sage3_config` re-raises it as a ``ConfigError`` prefixed with
    ``SAGE3_ROUTE``."""


@dataclass(frozen=True)
class Span:
    """Indices ``lo..hi`` (inclusive; ``hi`` None: no upper end), counted from the end when ``from_end``."""

    lo: int
    hi: int | None
    from_end: bool = False

    def matches(self, index: int | None, total: int | None) -> bool:
        """Whether ``index`` (of ``total``, needed when counting from the end) is in the span."""
        if index is None:
            return False
        if self.from_end:
            if total is None or index >= total:
                return False
            index = total - 1 - index
        return index >= self.lo and (self.hi is None or index <= self.hi)

    def __str__(self) -> str:
        if self.from_end:
            return f"last {self.hi + 1}" if self.hi is not None else "all"
        if self.hi == self.lo:
            return str(self.lo)
        return f"{self.lo}..{'' if self.hi is None else self.hi}"


@dataclass(frozen=True)
class RouteRule:
    """One rule: ``format`` for calls matching every condition given (None: no condition)."""

    format: str
    steps: tuple[Span, ...] | None = None
    layers: tuple[Span, ...] | None = None
    name: str | None = None

    def matches(self, step: int | None, total: int | None, layer: int | None, prefix: str) -> bool:
        if self.steps is not None and not any(s.matches(step, total) for s in self.steps):
            return False
        if self.layers is not None and not any(s.matches(layer, None) for s in self.layers):
            return False
        if self.name is not None:
            if not prefix:
                return False
            return pattern_matches(self.name, prefix)
        return True

    def __str__(self) -> str:
        conds = []
        if self.steps is not None:
            conds.append("steps " + ",".join(map(str, self.steps)))
        if self.layers is not None:
            conds.append("layers " + ",".join(map(str, self.layers)))
        if self.name is not None:
            conds.append(f"name {self.name}")
        return f"{' & '.join(conds) or 'every call'} -> {self.format}"


@dataclass(frozen=True)
class Route:
    """A validated route: ``rules`` tried in order, ``default`` elsewhere."""

    default: str
    rules: tuple[RouteRule, ...] = ()
    passes_per_step: int = 1
    total_steps: int | None = None
    #: Where it came from (``inline`` or the file path): for the log.
    source: str = "inline"

    @property
    def uses_steps(self) -> bool:
        """Whether any rule looks at the denoising step."""
        return any(r.steps is not None for r in self.rules)

    def pick(self, step: int | None, total: int | None, layer: int | None, prefix: str) -> tuple[str, int | None]:
        """``(format, index of the rule that matched, or None for the default)`` for one call."""
        for i, rule in enumerate(self.rules):
            if rule.matches(step, total, layer, prefix):
                return rule.format, i
        return self.default, None

    def summary(self) -> str:
        """One line for the start-up log."""
        rules = "; ".join(f"[{i}] {r}" for i, r in enumerate(self.rules)) or "none"
        return (
            f"route from {self.source}: rules {rules}; default {self.default}; "
            f"passes_per_step={self.passes_per_step} total_steps={self.total_steps}"
        )


# ----------------------------------------------------------------------------- parsing


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _keys(where: str, obj: object, allowed: tuple[str, ...]) -> Mapping:
    return check_keys(where, obj, allowed, RouteError)


def _format(where: str, value: object) -> str:
    if isinstance(value, str) and value in ROUTE_FORMATS:
        return value
    raise RouteError(f"{where}={json.dumps(value)} is not a sage3 route format; accepted: {', '.join(ROUTE_FORMATS)}")


_SELECTOR_FORMS = 'an index i >= 0, [lo, hi] with 0 <= lo <= hi (hi may be null), {"first": N}'


def _span(where: str, sel: object, *, allow_last: bool) -> Span:
    accepted = _SELECTOR_FORMS + (', {"last": N}' if allow_last else "") + " (N >= 1)"
    bad = RouteError(f"{where}={json.dumps(sel)} is not a selector; accepted: {accepted}")
    if _is_int(sel):
        if sel < 0:
            raise bad
        return Span(sel, sel)
    if isinstance(sel, list):
        if len(sel) != 2 or not _is_int(sel[0]) or not (sel[1] is None or _is_int(sel[1])):
            raise bad
        lo, hi = sel
        if lo < 0 or (hi is not None and hi < lo):
            raise RouteError(f"{where}={json.dumps(sel)} is not a valid range; accepted: {accepted}")
        return Span(lo, hi)
    if isinstance(sel, Mapping):
        keys = ("first", "last") if allow_last else ("first",)
        if len(sel) != 1 or next(iter(sel)) not in keys:
            raise bad
        (kind, n), = sel.items()
        if not _is_int(n) or n < 1:
            raise RouteError(f"{where}.{kind}={json.dumps(n)} must be an integer >= 1; accepted: {accepted}")
        return Span(0, n - 1, from_end=kind == "last")
    raise bad


def _spans(where: str, value: object, *, allow_last: bool) -> tuple[Span, ...]:
    """A list is always a list of selectors (``[0, 5]``: indices 0 and 5; a range is ``[[0, 5]]``);
    anything else is one selector (an index or an object)."""
    if isinstance(value, list):
        if not value:
            raise RouteError(f"{where}=[] selects nothing; accepted: one selector or a non-empty list of them")
        return tuple(_span(f"{where}[{i}]", s, allow_last=allow_last) for i, s in enumerate(value))
    if not _is_int(value) and not isinstance(value, Mapping):
        accepted = _SELECTOR_FORMS + (', {"last": N}' if allow_last else "") + " (N >= 1), or a list of them"
        raise RouteError(f"{where}={json.dumps(value)} is not a selector; accepted: {accepted}")
    return (_span(where, value, allow_last=allow_last),)


def parse_route(obj: object, *, default_format: str, source: str = "inline") -> Route:
    """Validate a route spec (the schema in the module docstring) into a :class:`Route`.

    ``default_format`` is used when the spec has no ``default`` (``SAGE3_QUANT_FORMAT``).

    Raises:
        RouteError: naming the offending key or value and the accepted ones.
    """
    top = _keys("route", obj, _TOP_KEYS)
    default = _format("default", top["default"]) if "default" in top else _format("default", default_format)
    raw_rules = top.get("rules", [])
    if not isinstance(raw_rules, list):
        raise RouteError(f"rules must be a JSON list, got {json.dumps(raw_rules)}")
    rules = []
    for i, item in enumerate(raw_rules):
        where = f"rules[{i}]"
        d = _keys(where, item, _RULE_KEYS)
        if "format" not in d:
            raise RouteError(f"{where} has no \"format\"; accepted: {', '.join(ROUTE_FORMATS)}")
        fmt = _format(f"{where}.format", d["format"])
        steps = _spans(f"{where}.steps", d["steps"], allow_last=True) if "steps" in d else None
        layers = _spans(f"{where}.layers", d["layers"], allow_last=False) if "layers" in d else None
        name = d.get("name")
        if name is not None:
            check_pattern(f"{where}.name", name, RouteError)
        rules.append(RouteRule(fmt, steps, layers, name))
    pps = top.get("passes_per_step", 1)
    if not _is_int(pps) or pps < 1:
        raise RouteError(f"passes_per_step={json.dumps(pps)} must be an integer >= 1")
    total = top.get("total_steps")
    if total is not None and (not _is_int(total) or total < 1):
        raise RouteError(f"total_steps={json.dumps(total)} must be an integer >= 1 or null")
    return Route(default, tuple(rules), pps, total, source)


def read_route(raw: str, *, default_format: str) -> Route:
    """Parse ``SAGE3_ROUTE``'s text: inline JSON (starts with ``{``) or the path of a JSON file.

    Raises:
        RouteError: not JSON, not an existing file, or an invalid spec (see :func:`parse_route`).
    """
    text = raw.strip()
    source = "inline"
    if not text.startswith("{"):
        if not os.path.isfile(text):
            raise RouteError(f"{raw!r} is neither inline JSON (starting with '{{') nor an existing file")
        source = text
        with open(text, encoding="utf-8") as f:
            text = f.read()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RouteError(f"{'inline JSON' if source == 'inline' else 'file ' + source} is not valid JSON: {e}") from None
    return parse_route(obj, default_format=default_format, source=source)
