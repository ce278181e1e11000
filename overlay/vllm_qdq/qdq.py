"""``vllm_qdq.qdq``: the public QDQ API at its documented path (README "Using it").

A compatibility re-export kept on purpose: the implementation is :mod:`vllm_qdq.numerics.qdq`,
and ``from vllm_qdq.qdq import quantize_dequantize, quantize, dequantize, FORMATS`` is the
import path the README gives users. Code inside the package imports ``vllm_qdq.numerics.qdq``.
"""

from __future__ import annotations

from .numerics.qdq import (
    BACKENDS,
    FORMATS,
    SCALE_RULES,
    QuantizedTensor,
    dequantize,
    quantize,
    quantize_dequantize,
    resolve,
)

__all__ = [
    "BACKENDS",
    "FORMATS",
    "SCALE_RULES",
    "QuantizedTensor",
    "dequantize",
    "quantize",
    "quantize_dequantize",
    "resolve",
]
