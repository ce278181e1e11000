"""Tiny random checkpoints built on the spot (no downloads), each saved with a tiny tokenizer.

    python scripts/tiny_models.py llama /tmp/tiny-llama
    python scripts/tiny_models.py moe /tmp/tiny-moe
    python scripts/tiny_models.py gptoss-mxfp4 /tmp/tiny-gptoss

Every builder is self-contained (its own imports, config and tokenizer), takes the output
directory and returns it. Sizes are multiples of 32 so MX blocks and vLLM's CPU kernels
(MoE grouped GEMM alignment 32) fit them exactly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world this is a tiny tokenizer for tests",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "0 1 2 3 4 5 6 7 8 9 . , ! ? ; : ' - ( )",
    "The capital of France is Paris. Numbers: 12345 67890.",
]


def _save_tiny_tokenizer(path: Path, vocab_size: int) -> int:
    """Byte-level BPE (every byte encodable) trained on a few lines; returns its vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(path))
    return tok.get_vocab_size()


def build_tiny_llama(
    path: str | Path,
    seed: int = 0,
    *,
    hidden: int = 64,
    intermediate: int = 128,
    heads: int = 2,
    kv_heads: int = 1,
    head_dim: int = 32,
    layers: int = 2,
    std: float = 0.1,
) -> Path:
    """A random LlamaForCausalLM (default: 2 layers, hidden 64, 2 heads / 1 KV head, head_dim 32,
    MLP 128; matrices drawn from N(0, std)), bf16. GPU kernels with tile constraints (Marlin)
    want larger sizes, e.g. ``hidden=256, intermediate=512, heads=4, kv_heads=2, head_dim=64``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = _save_tiny_tokenizer(path, 320)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    # Larger-than-default init so QDQ changes the logits visibly.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, std)
    model.to(torch.bfloat16).save_pretrained(str(path))
    return path


def build_tiny_moe(path: str | Path, seed: int = 0) -> Path:
    """A 2-layer random MixtralForCausalLM (hidden 64, 4 experts top-2, expert MLP 64), bf16."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = _save_tiny_tokenizer(path, 320)
    cfg = MixtralConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(seed)
    model = MixtralForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.1)
    model.to(torch.bfloat16).save_pretrained(str(path))
    return path


def _e2m1_blocks(gen, *shape: int) -> torch.Tensor:
    """Random packed E2M1 bytes (two codes per byte, low nibble first), every code equally likely."""
    import torch

    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)


def _e8m0_scales(gen, *shape: int, lo: int = 118, hi: int = 122) -> torch.Tensor:
    """Random E8M0 scale bytes in ``[lo, hi]`` (2**(lo-127) .. 2**(hi-127))."""
    import torch

    return torch.randint(lo, hi + 1, shape, dtype=torch.uint8, generator=gen)


def build_tiny_gptoss_mxfp4(
    path: str | Path,
    hidden: int = 256,
    experts: int = 4,
    layers: int = 2,
    *,
    intermediate: int | None = None,
    top_k: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 64,
    vocab: int = 320,
    seed: int = 0,
) -> Path:
    """A random GptOssForCausalLM in the gpt-oss MXFP4 checkpoint layout (no model instantiated).

    Experts are stored as vLLM/transformers read openai/gpt-oss checkpoints:
    ``model.layers.N.mlp.experts.gate_up_proj_blocks`` uint8 ``[E, 2I, H/32, 16]`` (packed
    E2M1, low nibble first), ``gate_up_proj_scales`` uint8 E8M0 ``[E, 2I, H/32]``,
    ``down_proj_blocks`` ``[E, H, I/32, 16]`` + ``down_proj_scales`` ``[E, H, I/32]``, biases
    in bf16; config.json carries ``"quantization_config": {"quant_method": "mxfp4"}``. Every
    other tensor is bf16 with the names of transformers' GptOss model. ``hidden`` and
    ``intermediate`` must be multiples of 32 (multiples of 256 suit every Marlin tile).
    """
    import json

    import torch
    from safetensors.torch import save_file
    from transformers import GptOssConfig

    inter = intermediate or hidden
    if hidden % 32 or inter % 32:
        raise ValueError(f"hidden={hidden} and intermediate={inter} must be multiples of 32")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = _save_tiny_tokenizer(path, vocab)
    cfg = GptOssConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        max_position_embeddings=4096,
        sliding_window=128,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        tie_word_embeddings=False,
    )
    d = cfg.to_dict()
    d["architectures"] = ["GptOssForCausalLM"]
    d["torch_dtype"] = "bfloat16"
    d["quantization_config"] = {"quant_method": "mxfp4"}
    (path / "config.json").write_text(json.dumps(d, indent=1))

    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, std: float = 0.05) -> torch.Tensor:
        return (torch.randn(shape, generator=gen) * std).to(torch.bfloat16)

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, dtype=torch.bfloat16)

    t: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": rnd(vocab, hidden, std=0.5),
        "model.norm.weight": ones(hidden),
        "lm_head.weight": rnd(vocab, hidden, std=0.1),
    }
    for i in range(layers):
        p = f"model.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = ones(hidden)
        t[f"{p}.post_attention_layernorm.weight"] = ones(hidden)
        for name, rows in (("q", heads * head_dim), ("k", kv_heads * head_dim), ("v", kv_heads * head_dim)):
            t[f"{p}.self_attn.{name}_proj.weight"] = rnd(rows, hidden)
            t[f"{p}.self_attn.{name}_proj.bias"] = rnd(rows, std=0.01)
        t[f"{p}.self_attn.o_proj.weight"] = rnd(hidden, heads * head_dim)
        t[f"{p}.self_attn.o_proj.bias"] = rnd(hidden, std=0.01)
        t[f"{p}.self_attn.sinks"] = rnd(heads, std=1.0)
        t[f"{p}.mlp.router.weight"] = rnd(experts, hidden, std=0.2)
        t[f"{p}.mlp.router.bias"] = rnd(experts, std=0.1)
        e = f"{p}.mlp.experts"
        t[f"{e}.gate_up_proj_blocks"] = _e2m1_blocks(gen, experts, 2 * inter, hidden // 32, 16)
        t[f"{e}.gate_up_proj_scales"] = _e8m0_scales(gen, experts, 2 * inter, hidden // 32)
        t[f"{e}.gate_up_proj_bias"] = rnd(experts, 2 * inter, std=0.01)
        t[f"{e}.down_proj_blocks"] = _e2m1_blocks(gen, experts, hidden, inter // 32, 16)
        t[f"{e}.down_proj_scales"] = _e8m0_scales(gen, experts, hidden, inter // 32)
        t[f"{e}.down_proj_bias"] = rnd(experts, hidden, std=0.01)
    save_file(t, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1}))
    return path


def build_once(path: str | Path, builder, **kwargs) -> Path:
    """``builder(path, **kwargs)`` unless an earlier call completed it with the same builder and
    arguments (a ``.done`` marker in ``path`` that records them, written last), so steps of a
    suite share one build. Builders running at once (steps side by side) take turns on a lock
    file beside ``path``; a marker for other arguments means a rebuild."""
    import fcntl
    import json
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    want = json.dumps({"builder": builder.__name__, **kwargs}, sort_keys=True, default=str)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = path / ".done"
        if not done.exists() or done.read_text() != want:
            if path.exists():
                shutil.rmtree(path)
            builder(path, **kwargs)
            done.write_text(want)
    return path


_BUILDERS = {"llama": build_tiny_llama, "moe": build_tiny_moe, "gptoss-mxfp4": build_tiny_gptoss_mxfp4}

def main(argv: list[str] | None = None) -> int:
    """``tiny_models.py KIND OUT_DIR``: build one checkpoint, print its path."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=list(_BUILDERS), help="which checkpoint")
    ap.add_argument("out_dir", type=Path, help="directory to write (created)")
    args = ap.parse_args(argv)
    print(_BUILDERS[args.kind](args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
