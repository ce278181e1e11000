"""Fold the QDQ settings into vLLM's torch.compile cache key.

vLLM 0.30.0 names a compile-cache directory after a hash of, among others,
``vllm.envs.compile_factors()`` (``vllm/compilation/backends.py``, ``VllmBackend.__call__``,
and ``aot_compile_hash_factors`` in ``vllm/compilation/caching.py`` for AOT artifacts).
``compile_factors()`` calls every getter in ``vllm.envs.environment_variables`` except a fixed
ignore list, so a getter added to that dict is hashed into every cache key computed afterwards
in the process. The plugin runs (``vllm.general_plugins``) in each engine-core and worker
process before the model is compiled, so it adds:

* each ``VLLM_*`` variable this package reads (``VLLM_QDQ``, ``VLLM_QDQ_CONFIG``,
  ``VLLM_QDQ_TRACE``, ...) with its raw value (this also stops vLLM warning that they are
  unknown ``VLLM_*`` variables);
* ``VLLM_QDQ_DIGEST``: a computed factor (never read from the environment): the package version,
  :meth:`QDQConfig.digest` of the effective settings (so editing a ``VLLM_QDQ_CONFIG`` *file*
  changes the key too), and the trace / stats settings (which change what the traced wrapper
  does at compile time).

A cache written without the plugin (or with it disabled, which adds nothing) lacks these
factors and can never be picked up with it enabled, and two different settings never share a
key. The wrapper's own source file is also hashed by vLLM when Dynamo inlines it (traced files).

The ``qdq`` method needs a factor of its own, ``VLLM_QDQ_METHOD`` (:func:`register_method_factors`,
added by the method's config in the process that builds the model): vLLM's key covers
``quantization="qdq"`` and the model's config (a per-run ``quantization_config`` included), but
``VLLM_QDQ_CONFIG`` and ``VLLM_QDQ_STATS`` only through the plugin's factors, which a disabled
plugin does not add. Without it, a graph compiled for other environment settings (activation
formats are constants in the graph; with statistics on it holds ``vllm_qdq::qdq_stats`` nodes)
could be loaded from the cache.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from .. import __version__
from ..config import ENV_VARS, QDQConfig, raw_value

__all__ = ["DIGEST_VAR", "METHOD_VAR", "factor_value", "method_factor_value", "register_compile_factors",
           "register_method_factors"]

#: The computed factor's name in ``vllm.envs.environment_variables``.
DIGEST_VAR = "VLLM_QDQ_DIGEST"
#: The ``qdq`` method's computed factor.
METHOD_VAR = "VLLM_QDQ_METHOD"


def factor_value(cfg: QDQConfig) -> str:
    """The ``VLLM_QDQ_DIGEST`` value for ``cfg``."""
    return json.dumps(
        {"version": __version__, "digest": cfg.digest(), "trace": cfg.trace, "stats_dir": cfg.stats_dir},
        sort_keys=True,
    )


def _env_getter(name: str) -> Callable[[], str | None]:
    return lambda: raw_value(name)


def register_compile_factors(cfg: QDQConfig) -> list[str]:
    """Add our factors to ``vllm.envs.environment_variables``; returns the names added/updated."""
    import vllm.envs as envs

    names = []
    for name in ENV_VARS:
        if name.startswith("VLLM_") and name not in envs.environment_variables:
            envs.environment_variables[name] = _env_getter(name)
            names.append(name)
    value = factor_value(cfg)
    envs.environment_variables[DIGEST_VAR] = lambda: value
    names.append(DIGEST_VAR)
    return names


def method_factor_value(settings: object, stats_dir: str | None) -> str:
    """The ``VLLM_QDQ_METHOD`` value: package version, the method's merged settings (their
    ``repr``: frozen dataclasses of strings and booleans) and whether statistics are on (the
    graph then holds ``vllm_qdq::qdq_stats`` nodes instead of ``vllm_qdq::qdq``)."""
    return json.dumps(
        {"version": __version__, "settings": repr(settings), "stats": bool(stats_dir)}, sort_keys=True
    )


def register_method_factors(settings: object, stats_dir: str | None) -> str:
    """Set ``VLLM_QDQ_METHOD`` in ``vllm.envs.environment_variables`` (the last model built
    in the process wins: vLLM computes the key right after building it); returns the value."""
    import vllm.envs as envs

    value = method_factor_value(settings, stats_dir)
    envs.environment_variables[METHOD_VAR] = lambda: value
    return value
