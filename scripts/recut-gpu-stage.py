"""Re-cut ../shared/gpu/stage-vllm.sh's parts so that each fits one transfer beside the working tree.

A device transfer carries 64 MiB in all: the working tree (tracked files, ~20 MiB) plus the carried
part. stage-vllm.sh cuts parts of up to 50 MiB; this script re-cuts them to at most LIMIT MiB with
the same payload (the vLLM tarball's pieces concatenate, in name order, to the same bytes; the wheels
are packed largest first) and the same receive.sh / install.sh, with PARTS rewritten.

    python3 scripts/recut-gpu-stage.py .gpu-stage .gpu-stage-cut 40
    python3 scripts/recut-gpu-stage.py .gpu-stage .gpu-stage-cut      # 64 MiB less the tracked files, less 3
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
from pathlib import Path


def tracked_mib() -> float:
    """MiB of what every transfer carries beside the part: the files git tracks in this checkout
    and the untracked ones it does not ignore."""
    top = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                              check=True).stdout.strip())
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=top,
                           capture_output=True, check=True).stdout.split(b"\0")
    files = (top / n.decode() for n in names if n)
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("limit_mib", type=int, nargs="?", default=None,
                    help="largest part (default: 64 MiB less the tracked files, less 3)")
    a = ap.parse_args()
    if a.limit_mib is None:
        tree = tracked_mib()
        a.limit_mib = int(64 - tree - 3)
        print(f"parts of at most {a.limit_mib} MiB (tracked files {tree:.1f} MiB)")
    src, dst = a.src.resolve(), a.dst.resolve()
    if src == dst or src in dst.parents or dst in src.parents:
        raise SystemExit(f"recut-gpu-stage: {a.dst} overlaps {a.src}; the re-cut goes to a folder of its own")
    if a.limit_mib < 8:
        raise SystemExit(f"recut-gpu-stage: limit {a.limit_mib} MiB; accepted: at least 8")
    limit = a.limit_mib << 20
    parts = sorted(a.src.glob("p*"), key=lambda p: int(p.name[1:]))
    if not parts:
        raise SystemExit(f"recut-gpu-stage: no parts p1.. in {a.src}")
    pieces = sorted((f for p in parts for f in (p / "payload").glob("vllm.tar.xz.part.*")), key=lambda f: f.name)
    tar = b"".join(f.read_bytes() for f in pieces)
    wheels = sorted((f for p in parts for f in (p / "payload" / "wheels").glob("*.whl")),
                    key=lambda f: -f.stat().st_size)
    items: list[tuple[str, bytes | Path, int]] = []
    for i in range(0, len(tar), limit):
        chunk = tar[i:i + limit]
        items.append((f"vllm.tar.xz.part.{i // limit:02d}", chunk, len(chunk)))
    for w in wheels:
        if w.stat().st_size > limit:
            raise SystemExit(f"recut-gpu-stage: {w.name} is {w.stat().st_size >> 20} MiB > {a.limit_mib} MiB")
        items.append((f"wheels/{w.name}", w, w.stat().st_size))
    bins: list[list[tuple[str, bytes | Path, int]]] = []
    for it in items:  # first fit
        for b in bins:
            if sum(x[2] for x in b) + it[2] <= limit:
                b.append(it)
                break
        else:
            bins.append([it])
    if a.dst.exists():
        shutil.rmtree(a.dst)
    for k, b in enumerate(bins, 1):
        d = a.dst / f"p{k}"
        (d / "payload" / "wheels").mkdir(parents=True)
        for name, data, _ in b:
            if isinstance(data, bytes):
                (d / "payload" / name).write_bytes(data)
            else:
                shutil.copy(data, d / "payload" / name)
        for s in ("receive.sh", "install.sh"):
            shutil.copy(parts[0] / s, d / s)
        (d / "PARTS").write_text(str(len(bins)))
    again = b"".join(f.read_bytes() for f in sorted(a.dst.glob("p*/payload/vllm.tar.xz.part.*"), key=lambda f: f.name))
    assert hashlib.md5(again).digest() == hashlib.md5(tar).digest(), "the re-cut tarball differs"
    for k, b in enumerate(bins, 1):
        print(f"p{k}: {sum(x[2] for x in b) / 2**20:.1f} MiB, {len(b)} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
