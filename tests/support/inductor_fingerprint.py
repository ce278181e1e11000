"""What Inductor built for a compiled vLLM engine, as one comparable line per compile hash.

A diagnosis aid for the GPU tests (issue 14): compiled MoE runs have, a few times and only with
other work on the GPU, landed far from their eager runs. Inductor makes two kinds of choices by
timing on the device, and a busy GPU skews timings: whether data-independent kernels become one
horizontal *combo* kernel (vLLM 0.30 sets ``combo_kernels`` + ``benchmark_combo_kernel`` on
CUDA) and which launch configuration (block sizes, warps: for a reduction they change the
summation order) a kernel with several candidates keeps (its ``.best_config`` file). Printing
both per compiled engine lets a run whose figures moved be compared with one whose did not.

vLLM 0.30 points Inductor's cache at ``<VLLM_CACHE_ROOT>/torch_compile_cache/.../inductor_cache``
(one per compile hash); every such directory under the root gets a line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

#: keys of a ``.best_config`` file that are not the choice itself (timings, cache keys)
_NOT_CHOICE = {"time_taken_ms", "triton_cache_hash", "configs_hash", "found_by_coordesc"}


def _picks(cache: Path) -> list[str]:
    picks = []
    for f in sorted(cache.rglob("*.best_config")):
        try:
            cfg = json.loads(f.read_text())
        except (OSError, ValueError):
            picks.append(f"{f.stem}:unreadable")
            continue
        choice = {k: v for k, v in cfg.items() if k not in _NOT_CHOICE} if isinstance(cfg, dict) else cfg
        picks.append(f"{f.stem}:{json.dumps(choice, sort_keys=True)}")
    return picks


def fingerprint(cache_root: Path) -> list[str]:
    """One line per Inductor cache directory under ``cache_root`` (a ``VLLM_CACHE_ROOT``):
    ``<dir relative to the root>: kernels=N combo=M tuned=K picks=<digest>``, where N counts
    generated Triton kernel sources, M those that are combo kernels, K the kernels whose launch
    configuration was picked by timing, and the digest covers every pick (equal digests: the
    same choices). ``["no Inductor cache under <root>"]`` when there is none."""
    cache_root = Path(cache_root)
    dirs = sorted(p for p in cache_root.rglob("inductor_cache") if p.is_dir()) if cache_root.is_dir() else []
    if not dirs:
        return [f"no Inductor cache under {cache_root}"]
    lines = []
    for d in dirs:
        kernels = combo = 0
        for f in d.rglob("*.py"):
            try:
                src = f.read_text(errors="replace")
            except OSError:
                continue
            if "@triton.jit" not in src:
                continue
            kernels += 1
            combo += "num_xblocks_0" in src or "pid_offset" in src
        picks = _picks(d)
        digest = hashlib.sha256("\n".join(picks).encode()).hexdigest()[:12]
        lines.append(f"{d.relative_to(cache_root)}: kernels={kernels} combo={combo} tuned={len(picks)} picks={digest}")
    return lines


def print_fingerprint(label: str, cache_root: Path) -> None:
    """Print :func:`fingerprint`'s lines, each prefixed ``inductor fingerprint, <label>:``."""
    for line in fingerprint(cache_root):
        print(f"inductor fingerprint, {label}: {line}")
