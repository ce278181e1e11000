#!/usr/bin/env bash
# The one RUN step of the Dockerfile (kept in a file so it can be read and linted):
# snapshot the base -> apply patches/ -> check the series against the label -> install the overlay
# (--no-deps; offline: only from docker/wheelhouse, no index) -> verify -> install the entrypoint.
# Inputs (env from build args): BUILD_MODE online|offline, QDQ_OVERLAY_VERSION, QDQ_PATCH_SERIES.
set -euo pipefail
src=/tmp/vllm-qdq
dst=/opt/vllm-qdq
log() { echo "install-overlay: $*"; }
case "${BUILD_MODE:-}" in
  online|offline) ;;
  *) echo "install-overlay: BUILD_MODE='${BUILD_MODE:-}' (accepted: online, offline)" >&2; exit 1 ;;
esac
[ -n "${QDQ_OVERLAY_VERSION:-}" ] || { echo "install-overlay: QDQ_OVERLAY_VERSION is empty (scripts/build.sh sets it)" >&2; exit 1; }
PY=$(command -v python3)
log "python $PY ($($PY --version 2>&1)), mode $BUILD_MODE"

mkdir -p "$dst"
"$PY" "$src/docker/check-image.py" snapshot "$dst/base-snapshot.json"

series=$(bash "$src/scripts/apply-patches.sh" --series "$src/patches/series" --list | tr ' ' '=' | paste -sd ';' -)
series=${series:-none}
if [ "$series" != "${QDQ_PATCH_SERIES:-}" ]; then
  echo "install-overlay: patch series in the context ($series) differs from the build arg QDQ_PATCH_SERIES (${QDQ_PATCH_SERIES:-unset}); build with scripts/build.sh" >&2
  exit 1
fi
bash "$src/scripts/apply-patches.sh" --python "$PY" --series "$src/patches/series"

pip=("$PY" -m pip --disable-pip-version-check --no-cache-dir)
if [ "$BUILD_MODE" = offline ]; then
  "${pip[@]}" install --no-deps --no-index --find-links "$src/docker/wheelhouse" "vllm-qdq==$QDQ_OVERLAY_VERSION"
else
  "${pip[@]}" install --no-deps "$src/overlay"
fi

"$PY" "$src/docker/check-image.py" verify "$dst/base-snapshot.json" > "$dst/build-info.json"
cat "$dst/build-info.json"
cp -r "$src/patches" "$dst/patches"
install -m 0755 "$src/scripts/apply-patches.sh" "$dst/apply-patches.sh"
install -m 0644 "$src/docker/check-image.py" "$dst/check-image.py"  # pip-check for images built on this one
install -m 0755 "$src/docker/entrypoint.sh" /usr/local/bin/vllm-qdq-entrypoint
rm -rf "$src"
log "done: vllm-qdq $QDQ_OVERLAY_VERSION, patches: $series"
