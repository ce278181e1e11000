#!/usr/bin/env bash
# The one RUN step of the Dockerfile (kept in a file so it can be read and linted):
# snapshot the base -> apply patches/ -> check the series against the label -> install the overlay
# (--no-deps; offline: only from docker/wheelhouse, no index) -> verify -> install the entrypoint ->
# the GPU smoke suite under /opt/vllm-qdq/smoke (docker/smoke-files.txt) with pytest + pytest-xdist
# (docker/smoke-requirements.txt; offline: from docker/wheelhouse).
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
# pytest + pytest-xdist for the smoke suite (before verify: it checks versions and pip check after them too)
if [ "$BUILD_MODE" = offline ]; then
  "${pip[@]}" install --no-index --find-links "$src/docker/wheelhouse" -r "$src/docker/smoke-requirements.txt"
else
  "${pip[@]}" install -r "$src/docker/smoke-requirements.txt"
fi

"$PY" "$src/docker/check-image.py" verify "$dst/base-snapshot.json" > "$dst/build-info.json"
cat "$dst/build-info.json"
cp -r "$src/patches" "$dst/patches"
install -m 0755 "$src/scripts/apply-patches.sh" "$dst/apply-patches.sh"
install -m 0644 "$src/docker/check-image.py" "$dst/check-image.py"  # pip-check for images built on this one
install -m 0755 "$src/docker/entrypoint.sh" /usr/local/bin/vllm-qdq-entrypoint

# The GPU smoke suite: a tree where `cd /opt/vllm-qdq/smoke && bash scripts/gpu-smoke.sh` works.
smoke=$dst/smoke
rm -rf "$smoke"
while read -r f; do
  case $f in ''|'#'*) continue ;; esac
  if [ ! -e "$src/$f" ]; then
    echo "install-overlay: $f (docker/smoke-files.txt) is not in the build context; let it in in .dockerignore" >&2
    exit 1
  fi
  mkdir -p "$smoke/$(dirname "${f%/}")"
  cp -r "$src/${f%/}" "$smoke/${f%/}"
done < "$src/docker/smoke-files.txt"
find "$smoke" -name __pycache__ -prune -exec rm -rf {} +
"$PY" -c 'import pytest, xdist; print("install-overlay: smoke suite: pytest", pytest.__version__, "xdist", xdist.__version__)'
log "smoke suite in $smoke: $(find "$smoke" -type f | wc -l) files"
rm -rf "$src"
log "done: vllm-qdq $QDQ_OVERLAY_VERSION, patches: $series"
