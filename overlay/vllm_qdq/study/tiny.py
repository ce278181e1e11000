"""Tiny random checkpoints built on the spot (no download), each saved with a tiny tokenizer.

    python -m vllm_qdq.study.tiny study /tmp/tiny            # the study's Llama (marker file)
    python -m vllm_qdq.study.tiny llama /tmp/tiny-llama
    python -m vllm_qdq.study.tiny moe /tmp/tiny-moe
    python -m vllm_qdq.study.tiny gptoss-mxfp4 /tmp/tiny-gptoss

Two families, each kept bit-identical to what it always built (same seeds, corpora, sizes):

* :func:`build_study_llama`: the model of the study and ``make demo``, which ``vllm serve`` loads
  on the CPU engine in seconds: 2 layers, hidden 128, 4 heads of 32 (2 KV heads; the CPU
  attention kernel needs a head size of at least 32), vocabulary about 500, random weights from a
  fixed seed, plus a tokenizer trained on a short embedded English text. Every string encodes
  (byte-level), so benchmark and evaluation prompts work; the answers are noise. It writes
  :data:`MARKER`, by which the study's report says the weights are random.
* :func:`build_tiny_llama`, :func:`build_tiny_moe`, :func:`build_tiny_gptoss_mxfp4`: the test
  suites' models. Sizes are multiples of 32 so MX blocks and vLLM's CPU kernels (MoE grouped GEMM
  alignment 32) fit them exactly; :func:`build_once` shares one build between steps of a suite.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "GPU_MODELS",
    "MARKER",
    "TINY_CONFIG",
    "build_gpu_model",
    "build_once",
    "build_study_llama",
    "build_tiny_gptoss_mxfp4",
    "build_tiny_llama",
    "build_tiny_moe",
    "main",
]

#: File written into every model :func:`build_study_llama` builds: it says the weights are random.
MARKER = ".tiny-llama.json"

#: Architecture of the study's tiny model (LlamaConfig keyword arguments).
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

#: The study model's tokenizer corpus (one text, trained on four times).
_STUDY_CORPUS = """\
The quick brown fox jumps over the lazy dog. A study compares two servers of one model.
Question: What is two plus three? Answer: five. Question: What color is the sky? Answer: blue.
Numbers: zero one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 10 100.
Low precision formats such as mxfp4, nvfp4 and fp8 trade accuracy for speed and memory.
The capital of France is Paris. Water boils at one hundred degrees. Cats and dogs are animals.
"""

#: The test models' tokenizer corpus (five lines, trained on four times).
_TEST_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world this is a tiny tokenizer for tests",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "0 1 2 3 4 5 6 7 8 9 . , ! ? ; : ' - ( )",
    "The capital of France is Paris. Numbers: 12345 67890.",
]


def _save_tokenizer(path: Path, vocab_size: int, corpus: list[str], **fast_kwargs: Any) -> int:
    """Byte-level BPE (every byte encodable, specials ``<s> </s> <unk>``) trained on ``corpus``
    and saved to ``path`` as a fast tokenizer (``fast_kwargs`` go to ``PreTrainedTokenizerFast``);
    returns the trained vocabulary size."""
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
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   **fast_kwargs)
    fast.save_pretrained(str(path))
    return tok.get_vocab_size()


def _save_tiny_tokenizer(path: Path, vocab_size: int) -> int:
    """The test models' tokenizer (:data:`_TEST_CORPUS`); returns its vocabulary size."""
    return _save_tokenizer(path, vocab_size, _TEST_CORPUS * 4)


def build_study_llama(path: str | Path, *, seed: int = 0, dtype: str = "bfloat16") -> Path:
    """Write the study's tiny random Llama (+ tokenizer, :data:`TINY_CONFIG`, matrices drawn from
    N(0, 2 / fan_in**0.5)) to ``path`` and return it; no-op if :data:`MARKER` there records the
    same config, seed and dtype."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    marker = path / MARKER
    want = {"config": TINY_CONFIG, "seed": seed, "dtype": dtype}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return path
    path.mkdir(parents=True, exist_ok=True)
    _save_tokenizer(path, TINY_CONFIG["vocab_size"], [_STUDY_CORPUS] * 4,
                    model_max_length=TINY_CONFIG["max_position_embeddings"])
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


#: Config fields the random test-suite models share (``build_tiny_llama``, ``build_tiny_moe``).
_TINY_CONFIG: dict[str, Any] = {"max_position_embeddings": 256, "bos_token_id": 0, "eos_token_id": 1,
                                "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def _save_random(path: Path, model: Any, std: float) -> Path:
    """Draw every matrix of ``model`` (ndim >= 2) from N(0, std) with torch's global generator
    (seeded by the caller before it built ``model``), save it as bf16 under ``path``."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, std)
    model.to(torch.bfloat16).save_pretrained(str(path))
    return path


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
    max_position: int = 256,
) -> Path:
    """A random LlamaForCausalLM (default: 2 layers, hidden 64, 2 heads / 1 KV head, head_dim 32,
    MLP 128; matrices drawn from N(0, std)), bf16, ``max_position`` tokens of context (what vLLM
    takes as the longest ``max_model_len``). GPU kernels with tile constraints (Marlin)
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
        **{**_TINY_CONFIG, "max_position_embeddings": max_position},
    )
    # larger-than-default init so QDQ changes the logits visibly
    torch.manual_seed(seed)  # the model's construction, then _save_random, draw from it
    return _save_random(path, LlamaForCausalLM(cfg), std)


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
        **_TINY_CONFIG,
    )
    torch.manual_seed(seed)  # the model's construction, then _save_random, draw from it
    return _save_random(path, MixtralForCausalLM(cfg), 0.1)


def _e2m1_blocks(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Random packed E2M1 bytes (two codes per byte, low nibble first), every code equally likely."""
    import torch

    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)


def _e8m0_scales(gen: torch.Generator, *shape: int, lo: int = 118, hi: int = 122) -> torch.Tensor:
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


def build_once(path: str | Path, builder: Callable[..., Path], **kwargs: Any) -> Path:
    """``builder(path, **kwargs)`` unless an earlier call completed it with the same builder and
    arguments (a ``.done`` marker in ``path`` that records them, written last), so steps of a
    suite share one build. Builders running at once (steps side by side) take turns on a lock
    file beside ``path``; a marker for other arguments means a rebuild."""
    import fcntl
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


#: The GPU suite's two tiny models (``gptoss``: MXFP4 MoE experts for Marlin MoE; ``llama``:
#: sized for Marlin's tiles): ``kind -> (builder, arguments)``, built by :func:`build_gpu_model`.
GPU_MODELS: dict[str, tuple[Callable[..., Path], dict[str, Any]]] = {
    "gptoss": (build_tiny_gptoss_mxfp4, {"hidden": 256, "experts": 4, "layers": 2}),
    "llama": (build_tiny_llama, {"hidden": 256, "intermediate": 512, "heads": 4, "kv_heads": 2, "head_dim": 64}),
}


def build_gpu_model(kind: str, root: str | Path) -> Path:
    """The GPU suite's tiny model ``kind`` (:data:`GPU_MODELS`) under ``root / kind``, built once
    (:func:`build_once`)."""
    builder, kwargs = GPU_MODELS[kind]
    return build_once(Path(root) / kind, builder, **kwargs)


_BUILDERS: dict[str, Callable[..., Path]] = {
    "study": build_study_llama, "llama": build_tiny_llama, "moe": build_tiny_moe,
    "gptoss-mxfp4": build_tiny_gptoss_mxfp4,
}


def main(argv: list[str] | None = None) -> int:
    """``python -m vllm_qdq.study.tiny KIND OUTPUT_DIR [--seed N] [--dtype D]``: build, print the path."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vllm_qdq.study.tiny", description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=list(_BUILDERS), help="which checkpoint (study: the study's Llama)")
    ap.add_argument("output_dir", type=Path,
                    help="model directory to write (created; kind study: left as is if it holds this model already)")
    ap.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    ap.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"),
                    help="weight dtype, kind study only (default bfloat16)")
    args = ap.parse_args(argv)
    if args.output_dir.exists() and not args.output_dir.is_dir():
        ap.error(f"output_dir {str(args.output_dir)!r} exists and is not a directory")
    if args.kind == "study":
        path = build_study_llama(args.output_dir, seed=args.seed, dtype=args.dtype or "bfloat16")
    elif args.dtype is not None:
        ap.error(f"--dtype applies to kind study only (kind {args.kind} is bfloat16)")
    else:
        path = _BUILDERS[args.kind](args.output_dir, seed=args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
