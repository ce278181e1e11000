"""An independent pure-PyTorch QDQ of a ``transformers`` model, mirroring the ``qdq`` method.

Weights are replaced by their QDQ (reference backend) and activations QDQ'd by forward
pre-hooks, module by module on the Hugging Face model (unfused q/k/v and gate/up
projections, Mixtral's 3-D expert tensors), then a float32 forward gives prompt logprobs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from vllm_qdq.qdq import quantize_dequantize


def _q(x: torch.Tensor, fmt: str | dict | None) -> torch.Tensor:
    """QDQ along the last axis; ``fmt`` a format name or a spec ``{"format", "scale_rule",
    "rounding", "seed", "rotate"}`` (the method's JSON keys, passed to the public API as they are)."""
    if fmt is None or fmt == "off":
        return x
    if isinstance(fmt, dict):
        kw = {k: v for k, v in fmt.items() if k != "format"}
        return quantize_dequantize(x, fmt["format"], axis=-1, backend="reference", **kw)
    return quantize_dequantize(x, fmt, axis=-1, backend="reference")


def _pre_hook(fmt: str | dict | None):
    def hook(_mod: nn.Module, args: tuple):
        return (_q(args[0], fmt), *args[1:])

    return hook


@torch.no_grad()
def apply_qdq(
    model: nn.Module,
    weight: str | dict | None,
    act: str | dict | None,
    moe_weight: str | dict | None = None,
    moe_act: str | dict | None = None,
    skip: Callable[[str], bool] = lambda name: False,
) -> dict[str, int]:
    """QDQ every ``nn.Linear`` but ``lm_head`` and every Mixtral expert block; returns counts."""
    moe_weight = moe_weight or weight
    moe_act = moe_act or act
    counts = {"linear": 0, "experts": 0, "skipped": 0}
    for name, mod in model.named_modules():
        if name.endswith("lm_head"):
            continue
        if isinstance(mod, nn.Linear):
            if skip(name):
                counts["skipped"] += 1
                continue
            mod.weight.copy_(_q(mod.weight, weight))
            mod.register_forward_pre_hook(_pre_hook(act))
            counts["linear"] += 1
        elif hasattr(mod, "gate_up_proj") and hasattr(mod, "down_proj") and mod.gate_up_proj.ndim == 3:
            if skip(name):
                counts["skipped"] += 1
                continue
            gu, dn = mod.gate_up_proj, mod.down_proj
            half = gu.shape[1] // 2
            for e in range(gu.shape[0]):  # each expert and projection is a tensor of its own
                gu[e, :half] = _q(gu[e, :half], moe_weight)
                gu[e, half:] = _q(gu[e, half:], moe_weight)
                dn[e] = _q(dn[e], moe_weight)
            mod.register_forward_pre_hook(_pre_hook(moe_act))
            counts["experts"] += 1
    return counts


@torch.no_grad()
def prompt_logprobs(model: nn.Module, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1, float32."""
    logits = model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits[:-1], dim=-1)
    return lp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()


def load_fp32(path: str) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
