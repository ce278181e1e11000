"""vLLM throughput with activation QDQ off vs on, Marlin MXFP4 MoE, gpt-oss-shaped model (GPU).

    python scripts/bench_plugin_throughput.py [--out /tmp/bench-gptoss] [--target 0.95]

Builds (once, under ``--out``) a random gpt-oss-shaped MXFP4 checkpoint: hidden 2880,
intermediate 2880, 32 experts, top-4, 4 layers, 64 query / 8 KV heads of 64, random MXFP4
expert weights in the gpt-oss layout (scripts/tiny_models.py). Then, each configuration in its
own process, runs ``LLM(model, moe_backend="marlin")`` with vLLM's defaults (torch.compile +
CUDA graphs) on 256 prompts of 512 random token ids, 128 generated tokens each
(``ignore_eos``), after a short warm-up, and times ``llm.generate``. Prints tok/s (generated and
total) for ``VLLM_QDQ=0`` and ``VLLM_QDQ=1`` (defaults: MXFP4 weights -> mxfp4 activations) and
the on/off ratio of generated tok/s; exits 1 when the ratio is below ``--target``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_PROMPTS, PROMPT_LEN, GEN_LEN = 256, 512, 128


def worker(model: str, n_prompts: int, prompt_len: int, gen_len: int) -> dict:
    import random

    from vllm import LLM, SamplingParams

    llm = LLM(model=model, moe_backend="marlin", max_model_len=prompt_len + gen_len + 16, seed=0)
    vocab = len(llm.get_tokenizer())
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(2, vocab) for _ in range(prompt_len)]}
               for _ in range(n_prompts)]
    sp = SamplingParams(max_tokens=gen_len, temperature=0.0, ignore_eos=True)
    llm.generate(prompts[:8], SamplingParams(max_tokens=8, ignore_eos=True))  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(prompts, sp)
    dt = time.perf_counter() - t0
    gen = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"seconds": dt, "generated": gen, "gen_tok_s": gen / dt,
            "total_tok_s": (gen + n_prompts * prompt_len) / dt}


def run_config(model: Path, qdq: bool, args: argparse.Namespace) -> dict:
    env = dict(os.environ, VLLM_QDQ="1" if qdq else "0")
    cmd = [sys.executable, __file__, "--worker", str(model), "--prompts", str(args.prompts),
           "--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    out = r.stdout + r.stderr
    if r.returncode != 0:
        sys.stderr.write(out[-6000:])
        raise SystemExit(f"the {'QDQ on' if qdq else 'QDQ off'} run failed (rc {r.returncode})")
    if qdq and "activation QDQ enabled" not in out:
        raise SystemExit("QDQ on run: the plugin did not register (no 'activation QDQ enabled' line)")
    return json.loads(re.search(r"^BENCH (.*)$", out, re.M).group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/bench-gptoss-mxfp4")
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--prompts", type=int, default=N_PROMPTS)
    ap.add_argument("--prompt-len", type=int, default=PROMPT_LEN)
    ap.add_argument("--gen-len", type=int, default=GEN_LEN)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        res = worker(args.worker, args.prompts, args.prompt_len, args.gen_len)
        print("BENCH " + json.dumps(res), flush=True)
        return 0

    sys.path.insert(0, str(HERE))
    from tiny_models import build_tiny_gptoss_mxfp4

    model = Path(args.out)
    if not (model / "model.safetensors").exists():
        build_tiny_gptoss_mxfp4(model, hidden=2880, experts=32, layers=4, intermediate=2880, top_k=4,
                                heads=64, kv_heads=8, head_dim=64)
    off = run_config(model, False, args)
    on = run_config(model, True, args)
    ratio = on["gen_tok_s"] / off["gen_tok_s"]
    print(f"model: gpt-oss-shaped MXFP4 (hidden 2880, 32 experts, top-4, 4 layers), moe_backend=marlin, "
          f"{args.prompts} prompts x {args.prompt_len} tokens, {args.gen_len} generated each")
    for name, r in (("QDQ off", off), ("QDQ on ", on)):
        print(f"{name}: {r['gen_tok_s']:10.1f} generated tok/s  {r['total_tok_s']:10.1f} total tok/s  "
              f"({r['seconds']:.2f} s)")
    print(f"ratio on/off (generated tok/s): {ratio:.3f}  (target >= {args.target})")
    return 0 if ratio >= args.target else 1


if __name__ == "__main__":
    raise SystemExit(main())
