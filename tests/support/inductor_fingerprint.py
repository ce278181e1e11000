"""What Inductor built for compiled vLLM engines, as one comparable line per compiled model.

A diagnosis aid for the GPU tests (issue 14): compiled MoE runs have, a few times and only with
other work on the GPU, landed far from their eager runs. Inductor makes two kinds of choices by
timing on the device, and a busy GPU skews timings: whether data-independent kernels become one
horizontal *combo* kernel (vLLM 0.30 sets ``combo_kernels`` + ``benchmark_combo_kernel`` on
CUDA) and which launch configuration (block sizes, warps: for a reduction they change the
summation order) a kernel with several candidates keeps (its ``.best_config`` file). Printing
both per compiled engine lets a run whose figures moved be compared with one whose did not.

vLLM 0.30 saves each compiled model under
``<VLLM_CACHE_ROOT>/torch_compile_cache/torch_aot_compile/<key>/`` and points Inductor's cache at
its ``inductor_cache`` (the key is not the compile hash vLLM logs as "Using cache directory"; the
engine's log names it in its "saved AOT compiled function to ..." line). The kernels counted are
the ones the compiled graphs launch: the ``async_compile.triton(...)`` blocks of Inductor's
output-code modules (the files that define ``call``), each kernel source once; the kernel files
Inductor writes to time candidates (combo or not) are not counted.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

#: Inductor settings under which nothing is chosen by timing on the device (``deterministic``: no
#: on-device benchmarking of choices that affect numerics; no timed combo-kernel picks), so a busy
#: GPU builds what an idle one does. Given as an engine's ``inductor_compile_config``, it replaces
#: vLLM's own Inductor settings, ``combo_kernels`` among them (combo kernels then off).
NO_TIMED_PICKS = {"deterministic": True, "benchmark_combo_kernel": False}

#: keys of a ``.best_config`` file that are not the choice itself (timings, cache keys)
_NOT_CHOICE = {"time_taken_ms", "triton_cache_hash", "configs_hash", "found_by_coordesc"}
#: one kernel of an output-code module: ``async_compile.triton('name', '''source''', ...)``
_TRITON_BLOCK = re.compile(r"async_compile\.triton\(\s*'([^']+)'\s*,\s*'''(.*?)'''", re.S)
#: what only a combo kernel's source holds (torch/_inductor/codegen/triton_combo_kernel.py)
_COMBO = re.compile(r"num_xblocks_\d|pid_offset")


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


def launched_kernels(cache: Path) -> dict[str, str]:
    """``{digest of source: source}`` of the Triton kernels the output-code modules under
    ``cache`` launch (each distinct source once)."""
    kernels: dict[str, str] = {}
    for f in sorted(cache.rglob("*.py")):
        try:
            src = f.read_text(errors="replace")
        except OSError:
            continue
        if "def call(" not in src:
            continue
        for m in _TRITON_BLOCK.finditer(src):
            kernels.setdefault(hashlib.sha256(m.group(2).encode()).hexdigest()[:16], m.group(2))
    return kernels


def fingerprint(cache_root: Path, logs: dict[str, str] | None = None) -> list[str]:
    """One line per Inductor cache directory under ``cache_root`` (a ``VLLM_CACHE_ROOT``):
    ``<engines> <dir>: kernels=N combo=M best_configs=K picks=<digest>``: N distinct launched
    kernels, M of them combo kernels, K launch configurations picked by timing, and a digest of
    every pick (equal digests: the same choices). ``<engines>``: the keys of ``logs`` (engine
    name -> its log) whose log names the directory's model key, else ``?``. Lines in the order
    the logs name the keys. ``["no Inductor cache under <root>"]`` when there is none."""
    cache_root = Path(cache_root)
    dirs = sorted(p for p in cache_root.rglob("inductor_cache") if p.is_dir()) if cache_root.is_dir() else []
    if not dirs:
        return [f"no Inductor cache under {cache_root}"]
    logs = logs or {}
    text = "\n".join(logs.values())

    def key(d: Path) -> str:
        return d.parent.name

    def first_named(d: Path) -> int:
        i = text.find(key(d))
        return i if i >= 0 else len(text) + 1

    dirs.sort(key=lambda d: (first_named(d), str(d)))
    lines = []
    for d in dirs:
        kernels = launched_kernels(d)
        combo = sum(bool(_COMBO.search(src)) for src in kernels.values())
        picks = _picks(d)
        digest = hashlib.sha256("\n".join(picks).encode()).hexdigest()[:12]
        who = ",".join(name for name, log in logs.items() if key(d) in log) or "?"
        lines.append(f"[{who}] {d.relative_to(cache_root)}: kernels={len(kernels)} combo={combo} "
                     f"best_configs={len(picks)} picks={digest}")
    return lines


def print_fingerprint(label: str, cache_root: Path, logs: dict[str, str] | None = None) -> None:
    """Print :func:`fingerprint`'s lines, each prefixed ``inductor fingerprint, <label>:``."""
    for line in fingerprint(cache_root, logs):
        print(f"inductor fingerprint, {label}: {line}")
