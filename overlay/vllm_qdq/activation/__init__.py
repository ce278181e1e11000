"""Activation QDQ inside vLLM's quantized GEMM op wrappers (the ``VLLM_QDQ=1`` plugin path).

Layer rule (``tests/test_layers.py``): may import :mod:`vllm_qdq.numerics`, the settings and
logging modules (``config``, ``log``, ``errors``, ``stats``) and vLLM; never the ``qdq`` method,
sage3, the study or the plugin entry point.

Modules:
    ops            ``torch.ops.vllm_qdq.qdq`` / ``qdq_stats``: QDQ as one custom op
    vllm_patch     wrapping of ``vllm._custom_ops`` wrappers, routing by weight kind
    trace          ``VLLM_QDQ_TRACE`` lines
    compile_cache  the settings folded into vLLM's torch.compile cache key
"""
