"""The numeric core: formats, the torch reference (the contract), the public QDQ API, Triton kernels.

Layer rule (checked by ``tests/test_layers.py``): modules here import torch, numpy, Triton and
each other only; never vLLM, vllm-omni or any other part of ``vllm_qdq``.

Modules:
    formats            the format table (element encodings, recipes, scale rules), as data
    reference          pure-torch reference QDQ (the numeric contract)
    qdq                public API: quantize_dequantize, quantize, dequantize, FORMATS, BACKENDS
    triton_primitives  the shared Triton helpers (MX exponent per rule, RNE onto a grid)
    triton_qdq         fused Triton QDQ kernels (CUDA, or TRITON_INTERPRET=1)
"""
