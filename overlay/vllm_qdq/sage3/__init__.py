"""sage3: SageAttention3-style quantized attention for vllm-omni diffusion models."""
