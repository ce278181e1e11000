"""A tiny random Llama and a tiny byte-level BPE tokenizer, built on the spot (no download).

:func:`build_tiny_llama` writes a Hugging Face model directory that ``vllm serve`` loads on
the CPU engine in seconds: 2 layers, hidden 128, 4 heads of 32 (2 KV heads; the CPU attention kernel needs a head size of at least 32), vocabulary about 500, random
weights from a fixed seed (so two builds are identical), plus a tokenizer trained on a short
embedded English text. Every string encodes (byte-level), so benchmark and evaluation
prompts work; the model's answers are noise, which is all the study pipeline needs.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["MARKER", "TINY_CONFIG", "build_tiny_llama", "main"]

#: File written into every model this module builds: it says the weights are random.
MARKER = ".tiny-llama.json"

#: Architecture of the tiny model (LlamaConfig keyword arguments).
TINY_CONFIG: dict = {
    "vocab_size": 512,  # BPE target; the model takes the trained size
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A study compares two servers of one model.
Question: What is two plus three? Answer: five. Question: What color is the sky? Answer: blue.
Numbers: zero one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 10 100.
Low precision formats such as mxfp4, nvfp4 and fp8 trade accuracy for speed and memory.
The capital of France is Paris. Water boils at one hundred degrees. Cats and dogs are animals.
"""


def _build_tokenizer(path: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "</s>", "<unk>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        model_max_length=TINY_CONFIG["max_position_embeddings"],
    )
    fast.save_pretrained(str(path))


def build_tiny_llama(path: str | Path, *, seed: int = 0, dtype: str = "bfloat16") -> Path:
    """Write a tiny random Llama (+ tokenizer) to ``path`` and return it; no-op if already there."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    marker = path / MARKER
    want = {"config": TINY_CONFIG, "seed": seed, "dtype": dtype}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return path
    path.mkdir(parents=True, exist_ok=True)
    _build_tokenizer(path, TINY_CONFIG["vocab_size"])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    arch = dict(TINY_CONFIG, vocab_size=len(tok))  # every id decodes
    cfg = LlamaConfig(
        **arch, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    cfg.dtype = dtype
    g = torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.5 / p.shape[-1] ** 0.5 * 4, generator=g)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(str(path))
    marker.write_text(json.dumps(want))
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m vllm_qdq.tiny OUTPUT_DIR [--seed N] [--dtype D]``: build, print the path."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vllm_qdq.tiny", description=__doc__.split("\n\n")[0])
    ap.add_argument("output_dir", type=Path,
                    help="model directory to write (created; left as is if it holds this tiny model already)")
    ap.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                    help="weight dtype (default bfloat16)")
    args = ap.parse_args(argv)
    if args.output_dir.exists() and not args.output_dir.is_dir():
        ap.error(f"output_dir {str(args.output_dir)!r} exists and is not a directory")
    print(build_tiny_llama(args.output_dir, seed=args.seed, dtype=args.dtype))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
