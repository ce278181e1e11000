"""vllm-qdq: simulated low-precision numerics for vLLM and vllm-omni.

Packages and modules, lowest layer first (a module may import only its own layer and those
listed before it; ``tests/test_layers.py`` checks it, the README's Layout section mirrors it):

    numerics     formats, torch reference (the contract), public QDQ API, Triton kernels
    sage3.numerics  the sage3 attention reference and Triton kernel
    config       every setting, read once per process (``config.settings()``); log, errors
    stats        per-layer QDQ error statistics
    activation   activation QDQ inside vLLM's quantized GEMM op wrappers (``VLLM_QDQ=1``)
    method       the ``qdq`` quantization method (linear and MoE)
    sage3        the vllm-omni glue of sage3 (backend, ``vllm_omni.general_plugins`` entry)
    plugin       the ``vllm.general_plugins`` entry point; cpu_compat, vllm_cli
    study        study, report, tasks, demo, tiny models, server helper

``vllm_qdq.qdq`` re-exports :mod:`vllm_qdq.numerics.qdq` at its documented public path.
"""

__version__ = "0.1.0"
