"""SAGE3_ROUTE on a CUDA GPU: ``off`` for the first and last denoising step gives those steps the
in-tree backend's outputs, bit for bit, while the middle steps run sage3 and differ.

A five-step toy denoising loop over a real vllm-omni ``Attention`` layer built with ``SAGE_ATTN``
selected (the plugin registered in this process): each step projects the latents to q/k/v
(bf16, B1 S2048 H8 D128) and adds the attention output back. At every step the same q/k/v also go
through vllm-omni's in-tree ``TORCH_SDPA`` implementation. Steps are published with vllm-omni's
``DenoiseProgressMixin.record_denoise_step`` (as Wan 2.2 does) or left to inference (passes counted
in the forward context, the route's ``total_steps``). Run: ``pytest -m gpu tests/gpu/test_sage3_route_gpu.py -s``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.gpu

STEPS, S, H, D = 5, 2048, 8, 128
ROUTE = {"default": "mxfp4", "rules": [{"steps": {"first": 1}, "format": "off"},
                                       {"steps": {"last": 1}, "format": "off"}], "total_steps": STEPS}


@pytest.mark.parametrize("publish", [True, False], ids=["published-steps", "inferred-steps"])
def test_off_first_and_last_step_equal_in_tree(publish: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_SAGE3_TRITON", "1")
    monkeypatch.setenv("DIFFUSION_ATTENTION_BACKEND", "SAGE_ATTN")
    monkeypatch.setenv("SAGE3_ROUTE", json.dumps(ROUTE))
    monkeypatch.delenv("SAGE3_QUANT_FORMAT", raising=False)
    monkeypatch.delenv("SAGE3_SCALE_RULE", raising=False)
    from vllm_omni.diffusion.attention.backends.registry import DiffusionAttentionBackendEnum as E
    from vllm_omni.diffusion.attention.layer import Attention
    from vllm_omni.diffusion.config import set_current_diffusion_config
    from vllm_omni.diffusion.data import build_attention_config
    from vllm_omni.diffusion.forward_context import DenoiseProgressMixin, set_forward_context
    from vllm_qdq.sage3.backend import Sage3AttentionImpl
    from vllm_qdq.sage3.plugin import register_omni
    from vllm_qdq.sage3.route import tracker

    register_omni()
    od_cfg = SimpleNamespace(
        diffusion_attention_config=build_attention_config(None), model_class_name=None,
        parallel_config=SimpleNamespace(ring_degree=1, sequence_parallel_size=1), step_execution=False,
    )
    with set_current_diffusion_config(od_cfg):
        layer = Attention(num_heads=H, head_size=D, causal=False, softmax_scale=D**-0.5, num_kv_heads=H,
                          prefix="blocks.0.attn", skip_sequence_parallel=True)
    assert isinstance(layer.attention, Sage3AttentionImpl)
    in_tree = E.TORCH_SDPA.get_class().get_impl_cls()(num_heads=H, head_size=D, softmax_scale=D**-0.5, causal=False)

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, S, H * D, device="cuda", generator=g).bfloat16()
    w = [torch.randn(H * D, H * D, device="cuda", generator=g).bfloat16() / (H * D) ** 0.5 for _ in range(3)]
    tracker.reset()
    diffs, cosines = [], []
    with set_forward_context(omni_diffusion_config=od_cfg):
        for step in range(STEPS):
            if publish:
                DenoiseProgressMixin().record_denoise_step(step, total_steps=STEPS)
            q, k, v = ((x @ wi).view(1, S, H, D) for wi in w)
            out = layer(q, k, v)
            ref = in_tree.forward_cuda(q, k, v)
            torch.cuda.synchronize()
            diffs.append((out.float() - ref.float()).abs().max().item())
            cosines.append(torch.nn.functional.cosine_similarity(
                out.double().flatten(), ref.double().flatten(), dim=0).item())
            x = x + 0.5 * out.reshape(1, S, H * D)
    print(f"\nsage3 route ({'published' if publish else 'inferred'}): max |out - in-tree| per step {diffs}, "
          f"cos {[round(c, 5) for c in cosines]}")
    assert diffs[0] == 0.0 and diffs[-1] == 0.0
    assert all(d > 1e-3 for d in diffs[1:-1]), diffs
    assert all(c > 0.9 for c in cosines), cosines
