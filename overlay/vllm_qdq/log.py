"""The package logger ``vllm_qdq`` and the one rule that makes its INFO lines visible."""

from __future__ import annotations

import logging

__all__ = ["ensure_log_handler", "logger"]

logger = logging.getLogger("vllm_qdq")


def ensure_log_handler() -> None:
    """Make INFO lines of ``vllm_qdq`` visible where vLLM's own lines go.

    Borrows the handlers of logger ``vllm`` (vLLM's formatter, its stream); when vLLM has none
    and nobody configured the root logger, adds a stderr handler. Does nothing when the package
    logger already has handlers (configured by the user or by an earlier call).
    """
    if logger.handlers:
        return
    for h in logging.getLogger("vllm").handlers:
        logger.addHandler(h)
    if logger.handlers:
        logger.propagate = False
    elif not logging.getLogger().handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [vllm_qdq] %(message)s", "%m-%d %H:%M:%S"))
        logger.addHandler(h)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
