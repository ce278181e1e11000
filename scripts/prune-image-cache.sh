#!/usr/bin/env bash
# Remove the build cache images that a newer build made stale, so repeated builds do not fill the
# disk (under the vfs storage driver every layer of every image is a full copy: ~5 GB a layer).
#   scripts/prune-image-cache.sh IMAGE_CACHE_TAG BASE_IMAGE
# removes every vllm-qdq-cache:* other than IMAGE_CACHE_TAG, every vllm-qdq/cpu-base:* other than
# BASE_IMAGE (when BASE_IMAGE is one: the CPU stand-in of scripts/build-cpu-base.sh), and every
# vllm-qdq-study:* not built on IMAGE_CACHE_TAG's image (its tag ends with that image id's first 12
# hex digits). Images a container still uses are kept (docker says why), and so
# is everything when QDQ_KEEP_OLD_IMAGES=1. Prints what it removed.
set -euo pipefail
CACHE=${1:?usage: scripts/prune-image-cache.sh IMAGE_CACHE_TAG BASE_IMAGE}
BASE=${2:?usage: scripts/prune-image-cache.sh IMAGE_CACHE_TAG BASE_IMAGE}
case ${QDQ_KEEP_OLD_IMAGES:-0} in
  1) exit 0 ;;
  0) ;;
  *) echo "prune-image-cache: QDQ_KEEP_OLD_IMAGES=$QDQ_KEEP_OLD_IMAGES; accepted: 0 (prune, default) or 1 (keep)" >&2
     exit 2 ;;
esac
id=$(docker image inspect -f '{{.Id}}' "$CACHE")
id=${id#sha256:}
stale=()
while read -r ref; do
  case $ref in
    vllm-qdq-cache:*) [ "$ref" != "$CACHE" ] && stale+=("$ref") ;;
    vllm-qdq/cpu-base:*) [[ $BASE == vllm-qdq/cpu-base:* && $ref != "$BASE" ]] && stale+=("$ref") ;;
    vllm-qdq-study:*) [[ $ref != *-"${id:0:12}" ]] && stale+=("$ref") ;;
  esac
done < <(docker image ls --format '{{.Repository}}:{{.Tag}}')
for ref in "${stale[@]}"; do
  if docker image rm "$ref" >/dev/null 2>&1; then echo "prune-image-cache: removed stale $ref" >&2
  else echo "prune-image-cache: kept $ref (in use)" >&2; fi
done
docker image prune -f >/dev/null
