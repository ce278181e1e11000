#!/usr/bin/env bash
# Build the vllm-qdq image (Dockerfile) and print its tag, size and labels.
#
#   scripts/build.sh [--online | --offline] [--base IMAGE] [--tag TAG]
#
# --online   (default) pip may reach the package index (only for the overlay's build backend).
# --offline  the overlay is built into a wheel on this host first (docker/wheelhouse/), beside the
#            wheels of the smoke suite's pytest + pytest-xdist and their dependencies (downloaded here,
#            docker/smoke-requirements.txt pinned by scripts/constraints-cpu.txt), and the image installs
#            them with `pip install --no-index --find-links`: the build reaches no index.
# --base     BASE_IMAGE (default vllm/vllm-omni:v0.30.0; pin it as NAME@sha256:DIGEST for a
#            reproducible build; CI passes the CPU stand-in from scripts/build-cpu-base.sh).
# --tag      image tag (default vllm-qdq:<overlay version>).
# The label build args are computed here: QDQ_PATCH_SERIES ("name=sha256;..." of patches/series, or
# "none") and QDQ_OVERLAY_VERSION (overlay/pyproject.toml); the Dockerfile re-checks the series.
# Cache: the image is also tagged vllm-qdq-cache:<key>, key = hash of the base image id, the mode and
# every file of the build context; a build whose key exists is skipped (SKIP_CACHE=1 forces a build).
# Cache images made stale by this one are removed (scripts/prune-image-cache.sh; QDQ_KEEP_OLD_IMAGES=1
# keeps them).
# The last stdout line is the tag.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "build: $*" >&2; }
MODE=online
BASE=vllm/vllm-omni:v0.30.0
TAG=""
PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --online) MODE=online; shift ;;
    --offline) MODE=offline; shift ;;
    --base) BASE=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    *) echo "build: unknown argument '$1' (accepted: --online, --offline, --base IMAGE, --tag TAG)" >&2; exit 2 ;;
  esac
done
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' overlay/pyproject.toml | head -n1)
[ -n "$VERSION" ] || { log "no version in overlay/pyproject.toml"; exit 1; }
TAG=${TAG:-vllm-qdq:$VERSION}
SERIES=$(bash scripts/apply-patches.sh --list | tr ' ' '=' | paste -sd ';' -)
SERIES=${SERIES:-none}

bash scripts/docker-engine.sh
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  log "pulling $BASE"
  docker pull "$BASE" >&2
fi

rm -f docker/wheelhouse/*.whl
if [ "$MODE" = offline ]; then
  tmp=$(mktemp -d)
  cp -r overlay "$tmp/overlay"
  rm -rf "$tmp"/overlay/build "$tmp"/overlay/*.egg-info
  "$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation --no-index \
    -w docker/wheelhouse "$tmp/overlay" 2> >(grep -v "is ignored: it is neither a file" >&2)
  rm -rf "$tmp"
  log "overlay wheel: $(basename docker/wheelhouse/vllm_qdq-*.whl)"
  "$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: -d docker/wheelhouse \
    -c scripts/constraints-cpu.txt -r docker/smoke-requirements.txt 2> >(grep -v "is ignored: it is neither a file" >&2)
  log "smoke suite wheels: $(cd docker/wheelhouse && ls -- *.whl | grep -v '^vllm_qdq-' | paste -sd ' ' -)"
fi

# Content key over exactly what .dockerignore lets into the context (wheels hashed by content too),
# the smoke suite's files (docker/smoke-files.txt) included.
mapfile -t smoke_files < <(grep -Ev '^[[:space:]]*(#|$)' docker/smoke-files.txt)
ctx_files=$( { find patches overlay docker/entrypoint.sh docker/install-overlay.sh docker/check-image.py \
  docker/smoke-files.txt docker/smoke-requirements.txt "${smoke_files[@]%/}" \
  docker/wheelhouse scripts/apply-patches.sh Dockerfile .dockerignore -type f \
  ! -path '*/__pycache__/*' ! -path '*.egg-info/*' ! -path '*/build/*'; } | LC_ALL=C sort -u)
base_id=$(docker image inspect -f '{{.Id}}' "$BASE")
if [ "$MODE" = offline ]; then
  # the overlay wheel embeds build timestamps; its source is already hashed, so leave its bytes out
  # (the downloaded smoke-suite wheels are hashed like any file)
  ctx_files=$(grep -v '^docker/wheelhouse/vllm_qdq-.*\.whl$' <<<"$ctx_files")
fi
key=$( { echo "$base_id $MODE $SERIES $VERSION"; while read -r f; do echo "$f $(sha256sum "$f" | cut -d' ' -f1)"; done <<<"$ctx_files"; } \
  | sha256sum | cut -c1-16)
CACHE=vllm-qdq-cache:$key

t0=$(date +%s)
if [ -z "${SKIP_CACHE:-}" ] && docker image inspect "$CACHE" >/dev/null 2>&1; then
  log "cached: $CACHE (same base, mode and context)"
else
  log "docker build ($MODE) on $BASE"
  docker build --network host \
    --build-arg BASE_IMAGE="$BASE" --build-arg BUILD_MODE="$MODE" \
    --build-arg QDQ_PATCH_SERIES="$SERIES" --build-arg QDQ_OVERLAY_VERSION="$VERSION" \
    -t "$CACHE" . >&2
  docker image prune -f >/dev/null
  log "built in $(( $(date +%s) - t0 )) s"
fi
docker tag "$CACHE" "$TAG"
bash scripts/prune-image-cache.sh "$CACHE" "$BASE"
rm -f docker/wheelhouse/*.whl
size=$(docker image inspect -f '{{.Size}}' "$TAG")
log "image $TAG ($CACHE): $(awk -v s="$size" 'BEGIN{printf "%.2f GB", s/1e9}')"
docker image inspect -f '{{range $k, $v := .Config.Labels}}{{printf "build:   label %s=%s\n" $k $v}}{{end}}' "$TAG" >&2
echo "$TAG"
