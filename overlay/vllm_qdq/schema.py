"""Shared pieces of the JSON settings schemas (``VLLM_QDQ_CONFIG``, ``SAGE3_ROUTE``).

Pure Python, no vLLM: each parser passes its own exception class, so a bad value is reported
as that schema's error (:class:`vllm_qdq.config.ConfigError`,
:class:`vllm_qdq.sage3_route.RouteError`) with a message naming the value and the accepted ones.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping

__all__ = ["check_keys", "check_pattern", "pattern_matches"]


def check_keys(where: str, obj: object, allowed: tuple[str, ...], error: type[Exception]) -> Mapping:
    """``obj`` as a JSON object whose keys are all in ``allowed``; else ``error`` naming ``where``."""
    if not isinstance(obj, Mapping):
        raise error(f"{where} must be a JSON object, got {json.dumps(obj)}")
    unknown = [k for k in obj if k not in allowed]
    if unknown:
        raise error(f"{where}: unknown key(s) {unknown}; accepted: {', '.join(allowed)}")
    return obj


def check_pattern(where: str, pattern: object, error: type[Exception]) -> str:
    """A layer-prefix pattern: a non-empty shell glob, or ``"re:REGEX"`` with a valid REGEX."""
    if not isinstance(pattern, str) or not pattern or pattern == "re:":
        raise error(f"{where}={json.dumps(pattern)} must be a non-empty glob or \"re:REGEX\"")
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as e:
            raise error(f"{where}={pattern!r} is not a valid regex: {e}") from None
    return pattern


def pattern_matches(pattern: str, prefix: str) -> bool:
    """Whether a layer prefix matches a :func:`check_pattern` pattern (glob: ``fnmatchcase``,
    case-sensitive; ``re:``: full match)."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], prefix) is not None
    return fnmatch.fnmatchcase(prefix, pattern)
