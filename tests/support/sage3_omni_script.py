# ruff: noqa: E402  (imports follow the stand-in module and the environment set-up on purpose)
"""Run by tests/test_sage3_backend.py in a subprocess with TRITON_INTERPRET=1: drives the real
vllm-omni 0.30.0 plugin loader, registry, selector, CUDA platform check and Attention layer, and
prints one ``JSON{...}`` line of observations for the test to assert on."""

import json
import logging
import os
import sys
import types

assert os.environ.get("TRITON_INTERPRET") == "1"
os.environ.pop("VLLM_SAGE3_TRITON", None)
os.environ["DIFFUSION_ATTENTION_BACKEND"] = "SAGE_ATTN"
# vLLM's CUDA platform module imports a compiled extension that CPU wheels lack; an empty
# stand-in lets vllm-omni's real CudaOmniPlatform class (pure Python) import here.
sys.modules.setdefault("vllm._C_stable_libtorch", types.ModuleType("vllm._C_stable_libtorch"))


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
from vllm_omni.diffusion.attention.backends.registry import DiffusionAttentionBackendEnum as E
from vllm_omni.platforms.cuda.platform import CudaOmniPlatform
from vllm_omni.plugins import (
    OMNI_DEFAULT_PLUGINS_GROUP,
    load_omni_general_plugins,
    load_omni_plugins_by_group,
)

CudaOmniPlatform.get_device_capability = classmethod(lambda cls, device_id=0: DeviceCapability(9, 0))  # Hopper
P._current_omni_platform = CudaOmniPlatform()
from vllm_omni.diffusion.attention.selector import _cached_get_backend_cls, get_attn_backend_for_role
from vllm_omni.diffusion.data import build_attention_config

attn_cfg = build_attention_config(None)


def resolve():
    try:
        cls, _ = get_attn_backend_for_role("self", 64, attention_config=attn_cfg)
        return f"{cls.__module__}.{cls.__qualname__}"
    except Exception as e:  # the in-tree platform check
        return f"{type(e).__name__}: {e}"


def run_plugins():
    for fn in load_omni_plugins_by_group(OMNI_DEFAULT_PLUGINS_GROUP).values():
        fn()


# 1. disabled: the real plugin loader runs our entry point, which leaves vllm-omni untouched.
load_omni_general_plugins()
res["off_path"] = E.SAGE_ATTN.get_path()
res["off_resolve"] = resolve()
res["off_platform_patched"] = hasattr(CudaOmniPlatform.__dict__["get_diffusion_attn_backend_cls"], "_vllm_qdq_sage3")

# 2. bad settings are refused at registration.
for var, val in (("SAGE3_QUANT_FORMAT", "fp3"), ("SAGE3_ACC_DTYPE", "fp16")):
    os.environ.update(VLLM_SAGE3_TRITON="1", **{var: val})
    try:
        run_plugins()
        res[f"bad_{var}"] = "no error"
    except Exception as e:
        res[f"bad_{var}"] = f"{type(e).__name__}: {e}"
    os.environ.pop(var)

# 3. enabled but unusable (no CUDA, no interpreter): in-tree kept, one warning.
os.environ["TRITON_INTERPRET"] = "0"
n0 = len(cap.lines)
run_plugins()
run_plugins()
res["unusable_lines"] = cap.lines[n0:]
res["unusable_path"] = E.SAGE_ATTN.get_path()
os.environ["TRITON_INTERPRET"] = "1"

# 4. enabled: SAGE_ATTN resolves to sage3 through the registry, the selector and the CUDA platform.
os.environ.update(SAGE3_QUANT_FORMAT="nvfp4", SAGE3_ACC_DTYPE="fp32")
run_plugins()
_cached_get_backend_cls.cache_clear()
res["on_path"] = E.SAGE_ATTN.get_path()
res["on_class"] = f"{E.SAGE_ATTN.get_class().__module__}.{E.SAGE_ATTN.get_class().__qualname__}"
res["on_resolve"] = resolve()
res["on_platform"] = CudaOmniPlatform.get_diffusion_attn_backend_cls("SAGE_ATTN", 128)
res["on_platform_other"] = CudaOmniPlatform.get_diffusion_attn_backend_cls("TORCH_SDPA", 128)
res["register_lines"] = [ln for ln in cap.lines if "SAGE_ATTN ->" in ln]

# 5. a real vllm-omni Attention layer built with SAGE_ATTN selected runs the sage3 kernel.
from types import SimpleNamespace

from vllm_omni.diffusion.attention.backends.abstract import AttentionMetadata
from vllm_omni.diffusion.attention.layer import Attention
from vllm_omni.diffusion.config import set_current_diffusion_config
from vllm_qdq.sage3.backend import Sage3AttentionImpl
from vllm_qdq.sage3.numerics.reference import sage3_attention_reference

od_cfg = SimpleNamespace(
    diffusion_attention_config=attn_cfg, model_class_name=None, parallel_config=SimpleNamespace(ring_degree=1)
)
with set_current_diffusion_config(od_cfg):
    layer = Attention(num_heads=4, head_size=64, causal=False, softmax_scale=0.125, num_kv_heads=2,
                      prefix="blocks.0.attn", skip_sequence_parallel=True)
res["layer_impl"] = type(layer.attention).__qualname__
torch.manual_seed(0)
q, k, v = torch.randn(1, 70, 4, 64), torch.randn(1, 70, 2, 64), torch.randn(1, 70, 2, 64)
out = layer(q, k, v)
ref = sage3_attention_reference(q, k, v, quant_format="nvfp4", causal=False, sm_scale=0.125)
res["layer_diff"] = (out - ref).abs().max().item()
res["layer_fallback_lines"] = [ln for ln in cap.lines if "falling back" in ln]


def sdpa(q, k, v, causal=False, mask=None, scale=None):
    return torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=causal,
        scale=scale, enable_gqa=q.shape[2] != k.shape[2]).transpose(1, 2)


# 6. fallbacks, each logged once.
impl = Sage3AttentionImpl(num_heads=2, head_size=64, softmax_scale=0.125, causal=True)
n0 = len(cap.lines)
q, k, v = torch.randn(1, 40, 2, 64), torch.randn(1, 40, 2, 64), torch.randn(1, 40, 2, 64)
mask = torch.ones(1, 40, dtype=torch.bool)
mask[0, 30:] = False
md = AttentionMetadata(attn_mask=mask)
plain = Sage3AttentionImpl(num_heads=2, head_size=64, softmax_scale=0.125, causal=False)
fb = {}
o = plain.forward(q, k, v, md)
fb["mask"] = (o - sdpa(q, k, v, mask=mask[:, None, None, :], scale=0.125)).abs().max().item()
k2, v2 = torch.randn(1, 24, 2, 64), torch.randn(1, 24, 2, 64)
o = plain.forward(q, k2, v2)
fb["cross"] = (o - sdpa(q, k2, v2, scale=0.125)).abs().max().item()
plain.forward(q, k2, v2)  # second time: no new log line
q80 = torch.randn(1, 40, 2, 80)
o = Sage3AttentionImpl(num_heads=2, head_size=80, softmax_scale=0.1, causal=True).forward(q80, q80, q80)
fb["head_dim"] = (o - sdpa(q80, q80, q80, causal=True, scale=0.1)).abs().max().item()
qd = q.double()
o = impl.forward(qd, qd, qd)
fb["dtype"] = (o - sdpa(qd, qd, qd, causal=True, scale=0.125)).abs().max().item()
res["fallback_diff"] = fb
res["fallback_lines"] = cap.lines[n0:]

# 7. kernel path: causal GQA fp32 and bf16 inputs, equal to the reference.
gq = Sage3AttentionImpl(num_heads=4, head_size=64, softmax_scale=0.125, causal=True, num_kv_heads=1)
q, k, v = torch.randn(1, 50, 4, 64), torch.randn(1, 50, 1, 64), torch.randn(1, 50, 1, 64)
res["kernel_gqa_causal"] = (gq.forward(q, k, v) - sage3_attention_reference(
    q, k, v, quant_format="nvfp4", causal=True, sm_scale=0.125)).abs().max().item()
res["kernel_lines_after"] = [ln for ln in cap.lines[n0:] if "fall" in ln]
print("JSON" + json.dumps(res))
