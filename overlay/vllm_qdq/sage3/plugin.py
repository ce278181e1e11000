"""The ``vllm_omni.general_plugins`` entry point ``sage3_attn = vllm_qdq.sage3.plugin:register_omni``."""

from __future__ import annotations

import logging

logger = logging.getLogger("vllm_qdq")


def register_omni() -> None:
    """Register sage3 over SAGE_ATTN when ``VLLM_SAGE3_TRITON=1``; otherwise do nothing."""
    from ..config import load_sage3_config

    cfg = load_sage3_config()
    if not cfg.enabled:
        logger.debug("vllm-qdq sage3: VLLM_SAGE3_TRITON is off; vllm-omni untouched")
        return
