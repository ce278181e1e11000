"""The package logger ``vllm_qdq``, the one rule that makes its INFO lines visible, and the
capped stderr tracer behind ``VLLM_QDQ_TRACE`` and ``SAGE3_TRACE``."""

from __future__ import annotations

import logging
import os
import sys
import threading

__all__ = ["CappedTracer", "ensure_log_handler", "logger"]

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


class CappedTracer:
    """One stderr line per call, at most ``limit`` per process; thread-safe.

    Each line is ``{PREFIX} pid=P #N body``, with `` rank=R`` after the pid in a process of a
    multi-process ``torch.distributed`` group (tensor-parallel workers); the ``limit``-th line says
    that later calls are not traced. Subclasses set :attr:`PREFIX`.
    """

    PREFIX = "[vllm_qdq trace]"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self._lock = threading.Lock()

    def reset(self, limit: int) -> None:
        with self._lock:
            self.limit, self.count = limit, 0

    def emit(self, line: str) -> bool:
        """Print ``line`` unless the cap is reached; returns whether it was printed."""
        with self._lock:
            if self.count >= self.limit:
                return False
            self.count += 1
            tail = " (trace limit reached: later calls are not traced)" if self.count == self.limit else ""
            print(f"{self.PREFIX} pid={os.getpid()}{_rank()} #{self.count} {line}{tail}", file=sys.stderr,
                  flush=True)
        return True


def _rank() -> str:
    """`` rank=R`` in a process of an initialized ``torch.distributed`` group of more than one
    process, else empty."""
    dist = sys.modules.get("torch.distributed")  # imported by whoever runs distributed, never here
    try:
        if dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return f" rank={dist.get_rank()}"
    except (RuntimeError, ValueError):
        pass
    return ""
