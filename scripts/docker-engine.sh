#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine (idempotent; safe to call from several processes).
#   - installs Debian's docker.io (engine + CLI) and debootstrap when dockerd / debootstrap are missing;
#   - starts dockerd in the mode this sandbox supports (no iptables, no bridge), detached, with the
#     storage driver $DOCKER_STORAGE_DRIVER, default overlay2 when an overlay mount works on the data
#     root's filesystem (layers shared: a container costs only what it writes), else vfs (every layer
#     and every container a full copy of its image: ~10 GB a container here, and minutes per build step),
#     logging to $DOCKERD_LOG, unless `docker info` already answers;
#   - waits (up to $DOCKER_WAIT_S seconds, default 120) until `docker info` answers, else exits non-zero.
# Containers and builds must use host networking (`--network host`) since there is no bridge.
# QDQ_DOCKER_ENGINE=external (e.g. a GPU CI runner with its own Docker and the NVIDIA Container Toolkit):
# use the engine that answers as it is, install and start nothing; exit non-zero if none answers.
set -euo pipefail
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd-vllm-qdq.log}
DOCKER_WAIT_S=${DOCKER_WAIT_S:-120}
LOCK=${DOCKER_ENGINE_LOCK:-/tmp/vllm-qdq-docker-engine.flock}

log() { echo "docker-engine: $*" >&2; }
answers() { docker info >/dev/null 2>&1; }

DRIVER=${DOCKER_STORAGE_DRIVER:-}
case $DRIVER in
  ""|overlay2|vfs) ;;
  *) log "DOCKER_STORAGE_DRIVER=$DRIVER; accepted: overlay2, vfs (or unset: overlay2 where it works)"; exit 2 ;;
esac

case ${QDQ_DOCKER_ENGINE:-managed} in
  managed) ;;
  external) answers && exit 0; log "QDQ_DOCKER_ENGINE=external but \`docker info\` does not answer"; exit 1 ;;
  *) log "QDQ_DOCKER_ENGINE=$QDQ_DOCKER_ENGINE; accepted: managed (default), external"; exit 2 ;;
esac

exec 9>"$LOCK"
flock 9   # one installer/starter at a time; the others wait, then find the engine up (dockerd gets 9>&-)

if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  SUDO=()
  [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
  log "installing docker.io and debootstrap from Debian packages"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
    docker.io debootstrap >/dev/null
fi

# `docker compose` (v2 plugin, pinned) for compose.yaml and its tests.
bash "$(dirname "$0")/install-compose.sh"

if answers; then
  log "engine already answers"
  exit 0
fi

# overlay2 needs a working overlay mount on the data root's filesystem; try one there.
overlay_works() {
  local root=/var/lib/docker t
  mkdir -p "$root"
  t=$(mktemp -d "$root/.overlay-probe.XXXXXX")
  mkdir -p "$t/l" "$t/u" "$t/w" "$t/m"
  local ok=1
  if mount -t overlay overlay -o "lowerdir=$t/l,upperdir=$t/u,workdir=$t/w" "$t/m" 2>/dev/null; then
    umount "$t/m" && ok=0
  fi
  rm -rf "$t"
  return $ok
}
if [ -z "$DRIVER" ]; then
  if overlay_works; then DRIVER=overlay2; else DRIVER=vfs; fi
fi
log "starting dockerd, storage driver $DRIVER (log: $DOCKERD_LOG)"
# setsid + nohup: the daemon outlives the calling shell / pytest session on purpose (it is shared).
setsid nohup dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver="$DRIVER" \
  >>"$DOCKERD_LOG" 2>&1 </dev/null 9>&- &
for _ in $(seq 1 "$DOCKER_WAIT_S"); do
  if answers; then
    log "engine up: $(docker version --format '{{.Server.Version}}')"
    exit 0
  fi
  sleep 1
done
log "dockerd did not answer within ${DOCKER_WAIT_S}s; last log lines:"
[ -f "$DOCKERD_LOG" ] && tail -n 30 "$DOCKERD_LOG" >&2
exit 1
