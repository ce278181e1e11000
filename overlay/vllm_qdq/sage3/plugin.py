"""The ``vllm_omni.general_plugins`` entry point ``sage3_attn = vllm_qdq.sage3.plugin:register_omni``.

vllm-omni 0.30.0 runs every ``vllm_omni.general_plugins`` entry point from
``vllm_omni.plugins.load_omni_general_plugins`` in each process (engine args, stage init,
diffusion worker) before the model, and so any ``Attention`` layer, is built.

With ``VLLM_SAGE3_TRITON=1``, :func:`register_omni`:

1. validates ``SAGE3_QUANT_FORMAT`` / ``SAGE3_ACC_DTYPE`` / ``SAGE3_SCALE_RULE`` / ``SAGE3_ROUTE`` /
   ``SAGE3_TRACE`` (``ConfigError`` naming the bad value);
2. checks the kernel can run (Triton importable; CUDA available or ``TRITON_INTERPRET=1``);
   if not, vllm-omni's in-tree ``SAGE_ATTN`` stays and one warning says why;
3. registers :class:`vllm_qdq.sage3.backend.Sage3AttentionBackend` in the ``SAGE_ATTN`` slot
   with vllm-omni's own ``register_diffusion_backend`` (the registry's override table, which
   ``DiffusionAttentionBackendEnum.SAGE_ATTN.get_path()/get_class()`` consult), and clears the
   selector's resolution cache;
4. plugin-side fix for the platform check: ``CudaOmniPlatform.get_diffusion_attn_backend_cls``
   refuses an explicit ``SAGE_ATTN`` unless the ``sageattention`` package imports (and the GPU
   is one of sageattention's SMs) *before* it consults the registry. The plugin wraps that
   classmethod: while ``SAGE_ATTN`` resolves to sage3, an explicit ``SAGE_ATTN`` selection runs
   vllm-omni's generic ``validate_diffusion_attn_backend`` and returns the sage3 path; every
   other selection goes to the original method unchanged. No source patch is needed.

Unset (or ``0``): nothing is touched. Safe to call more than once per process.
"""

from __future__ import annotations

import importlib.util
import logging

logger = logging.getLogger("vllm_qdq")

SAGE3_BACKEND_PATH = "vllm_qdq.sage3.backend.Sage3AttentionBackend"

_state = {"registered": False, "warned": False}


def unusable_reason() -> str | None:
    """Why the sage3 kernel cannot run in this process, or None."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    import torch
    import triton  # its knob, not vllm_qdq.numerics.triton_primitives: importing that here would
    # decorate the kernels' helpers for the mode of this moment, which may change before they run

    if not torch.cuda.is_available() and not triton.knobs.runtime.interpret:
        return "no CUDA device (and TRITON_INTERPRET is not 1)"
    return None


def _patch_cuda_platform_check() -> bool:
    """Let an explicit SAGE_ATTN resolve to sage3 without the ``sageattention`` package."""
    try:
        from vllm_omni.platforms.cuda.platform import CudaOmniPlatform
    except Exception as e:  # vllm's CUDA platform cannot import on this build (CPU wheels)
        logger.debug("vllm-qdq sage3: CUDA omni platform not importable (%s); no platform patch", e)
        return False
    current = CudaOmniPlatform.__dict__["get_diffusion_attn_backend_cls"]
    if getattr(current, "_vllm_qdq_sage3", False):
        return True
    original = current.__func__

    def get_diffusion_attn_backend_cls(cls, selected_backend, head_size, allow_trtllm_default=True):
        from vllm_omni.diffusion.attention.backends.registry import DiffusionAttentionBackendEnum

        slot = DiffusionAttentionBackendEnum.SAGE_ATTN
        if (
            selected_backend is not None
            and selected_backend.upper() == "SAGE_ATTN"
            and slot.get_path() == SAGE3_BACKEND_PATH
        ):
            cls.validate_diffusion_attn_backend("SAGE_ATTN")
            return SAGE3_BACKEND_PATH
        return original(cls, selected_backend, head_size, allow_trtllm_default)

    wrapped = classmethod(get_diffusion_attn_backend_cls)
    wrapped._vllm_qdq_sage3 = True  # type: ignore[attr-defined]
    get_diffusion_attn_backend_cls.__doc__ = original.__doc__
    CudaOmniPlatform.get_diffusion_attn_backend_cls = wrapped
    return True


def register_omni() -> None:
    """Register sage3 over SAGE_ATTN when ``VLLM_SAGE3_TRITON=1``; otherwise do nothing."""
    from ..config import sage3_settings

    cfg = sage3_settings()  # validated once per process; raises ConfigError naming a bad value
    if not cfg.enabled:
        logger.debug("vllm-qdq sage3: VLLM_SAGE3_TRITON is off; vllm-omni untouched")
        return
    why = unusable_reason()
    if why is not None:
        if not _state["warned"]:
            _state["warned"] = True
            logger.warning(
                "vllm-qdq sage3: VLLM_SAGE3_TRITON=1 but %s; vllm-omni's in-tree SAGE_ATTN is kept", why
            )
        return
    from vllm_omni.diffusion.attention import selector
    from vllm_omni.diffusion.attention.backends.registry import (
        DiffusionAttentionBackendEnum,
        register_diffusion_backend,
    )

    register_diffusion_backend(DiffusionAttentionBackendEnum.SAGE_ATTN, SAGE3_BACKEND_PATH)
    selector._cached_get_backend_cls.cache_clear()
    patched = _patch_cuda_platform_check()
    if not _state["registered"]:
        _state["registered"] = True
        logger.info(
            "vllm-qdq sage3: SAGE_ATTN -> %s (format=%s, acc=%s, scale_rule=%s%s%s%s)",
            SAGE3_BACKEND_PATH, cfg.quant_format, cfg.acc_dtype, cfg.scale_rule,
            "; CUDA platform sageattention check bypassed for SAGE_ATTN" if patched else "",
            f"; {cfg.route.summary()}" if cfg.route is not None else "",
            "; SAGE3_TRACE on" if cfg.trace else "",
        )
