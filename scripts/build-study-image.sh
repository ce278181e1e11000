#!/usr/bin/env bash
# Build the study image (docker/study/Dockerfile) on top of the vllm-qdq image, without any index
# access from inside the build: the distributions the image lacks are resolved on the host against
# the lock (docker/study/constraints.txt = scripts/constraints-cpu.txt, a link), downloaded into .wheelhouse/study-<key>, and served on 127.0.0.1.
# Usage: scripts/build-study-image.sh QDQ_IMAGE [TAG]   (prints TAG, default vllm-qdq-study:<key>)
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "build-study-image: $*" >&2; }
BASE=${1:?usage: scripts/build-study-image.sh QDQ_IMAGE [TAG]}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ "$(readlink -f scripts/constraints-cpu.txt)" = "$(readlink -f docker/study/constraints.txt)" ] \
  || { log "scripts/constraints-cpu.txt is not the link to docker/study/constraints.txt (the one lock)"; exit 1; }
base_id=$(docker image inspect -f '{{.Id}}' "$BASE")
key=$(cat docker/study/* scripts/build-study-image.sh | sha256sum | cut -c1-8)-${base_id#sha256:}
key=${key:0:21}
TAG=${2:-vllm-qdq-study:$key}
if docker image inspect "$TAG" >/dev/null 2>&1; then log "cached: $TAG"; echo "$TAG"; exit 0; fi
t0=$(date +%s)
WH=.wheelhouse/study-$key
if [ ! -f "$WH/.complete" ]; then
  mkdir -p "$WH"
  # what the image already has, then what pip would add to it (resolved here against the lock)
  docker run --rm --network host --entrypoint python3 -v "$PWD/docker/study:/s:ro" "$BASE" \
    /s/pin_installed.py /s/constraints.txt > "$WH/pins.txt"
  docker run --rm --network host --entrypoint python3 "$BASE" -c \
    'import importlib.metadata as m, re; print("\n".join(sorted(re.sub(r"[-_.]+","-",d.metadata["Name"]).lower() for d in m.distributions() if d.metadata["Name"])))' \
    > "$WH/installed.txt"
  "$PY" -m pip install -q --disable-pip-version-check --dry-run --ignore-installed --report "$WH/report.json" \
    -c "$WH/pins.txt" -r docker/study/requirements.txt 2> >(grep -v "is ignored: it is neither a file" >&2)
  "$PY" - "$WH" <<'PY' > "$WH/missing.txt"
import json, re, sys
wh = sys.argv[1]
have = set(open(f"{wh}/installed.txt").read().split())
for item in json.load(open(f"{wh}/report.json"))["install"]:
    meta = item["metadata"]
    name = re.sub(r"[-_.]+", "-", meta["name"]).lower()
    if name not in have:
        print(f"{name}=={meta['version']}")
PY
  log "downloading $(wc -l < "$WH/missing.txt") distributions the image lacks"
  if [ -s "$WH/missing.txt" ]; then
    "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$WH" -r "$WH/missing.txt" \
      2> >(grep -v "is ignored: it is neither a file" >&2)
  fi
  touch "$WH/.complete"
fi
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$PY" -m http.server --bind 127.0.0.1 --directory "$WH" "$PORT" >/dev/null 2>&1 &
srv=$!
trap 'kill "$srv" 2>/dev/null' EXIT
for _ in $(seq 1 50); do
  "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/', timeout=1)" 2>/dev/null && break
  sleep 0.2
done
log "docker build $TAG from $BASE (wheelhouse on 127.0.0.1:$PORT)"
docker build --network host -f docker/study/Dockerfile --build-arg QDQ_IMAGE="$BASE" \
  --build-arg PIP_FIND_LINKS="http://127.0.0.1:$PORT/" \
  -t "$TAG" docker/study >&2
log "built $TAG in $(( $(date +%s) - t0 )) s"
echo "$TAG"
