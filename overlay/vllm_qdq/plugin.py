"""The ``vllm.general_plugins`` entry point ``qdq = vllm_qdq.plugin:register``.

vLLM calls :func:`register` in the API server, the engine core and every worker process,
possibly more than once per process. Importing this module does nothing else (it imports only
``logging``, so vLLM's loader can never hit an import-time error here: such errors would be
logged and swallowed by vLLM, silently disabling the plugin).

:func:`register`:

0. in the front process (the ``vllm serve`` API server or the program calling ``LLM()``, where
   vLLM registers plugins before it starts any engine process), installs the error reporting
   of :mod:`vllm_qdq.errors`: a vllm-qdq error, wherever it is found, is the last thing printed
   (``vllm serve`` exits with status 2 and the message, no traceback);
   It also asks Linux for AMX tile state where the CPU has AMX (:mod:`vllm_qdq.cpu_compat`:
   vLLM's eager CPU attention uses AMX without asking and can die by SIGILL);
1. registers the ``qdq`` quantization method with vLLM (always; it is selected by
   ``quantization="qdq"``, see :mod:`vllm_qdq.method`);
2. loads and validates every setting (:func:`vllm_qdq.config.settings`); a bad value raises
   :class:`vllm_qdq.config.ConfigError`, which vLLM does not catch, so start-up stops in the
   front process, before any engine starts, with a message naming the value and the accepted
   ones;
3. with ``VLLM_QDQ`` off, returns without touching anything;
4. otherwise wraps the quantized-GEMM op wrappers (:mod:`vllm_qdq.activation.vllm_patch`), with a
   ``kv_cache`` spec hooks the attention layers' cache writes of every model built in the process
   (:mod:`vllm_qdq.activation.kv_cache`), folds the
   settings into vLLM's compile-cache key (:mod:`vllm_qdq.activation.compile_cache`) and logs once per
   process what was patched and with which settings.
"""

from __future__ import annotations

import os

from .log import ensure_log_handler, logger

_logged = False


def register() -> None:
    """Register the ``qdq`` method; validate settings; when enabled, patch vLLM's GEMM wrappers.

    Idempotent: a second call in the same process wraps nothing twice and logs at debug level.
    """
    global _logged
    from .errors import install_front_hooks

    install_front_hooks()  # first: the settings below may be bad
    from .cpu_compat import request_amx_permission

    if request_amx_permission():  # at debug level: the one INFO line is the patch summary below
        logger.debug("vllm-qdq: requested AMX tile permission in pid %d (vllm_qdq.cpu_compat)", os.getpid())
    # The `qdq` quantization method is registered always (it is chosen by quantization="qdq").
    from .method.quant_config import register_qdq_method

    register_qdq_method()
    from .config import settings

    cfg = settings()  # built and validated once per process, then passed down
    if not cfg.enabled:
        logger.debug("vllm-qdq: VLLM_QDQ is off; nothing patched")
        return
    from .activation.compile_cache import register_compile_factors
    from .activation.vllm_patch import install

    report = install(cfg)
    from .activation.kv_cache import install_plugin_hook

    kv_on = install_plugin_hook(cfg)  # KV-cache QDQ: attention layers hooked as each model is built
    if cfg.stats_dir:
        from .activation.vllm_patch import set_stats_hook
        from .stats import op_hook

        set_stats_hook(op_hook)
        if not _logged:
            from .stats import warn_if_cuda_graphs

            warn_if_cuda_graphs("activation plugin")
    factors = register_compile_factors(cfg)
    if _logged:
        logger.debug("vllm-qdq: register() again in pid %d; settings refreshed", os.getpid())
        return
    _logged = True
    ensure_log_handler()
    logger.info(
        "vllm-qdq: activation QDQ enabled in pid %d: wrapped %d op wrappers of vllm._custom_ops (%s)%s%s; "
        "rebound %d by-name imports%s; settings: %s; digest %s; compile-cache factors %s",
        os.getpid(),
        len(report.wrapped),
        ", ".join(report.wrapped),
        f"; already wrapped: {', '.join(report.already)}" if report.already else "",
        f"; absent in this vLLM: {', '.join(report.missing)}" if report.missing else "",
        len(report.rebound),
        f" ({', '.join(report.rebound)})" if report.rebound else "",
        cfg.summary(),
        cfg.digest(),
        ", ".join(factors),
    )
    if report.missing:
        logger.warning("vllm-qdq: vllm._custom_ops lacks %s; those ops are not covered", report.missing)
    if cfg.layers:
        logger.warning(
            "vllm-qdq: %d layer rule(s) in VLLM_QDQ_CONFIG 'layers' are not applied by the op "
            "plugin's GEMM wrappers (op wrappers do not see layer names); they apply to the qdq "
            "method%s",
            len(cfg.layers),
            ", and their kv_cache / skip to the plugin's KV-cache QDQ" if kv_on else "",
        )
