"""The ``vllm.general_plugins`` entry point ``qdq = vllm_qdq.plugin:register``.

vLLM calls :func:`register` in the API server, the engine core and every worker process,
possibly more than once per process. Importing this module does nothing else.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("vllm_qdq")


def register() -> None:
    """Load and validate settings; with nothing enabled, do nothing (one debug line)."""
    # --- the `qdq` quantization method (method helper): registered ALWAYS, idempotent ---
    from .qdq_method import register_qdq_method

    register_qdq_method()
    # --- end qdq method ---
    from .config import load_config

    cfg = load_config()
    if not cfg.enabled:
        logger.debug("vllm-qdq: VLLM_QDQ is off; nothing patched")
        return
