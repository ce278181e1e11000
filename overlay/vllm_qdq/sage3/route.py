"""Where a sage3 call sits: its denoising step and layer, from vllm-omni's state or inferred.

The route (:class:`vllm_qdq.sage3_route.Route`, ``SAGE3_ROUTE``) picks a format per call from the
call's **step** and **layer**. :func:`locate` finds them, in this order:

Step
    1. *published*: vllm-omni's ``ForwardContext.denoise_step_idx`` (and ``total_denoise_steps``
       for ``{"last": N}``), which pipelines set through ``DenoiseProgressMixin.record_denoise_step``
       or ``set_forward_context_denoise_step_idx`` (in vllm-omni 0.30.0: Wan 2.2 t2v/i2v/s2v/VACE,
       MiniMax-H3, HunyuanImage-3, LingBot-World).
    2. *inferred* (every other pipeline, e.g. Qwen-Image, FLUX, SD3, Z-Image): the model runner
       opens one forward context per ``pipeline.forward`` call (one request batch, all its steps).
       Within it, the first sage3 layer called (the *lead*) opens a transformer pass, and each
       later call of that same layer opens the next one; the step is ``pass // passes_per_step``
       (route key, default 1: set 2 for a pipeline that runs classifier-free guidance as two
       transformer calls per step). A new forward context starts again at step 0. The total
       step count is the route's ``total_steps`` (the pipeline does not publish it).
    3. *unknown*: under vllm-omni's step execution (``step_execution=True``) the runner opens one
       forward context per denoising step and publishes no index, so counting passes would call
       every step 0; the step is then unknown and ``steps`` rules do not match (one warning).
    Outside any forward context (a layer called directly) counting goes on across calls as if in
    one context.

Layer
    1. *prefix*: the index vLLM's ``extract_layer_index`` finds in the layer's ``prefix`` (the one
       integer in it, e.g. ``transformer_blocks.7.attn`` -> 7), as vllm-omni's own ``Attention``
       computes ``layer_idx``; two block stacks with their own numbering (FLUX's
       ``transformer_blocks.N`` and ``single_transformer_blocks.N``) share indices: tell them
       apart with ``name`` rules.
    2. *order*: a layer built without a usable prefix (many vllm-omni models pass none) gets its
       position among the sage3 layers called so far in the current pass (0 for the lead).

Both assume one call per layer per transformer pass (a layer module reused within a pass would
look like the start of a new pass).
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from dataclasses import dataclass

from ..config import TRACE_LIMIT
from ..log import CappedTracer

logger = logging.getLogger("vllm_qdq")

__all__ = ["TRACER", "CallSite", "StepTracker", "Tracer", "current_forward_context", "layer_index_from_prefix",
           "locate", "new_layer_serial", "tracker"]

_SERIALS = itertools.count()


def new_layer_serial() -> int:
    """A process-unique number for one sage3 layer (what :class:`StepTracker` tells layers apart by)."""
    return next(_SERIALS)


def layer_index_from_prefix(prefix: str) -> int | None:
    """The layer index vllm-omni's ``Attention`` derives from ``prefix`` (vLLM's
    ``extract_layer_index``: the single integer in the dotted name), or None without one."""
    if not prefix:
        return None
    from vllm.model_executor.models.utils import extract_layer_index

    try:
        return extract_layer_index(prefix)
    except (AssertionError, ValueError):
        return None


def current_forward_context() -> object | None:
    """vllm-omni's active diffusion ``ForwardContext``, or None outside one."""
    from vllm_omni.diffusion.forward_context import get_forward_context, is_forward_context_available

    return get_forward_context() if is_forward_context_available() else None


class StepTracker:
    """Counts transformer passes and each layer's order within the current pass, per forward context.

    Thread-safe. The context is held by weak reference (a finished request's context, and the
    tensors it refers to, are not kept alive); a context that is not the one seen last, or a
    dead one, starts the count again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self._ctx: weakref.ref | None = None
        self._started = False
        self._lead: int | None = None
        self._passes = 0
        self._order: dict[int, int] = {}

    def _same_context(self, ctx: object | None) -> bool:
        if not self._started:
            return False
        if ctx is None:
            return self._ctx is None
        return self._ctx is not None and self._ctx() is ctx

    def observe(self, ctx: object | None, serial: int) -> tuple[int, int]:
        """Record a call of layer ``serial`` under ``ctx``: ``(pass index, layer order in the pass)``."""
        with self._lock:
            if not self._same_context(ctx):
                self.reset()
                self._started = True
                self._ctx = weakref.ref(ctx) if ctx is not None else None
            if self._lead is None:
                self._lead = serial
            elif serial == self._lead:
                self._passes += 1
                self._order.clear()
            order = self._order.setdefault(serial, len(self._order))
            return self._passes, order


#: The process's tracker (one diffusion model per worker process).
tracker = StepTracker()


@dataclass(frozen=True)
class CallSite:
    """One call's position: step (of ``total``) and layer, each with where it came from."""

    step: int | None
    total: int | None
    step_source: str  # "published" | "inferred" | "unknown"
    layer: int | None
    layer_source: str  # "prefix" | "order"
    prefix: str

    def describe(self) -> str:
        step = "?" if self.step is None else str(self.step)
        total = "?" if self.total is None else str(self.total)
        return (
            f"step={step}/{total} ({self.step_source}) layer={self.layer} ({self.layer_source}) "
            f"prefix={self.prefix!r}"
        )


_warned: set[str] = set()


def locate(
    serial: int,
    prefix_layer: int | None,
    prefix: str,
    *,
    passes_per_step: int = 1,
    total_steps: int | None = None,
    ctx: object | None = None,
    use_context: bool = True,
) -> CallSite:
    """The step and layer of one call of layer ``serial`` (see the module docstring).

    ``prefix_layer`` is :func:`layer_index_from_prefix` of the layer's prefix (computed once when
    the layer is built); ``total_steps`` is the route's fallback total. ``ctx`` is the forward
    context, looked up in vllm-omni when ``use_context`` (the default).
    """
    if use_context:
        ctx = current_forward_context()
    passes, order = tracker.observe(ctx, serial)
    published = getattr(ctx, "denoise_step_idx", None) if ctx is not None else None
    ctx_total = getattr(ctx, "total_denoise_steps", None) if ctx is not None else None
    total = int(ctx_total) if ctx_total is not None else total_steps
    if published is not None:
        step, source = int(published), "published"
    elif ctx is not None and getattr(getattr(ctx, "omni_diffusion_config", None), "step_execution", False):
        step, source = None, "unknown"
        if "step_execution" not in _warned:
            _warned.add("step_execution")
            logger.warning(
                "vllm-qdq sage3: step execution is on and this pipeline publishes no denoise step index; "
                "the step is unknown and SAGE3_ROUTE rules with \"steps\" do not match"
            )
    else:
        step, source = passes // passes_per_step, "inferred"
    if prefix_layer is not None:
        layer, layer_source = prefix_layer, "prefix"
    else:
        layer, layer_source = order, "order"
    return CallSite(step, total, source, layer, layer_source, prefix)


class Tracer(CappedTracer):
    """``SAGE3_TRACE``: one stderr line per sage3 call, at most ``limit`` per process
    (:class:`vllm_qdq.log.CappedTracer`).

    Line: ``[vllm_qdq sage3 trace] pid=P #N step=S/T (source) layer=L (source) prefix='...'
    q=(B, S, H, D) dtype format=F rule=R ran=WHAT`` (``rule=default`` where no rule matched;
    ``ran`` is ``sage3``, ``in-tree TORCH_SDPA`` for ``off``, or ``SDPA fallback (reason)``).
    """

    PREFIX = "[vllm_qdq sage3 trace]"

    def __init__(self, limit: int = TRACE_LIMIT) -> None:
        super().__init__(limit)

    def reset(self, limit: int = TRACE_LIMIT) -> None:
        super().reset(limit)


#: The process-wide sage3 tracer.
TRACER = Tracer()
