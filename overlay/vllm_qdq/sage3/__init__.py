"""sage3: SageAttention3-style quantized attention for vllm-omni diffusion models.

``sage3.numerics`` (reference, Triton kernel: no vllm-omni) and the vllm-omni glue
(``backend``: the attention backend; ``plugin``: the ``vllm_omni.general_plugins`` entry point).
"""
