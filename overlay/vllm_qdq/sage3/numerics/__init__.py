"""sage3 numerics: the torch reference (the contract) and the Triton kernel.

Layer rule (``tests/test_layers.py``): may import :mod:`vllm_qdq.numerics`, torch and Triton;
never vLLM or vllm-omni (the glue is :mod:`vllm_qdq.sage3.backend` / :mod:`vllm_qdq.sage3.plugin`).
"""
