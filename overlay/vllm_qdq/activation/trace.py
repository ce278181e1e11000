"""``VLLM_QDQ_TRACE``: one stderr line per covered op call, capped per process.

Line format (one per call, at most :data:`vllm_qdq.config.TRACE_LIMIT` lines per process; the
last one says the limit is reached)::

    [vllm_qdq trace] pid=4242 #3 moe_wna16_marlin_gemm moe x=(16, 2880) bfloat16
        weight=float4_e2m1f/mxfp4 fmt=mxfp4/floor

A line ending in ``[compiled]`` was emitted while Dynamo traced the call: it is printed once
per compilation (not per replay) and shows the shape of the example activation it traced with. ``fmt=off`` means the call was covered but left unchanged by the settings;
``fmt=skip`` that its activation was not bf16/fp16 (already quantized by vLLM; the dtype is
on the line).

Under ``torch.compile`` the line is emitted through :func:`emit_traced`, which Dynamo runs once
at trace time (``assume_constant_result``), so the tracer never breaks a ``fullgraph`` capture.
"""

from __future__ import annotations

import torch

from ..config import TRACE_LIMIT
from ..log import CappedTracer

__all__ = ["TRACER", "Tracer", "emit", "emit_traced", "format_line"]

PREFIX = "[vllm_qdq trace]"


class Tracer(CappedTracer):
    """``VLLM_QDQ_TRACE``'s line counter (:class:`vllm_qdq.log.CappedTracer`, prefix
    :data:`PREFIX`)."""

    PREFIX = PREFIX

    def __init__(self, limit: int = TRACE_LIMIT) -> None:
        super().__init__(limit)

    def reset(self, limit: int = TRACE_LIMIT) -> None:
        super().reset(limit)


#: The process-wide tracer.
TRACER = Tracer()


def format_line(op: str, layer: str, x: torch.Tensor, weight: str, fmt: str) -> str:
    """The body of one trace line (after the pid and counter)."""
    shape = "(" + ", ".join(str(int(d)) for d in x.shape) + ")"
    return f"{op} {layer} x={shape} {str(x.dtype).replace('torch.', '')} weight={weight} fmt={fmt}"


def emit(op: str, layer: str, x: torch.Tensor, weight: str, fmt: str) -> bool:
    """Eager path: print one trace line (subject to the cap)."""
    return TRACER.emit(format_line(op, layer, x, weight, fmt))


@torch._dynamo.assume_constant_result
def emit_traced(op: str, layer: str, x: torch.Tensor, weight: str, fmt: str) -> bool:
    """Compiled path: Dynamo calls this once while tracing (with the example activation) and
    folds the result to a constant; the line ends with ``[compiled]``."""
    return TRACER.emit(format_line(op, layer, x, weight, fmt) + " [compiled]")
