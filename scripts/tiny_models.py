"""Tiny random checkpoints built on the spot (no downloads), each saved with a tiny tokenizer.

    python scripts/tiny_models.py llama /tmp/tiny-llama
    python scripts/tiny_models.py moe /tmp/tiny-moe

Every builder is self-contained (its own imports, config and tokenizer), takes the output
directory and returns it. Sizes are multiples of 32 so MX blocks and vLLM's CPU kernels
(MoE grouped GEMM alignment 32) fit them exactly.
"""

from __future__ import annotations

import sys
from pathlib import Path

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


def build_tiny_llama(path: str | Path, seed: int = 0) -> Path:
    """A 2-layer random LlamaForCausalLM (hidden 64, 2 heads / 1 KV head, head_dim 32, MLP 128), bf16."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = _save_tiny_tokenizer(path, 320)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
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
                p.normal_(0.0, 0.1)
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


_BUILDERS = {"llama": build_tiny_llama, "moe": build_tiny_moe}

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in _BUILDERS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(_BUILDERS)}}} OUT_DIR")
    print(_BUILDERS[sys.argv[1]](sys.argv[2]))
