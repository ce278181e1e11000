"""Print pip constraints: every installed distribution at its installed version, then the lines of
the given lock file for distributions that are not installed (so installing never changes the image)."""

import importlib.metadata as md
import re
import sys


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


installed = {}
for dist in md.distributions():
    name = dist.metadata["Name"]
    if name:
        installed[norm(name)] = dist.version
for name, version in sorted(installed.items()):
    print(f"{name}=={version}")
with open(sys.argv[1], encoding="utf-8") as f:
    for line in f:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if norm(re.split(r"[=<>!~ ;\[]", line, maxsplit=1)[0]) not in installed:
            print(line)
