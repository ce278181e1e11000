"""``VLLM_QDQ_TRACE``: one stderr line per covered op call, capped per process.

Line format (one per call, at most :data:`vllm_qdq.config.TRACE_LIMIT` lines per process; the
last one says the limit is reached)::

    [vllm_qdq trace] pid=4242 #3 moe_wna16_marlin_gemm moe x=(16, 2880) bfloat16
        weight=float4_e2m1f/mxfp4 fmt=mxfp4/floor

``x=(s, 2880)`` with ``[compiled]`` marks a line emitted while Dynamo traced the call (the
leading dimension is symbolic there, and the line is printed once per compilation, not per
replay). ``fmt=off`` means the call was covered but left unchanged by the settings;
``fmt=skip(<dtype>)`` that its activation was not bf16/fp16 (already quantized by vLLM).

Under ``torch.compile`` the line is built from trace-time constants and emitted through
:func:`emit_traced`, which Dynamo runs once at trace time (``assume_constant_result``), so the
tracer never breaks a ``fullgraph`` capture.
"""

from __future__ import annotations

import os
import sys
import threading

import torch

from .config import TRACE_LIMIT

__all__ = ["Tracer", "TRACER", "emit", "emit_traced", "shape_str"]

PREFIX = "[vllm_qdq trace]"


class Tracer:
    """A line counter with a hard cap; thread-safe; writes to ``sys.stderr``."""

    def __init__(self, limit: int = TRACE_LIMIT) -> None:
        self.limit = limit
        self.count = 0
        self._lock = threading.Lock()

    def reset(self, limit: int = TRACE_LIMIT) -> None:
        with self._lock:
            self.limit = limit
            self.count = 0

    def emit(self, line: str) -> bool:
        """Print ``line`` unless the cap is reached; returns whether it was printed."""
        with self._lock:
            if self.count >= self.limit:
                return False
            self.count += 1
            n = self.count
            tail = " (trace limit reached: later calls are not traced)" if n == self.limit else ""
            print(f"{PREFIX} pid={os.getpid()} #{n} {line}{tail}", file=sys.stderr, flush=True)
        return True


#: The process-wide tracer.
TRACER = Tracer()


def emit(line: str) -> bool:
    """Eager path: print one trace line (subject to the cap)."""
    return TRACER.emit(line)


@torch._dynamo.assume_constant_result
def emit_traced(line: str) -> bool:
    """Compiled path: Dynamo calls this once while tracing and folds the result to a constant."""
    return TRACER.emit(line + " [compiled]")


def shape_str(x: torch.Tensor) -> str:
    """``(16, 2880)``; symbolic dimensions (under Dynamo) print as ``s``."""
    dims = [str(d) if isinstance(d, int) else "s" for d in x.shape]
    return "(" + ", ".join(dims) + ")"
