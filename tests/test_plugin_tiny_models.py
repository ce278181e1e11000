"""vllm_qdq.study.tiny: the gpt-oss MXFP4 builder writes exactly the tensors transformers'
GptOss model has, with the experts in the gpt-oss MXFP4 layout transformers itself decodes."""

from __future__ import annotations

import torch
from vllm_qdq.study.tiny import build_tiny_gptoss_mxfp4


def test_gptoss_mxfp4_layout(tmp_path):
    from safetensors.torch import load_file
    from transformers import GptOssConfig, GptOssForCausalLM
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    p = build_tiny_gptoss_mxfp4(tmp_path / "m", hidden=64, experts=4, layers=2, intermediate=96, head_dim=16)
    cfg = GptOssConfig.from_pretrained(p)
    assert cfg.quantization_config == {"quant_method": "mxfp4"}
    del cfg.quantization_config
    ref = {k: v.shape for k, v in GptOssForCausalLM(cfg).state_dict().items()}
    got = load_file(str(p / "model.safetensors"))
    for k, shape in ref.items():
        if k.endswith(("experts.gate_up_proj", "experts.down_proj")):
            blocks, scales = got[k + "_blocks"], got[k + "_scales"]
            assert blocks.dtype == scales.dtype == torch.uint8
            assert convert_moe_packed_tensors(blocks, scales).shape == shape, k
        else:
            assert got[k].shape == shape, k
    assert got["model.layers.0.mlp.experts.gate_up_proj_blocks"].shape == (4, 192, 2, 16)
    assert got["model.layers.0.mlp.experts.down_proj_scales"].shape == (4, 64, 3)
    assert len(got) == len(ref) + 4  # blocks + scales instead of one tensor, two projections, two layers
