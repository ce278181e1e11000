"""The ``qdq`` quantization method: simulated W/A quantization of any BF16/FP16 checkpoint.

Layer rule (``tests/test_layers.py``): may import :mod:`vllm_qdq.numerics`, the settings and
logging modules, :mod:`vllm_qdq.activation` (its custom op and compile-cache factors) and vLLM;
never sage3, the study or the plugin entry point.

Modules (imports run downwards only: no cycle):
    policy        which formats weights / activations / MoE weights accept; the merge of the
                  process settings with a run's ``quantization_config``; the per-layer plan
    qdq_tensors   QDQ of a weight (once, at load) and of an activation (per call)
    linear        the linear-layer methods
    moe           the MoE experts method
    quant_config  ``QDQQuantConfig`` (registered as ``quantization="qdq"``), start-up checks, log
"""
