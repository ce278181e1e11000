# ruff: noqa: E402  (imports follow the stand-in module and the environment set-up on purpose)
"""Run by tests/test_sage3_route.py in a subprocess with TRITON_INTERPRET=1: SAGE3_ROUTE through the
real vllm-omni 0.30.0 plugin loader, ``Attention`` layers, forward context and denoise-step publisher.

Each layer output is matched against every candidate computed independently (vllm-omni's in-tree
SDPA impl for ``off``, the torch reference per sage3 format), so the format a call used is read
from its numbers, and checked against its trace line. Prints one ``JSON{...}`` line.
"""

import contextlib
import io
import json
import logging
import os
import sys
import types
from types import SimpleNamespace

assert os.environ.get("TRITON_INTERPRET") == "1"
sys.modules.setdefault("vllm._C_stable_libtorch", types.ModuleType("vllm._C_stable_libtorch"))
os.environ.update(VLLM_SAGE3_TRITON="1", DIFFUSION_ATTENTION_BACKEND="SAGE_ATTN", SAGE3_TRACE="1")


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


cap = Capture()
logging.getLogger("vllm_qdq").addHandler(cap)
logging.getLogger("vllm_qdq").setLevel(logging.INFO)
res = {}

import torch
import vllm_omni.platforms as P
from vllm.platforms.interface import DeviceCapability
from vllm_omni.platforms.cuda.platform import CudaOmniPlatform

CudaOmniPlatform.get_device_capability = classmethod(lambda cls, device_id=0: DeviceCapability(9, 0))
P._current_omni_platform = CudaOmniPlatform()
from vllm_omni.diffusion.attention.backends.registry import DiffusionAttentionBackendEnum as E
from vllm_omni.diffusion.attention.layer import Attention
from vllm_omni.diffusion.config import set_current_diffusion_config
from vllm_omni.diffusion.data import build_attention_config
from vllm_omni.diffusion.forward_context import DenoiseProgressMixin, set_forward_context
from vllm_omni.plugins import OMNI_DEFAULT_PLUGINS_GROUP, load_omni_plugins_by_group
from vllm_qdq.sage3.numerics.reference import sage3_attention_reference
from vllm_qdq.sage3.route import TRACER, tracker


def run_plugins():
    for fn in load_omni_plugins_by_group(OMNI_DEFAULT_PLUGINS_GROUP).values():
        fn()


# 1. a bad route stops registration, naming the value.
os.environ["SAGE3_ROUTE"] = '{"rules": [{"steps": [[3, 1]], "format": "off"}]}'
try:
    run_plugins()
    res["bad_route"] = "no error"
except Exception as e:
    res["bad_route"] = f"{type(e).__name__}: {e}"

# 2. the route of this run: off for the first and last step, nvfp4 for layer 1, mxfp8_s1 by name.
ROUTE = {
    "default": "mxfp4",
    "rules": [
        {"steps": {"first": 1}, "format": "off"},
        {"steps": {"last": 1}, "format": "off"},
        {"layers": 1, "format": "nvfp4"},
        {"name": "blocks.2.attn", "format": "mxfp8_s1"},
    ],
    "passes_per_step": 2,
    "total_steps": 3,
}
os.environ["SAGE3_ROUTE"] = json.dumps(ROUTE)
run_plugins()
res["on_path"] = E.SAGE_ATTN.get_path()
res["register_lines"] = [ln for ln in cap.lines if "SAGE_ATTN ->" in ln]

H, D, S, SCALE = 2, 64, 40, 0.125
attn_cfg = build_attention_config(None)
od_cfg = SimpleNamespace(
    diffusion_attention_config=attn_cfg, model_class_name=None,
    parallel_config=SimpleNamespace(ring_degree=1, sequence_parallel_size=1), step_execution=False,
)
with set_current_diffusion_config(od_cfg):
    named = [Attention(num_heads=H, head_size=D, causal=False, softmax_scale=SCALE, num_kv_heads=H,
                       prefix=f"blocks.{i}.attn", skip_sequence_parallel=True) for i in range(3)]
    unnamed = [Attention(num_heads=H, head_size=D, causal=False, softmax_scale=SCALE, num_kv_heads=H,
                         skip_sequence_parallel=True) for _ in range(2)]
res["impls"] = sorted({type(layer.attention).__qualname__ for layer in named + unnamed})

torch.manual_seed(0)
q, k, v = torch.randn(1, S, H, D), torch.randn(1, S, H, D), torch.randn(1, S, H, D)
in_tree = E.TORCH_SDPA.get_class().get_impl_cls()(num_heads=H, head_size=D, softmax_scale=SCALE, causal=False)
CANDIDATES = {"off": in_tree.forward_cuda(q, k, v)}
for fmt in ("mxfp4", "nvfp4", "mxfp8_s1"):
    CANDIDATES[fmt] = sage3_attention_reference(q, k, v, quant_format=fmt, sm_scale=SCALE)
res["candidate_gap"] = min(
    (a - b).abs().max().item() for i, a in enumerate(CANDIDATES.values()) for b in list(CANDIDATES.values())[i + 1:]
)


def which(out: torch.Tensor) -> str:
    """The candidate ``out`` equals: exactly for off, within the kernel-vs-reference bound otherwise."""
    hits = [n for n, c in CANDIDATES.items() if (out - c).abs().max().item() <= (0.0 if n == "off" else 1e-5)]
    return hits[0] if len(hits) == 1 else f"ambiguous {hits}"


def run(layers):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        got = [which(layer(q, k, v)) for layer in layers]
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith(TRACER.PREFIX)]
    return got, lines


def ctx(**kw):
    return set_forward_context(omni_diffusion_config=SimpleNamespace(**{**vars(od_cfg), **kw}))


# 3. published steps: the pipeline's own DenoiseProgressMixin.record_denoise_step (as Wan 2.2 does).
tracker.reset()
mixin = DenoiseProgressMixin()
published, published_trace = [], []
with ctx():
    for step in range(4):
        mixin.record_denoise_step(step, total_steps=4)
        got, lines = run(named)
        published.append(got)
        published_trace += lines
res["published"] = published
res["published_trace"] = published_trace

# 4. inferred steps (no index published): passes_per_step=2 (CFG as two calls), total_steps=3 from
#    the route; prefix-less layers get their call order as index (layer 1: the nvfp4 rule).
inferred, inferred_trace = [], []
with ctx():
    for _ in range(6):
        got, lines = run(unnamed)
        inferred.append(got)
        inferred_trace += lines
with ctx():  # a new forward context (the next request) starts at step 0 again
    got, lines = run(unnamed)
    inferred.append(got)
    inferred_trace += lines
res["inferred"] = inferred
res["inferred_trace"] = inferred_trace

# 5. step execution without a published index: step unknown, steps rules never match; one warning.
n0 = len(cap.lines)
with ctx(step_execution=True):
    res["unknown"] = [run(named)[0] for _ in range(2)]
res["unknown_lines"] = [ln for ln in cap.lines[n0:] if "step execution" in ln]

# 6. under torch.compile (Dynamo, eager backend) the route still follows the step on every call.
tracker.reset()


def forward(x):
    return named[0](x, k, v)


compiled = torch.compile(forward, backend="eager")
res["compiled"] = []
with ctx():
    for step in range(4):
        mixin.record_denoise_step(step, total_steps=4)
        with contextlib.redirect_stderr(io.StringIO()):
            res["compiled"].append(which(compiled(q)))

# 7. the trace is capped.
TRACER.reset(limit=3)
err = io.StringIO()
with ctx(), contextlib.redirect_stderr(err):
    mixin.record_denoise_step(0, total_steps=4)
    for _ in range(5):
        named[0](q, k, v)
res["capped_trace"] = [ln for ln in err.getvalue().splitlines() if ln.startswith(TRACER.PREFIX)]
res["fallback_lines"] = [ln for ln in cap.lines if "falling back" in ln]
print("JSON" + json.dumps(res))
