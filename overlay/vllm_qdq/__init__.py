"""vllm-qdq: simulated low-precision numerics for vLLM and vllm-omni.

Modules:
    formats      the format table (element encodings, recipes), as data
    reference    pure-torch reference QDQ (the numeric contract)
    qdq          public API: quantize_dequantize, quantize, dequantize, FORMATS
    triton_qdq   fused Triton QDQ kernels (CUDA, or TRITON_INTERPRET=1)
    config       every setting, from the environment and VLLM_QDQ_CONFIG
    plugin       the ``vllm.general_plugins`` entry point
    sage3        the sage3 attention backend for vllm-omni
"""

__version__ = "0.1.0"
