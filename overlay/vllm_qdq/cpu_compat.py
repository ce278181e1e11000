"""Compatibility fixes for vLLM 0.30.0's CPU engine, applied by the plugin in every vLLM process.

One function per fix; each docstring states the symptom, the cause and when to remove it. They
change no numerics.
"""

from __future__ import annotations

__all__ = ["request_amx_permission"]

_amx_done = False


def request_amx_permission() -> bool:
    """Ask Linux for AMX tile state in this process where the CPU has AMX; True if it asked.

    Symptom: on an x86-64 CPU with AMX (Sapphire Rapids and later), an eager vLLM CPU engine can
    die by SIGILL on its first forward (the worker exits with -4, "Worker proc VllmWorker-0 died
    unexpectedly"); seen with ``LLM(..., enforce_eager=True, max_model_len=256, max_num_seqs=8)``
    on a tiny bf16 Llama; in vLLM's default torch.compile mode it never happens.
    Cause: Linux gives a process AMX tile state only after it asks
    (``arch_prctl(ARCH_REQ_XCOMP_PERM)``). vLLM's CPU attention picks its AMX kernel for bf16
    (``vllm/v1/attention/backends/cpu_attn.py``) without asking; in compiled mode Inductor's CPU
    feature probe asks (``torch.cpu._init_amx()``), and oneDNN asks when it first runs an AMX
    GEMM, which is why only some eager runs crash.
    Fix: the same request, through torch's own helper, in every process vLLM starts (the plugin
    runs in each before its first forward). Remove when vLLM requests AMX for its CPU kernels.
    """
    global _amx_done
    if _amx_done:
        return False
    _amx_done = True
    import torch

    cpu = getattr(torch, "cpu", None)
    supported = getattr(cpu, "_is_amx_tile_supported", None)
    init = getattr(cpu, "_init_amx", None)
    if supported is None or init is None or not supported():
        return False
    return bool(init())
