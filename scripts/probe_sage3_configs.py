"""Probe (issue 17): which launch configuration of sage3's attention kernel is fastest, per format and S?

The attention kernel is autotuned over :data:`vllm_qdq.sage3.numerics.kernel._FWD_CONFIGS` (BLOCK_M,
warps, pipeline stages; BLOCK_N is the numerics' 64 keys and stays). This probe pins the autotuner
to one configuration at a time (the five of ``_FWD_CONFIGS`` and the candidates of :data:`EXTRA`),
times every format (fp32 accumulation, B=1 H=24, D=128 by default) beside SDPA, interleaved
(every configuration and SDPA in each round: the lent machines drift between runs), and prints per
(S, format) the median ms of each configuration, the configuration the autotuner picks on its own,
and the best one's time / SDPA (a ratio of medians: SDPA is timed once a round, ahead of every
configuration; ``scripts/bench_sage3.py``'s main table is the measure of record). None of these parameters changes a number the kernel computes (a
query tile's rows are independent; stages and warps only schedule the same operations): they are
launch parameters, and the GPU tests of ``tests/gpu/test_sage3_gpu.py`` hold for any of them.

    python3 scripts/probe_sage3_configs.py [--seqs 4096,16384] [--dims 128] [--rounds 3]
        [--formats mxfp4,nvfp4,mxfp8_s1,mxfp4_s1]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import triton

#: configurations tried beyond ``_FWD_CONFIGS``: (BLOCK_M, num_warps, num_stages)
EXTRA = ((128, 8, 4), (128, 4, 2), (64, 4, 4))


def _label(cfg: tuple[int, int, int]) -> str:
    return f"{cfg[0]}/{cfg[1]}w/{cfg[2]}s"


def _pin(tuned, cfg: tuple[int, int, int] | None, saved: list) -> None:
    """Restrict the autotuner ``tuned`` to configuration ``cfg`` (None: its own list, ``saved``) and
    forget what it picked and what the eager fast path recorded."""
    from vllm_qdq.sage3.numerics import kernel as K

    tuned.configs = saved if cfg is None else [
        triton.Config({"BLOCK_M": cfg[0]}, num_warps=cfg[1], num_stages=cfg[2])]
    tuned.cache = {}
    K._FAST.clear()
    K._REFUSED.clear()


def _probe(s: int, d: int, fmts: list[str], cfgs: list, own: list, saved: list, rounds: int) -> None:
    """One table: every configuration of ``cfgs`` and SDPA, interleaved (``bench_sage3``'s
    :func:`_interleaved_ms`), at sequence length ``s``."""
    from bench_sage3 import _interleaved_ms  # scripts/ is on the path of a script run from it
    from vllm_qdq.sage3.numerics import kernel as K

    tuned = K._sage3_fwd_tuned
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, s, 24, d, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    picked = {}
    for fmt in fmts:  # the autotuner's own pick, over its own list
        _pin(tuned, None, saved)
        K.sage3_attention(q, k, v, quant_format=fmt)
        bc = tuned.best_config
        picked[fmt] = (bc.kwargs["BLOCK_M"], bc.num_warps, bc.num_stages)
    pinned: list = [None]  # the configuration the autotuner is pinned to now

    def pinned_call(cfg, fmt):
        def call():
            if pinned[0] != cfg:  # pinned once a configuration's turn starts, not on every timed call
                _pin(tuned, cfg, saved)
                pinned[0] = cfg
            return K.sage3_attention(q, k, v, quant_format=fmt)
        return call

    calls = {"sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)}
    calls.update({(cfg, fmt): pinned_call(cfg, fmt) for cfg in cfgs for fmt in fmts})
    failed: dict = {}  # out of resources, say: named in the table
    times = _interleaved_ms(calls, rounds, failed, warmup=10, rep=50)
    _pin(tuned, None, saved)
    sdpa = statistics.median(times["sdpa"])
    print(f"\n## S={s} D={d}: ms, median of {rounds} interleaved rounds (SDPA {sdpa:.3f} ms, "
          f"{min(times['sdpa']):.3f}-{max(times['sdpa']):.3f}); * = the autotuner's own pick")
    print("| config | " + " | ".join(fmts) + " |")
    print("|---|" + "---|" * len(fmts))
    for cfg in cfgs:
        cells = []
        for fmt in fmts:
            if (cfg, fmt) in failed:
                cells.append(f"failed: {failed[(cfg, fmt)]}")
                continue
            t = times[(cfg, fmt)]
            mark = "*" if picked[fmt] == cfg else ""
            cells.append(f"{statistics.median(t):.3f}{mark} ({min(t):.3f}-{max(t):.3f})")
        print(f"| {_label(cfg)}{'' if cfg in own else ' (new)'} | " + " | ".join(cells) + " |")
    best = []
    for fmt in fmts:
        meds = {cfg: statistics.median(times[(cfg, fmt)]) for cfg in cfgs if (cfg, fmt) not in failed}
        if not meds:
            best.append("every configuration failed")
            continue
        cfg = min(meds, key=meds.get)
        pick = meds.get(picked[fmt])
        best.append(f"{_label(cfg)} {meds[cfg] / sdpa:.2f}x SDPA"
                    + (f" (own pick {pick / sdpa:.2f}x)" if pick is not None else ""))
    print("| best | " + " | ".join(best) + " |", flush=True)


def _rounds(value: str) -> int:
    """``--rounds``: a whole number from 1 to 100 (argparse names a bad one)."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 100:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of rounds; accepted: 1 to 100")
    return n


def _ints(value: str) -> list[int]:
    """``--seqs`` / ``--dims``: positive whole numbers, comma-separated."""
    try:
        out = [int(x) for x in value.split(",")]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a list of positive whole numbers; accepted: e.g. 4096,16384")
    return out


def _formats(value: str) -> list[str]:
    """``--formats``: sage3 formats, comma-separated (an unknown one named with the accepted ones)."""
    from vllm_qdq.sage3.numerics.reference import get_sage3_format

    fmts = [f for f in value.split(",") if f]
    try:
        for f in fmts or [""]:
            get_sage3_format(f)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return fmts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqs", default="4096,16384", type=_ints)
    ap.add_argument("--dims", default="128", type=_ints)
    ap.add_argument("--rounds", type=_rounds, default=3)
    ap.add_argument("--formats", default="mxfp4,nvfp4,mxfp8_s1,mxfp4_s1", type=_formats)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("probe_sage3_configs: needs a CUDA GPU", file=sys.stderr)
        return 2
    from vllm_qdq.sage3.numerics import kernel as K

    saved = list(K._sage3_fwd_tuned.configs)
    own = [(c.kwargs["BLOCK_M"], c.num_warps, c.num_stages) for c in saved]
    cfgs = own + [c for c in EXTRA if c not in own]
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    print(f"configurations (BLOCK_M/warps/stages): autotuned {', '.join(map(_label, own))}; "
          f"candidates {', '.join(_label(c) for c in cfgs if c not in own)}")
    for d in args.dims:
        for s in args.seqs:
            _probe(s, d, args.formats, cfgs, own, saved, args.rounds)
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
