#!/usr/bin/env bash
# Apply the patch series in patches/ to the installed vLLM / vllm-omni sources. Used by the Dockerfile
# and by scripts/setup-env.sh (the CPU test environment), so both carry exactly the same changes.
#
#   scripts/apply-patches.sh [--root DIR] [--series FILE] [--python PY] [--list]
#
# --root    directory the patch paths are relative to (-p1: "a/vllm/..." -> DIR/vllm/...).
#           Default: the site-packages directory holding the `vllm` package of $PY (python3), which
#           must also hold `vllm_omni` when any patch touches it.
# --series  the series file (default: patches/series next to this script). One patch file name per
#           line, relative to the series file's directory; '#' comments and blank lines ignored.
# --list    print "name sha256" for each patch in order and exit (what scripts/build.sh puts in labels).
#
# For each patch, in order:
#   1. forward dry run with zero fuzz succeeds           -> apply it for real (again with -F0);
#   2. else the reverse dry run with zero fuzz succeeds  -> it is already applied: say so and skip;
#   3. else                                              -> print patch's output and exit 1.
# Any reject, any fuzz (-F0), or a patch that only partly applies fails the run; nothing is ignored.
# Hunks found at shifted line numbers (offset, same context) are applied and logged.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SERIES="$here/../patches/series"
ROOT=""
PY=${PYTHON:-python3}
LIST=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$2; shift 2 ;;
    --series) SERIES=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --list) LIST=1; shift ;;
    *) echo "apply-patches: unknown argument '$1' (accepted: --root DIR, --series FILE, --python PY, --list)" >&2; exit 2 ;;
  esac
done
log() { echo "apply-patches: $*" >&2; }
[ -f "$SERIES" ] || { log "series file '$SERIES' not found"; exit 1; }
pdir=$(cd "$(dirname "$SERIES")" && pwd)
mapfile -t names < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^[[:space:]]*$/d' "$SERIES")

for n in "${names[@]}"; do
  [ -f "$pdir/$n" ] || { log "patch '$n' listed in $SERIES does not exist"; exit 1; }
done
if [ "$LIST" = 1 ]; then
  for n in "${names[@]}"; do echo "$n $(sha256sum "$pdir/$n" | cut -d' ' -f1)"; done
  exit 0
fi
if [ "${#names[@]}" -eq 0 ]; then
  log "series is empty; nothing to apply"
  exit 0
fi
command -v patch >/dev/null || { log "the 'patch' program is missing (Debian package: patch)"; exit 1; }

if [ -z "$ROOT" ]; then
  ROOT=$("$PY" - <<'PY'
import importlib.util, os, sys
roots = set()
for mod in ("vllm", "vllm_omni"):
    spec = importlib.util.find_spec(mod)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"apply-patches: package {mod} is not installed for {sys.executable}")
    roots.add(os.path.dirname(list(spec.submodule_search_locations)[0]))
if len(roots) != 1:
    sys.exit(f"apply-patches: vllm and vllm_omni live in different directories {sorted(roots)}; pass --root")
print(roots.pop())
PY
)
fi
[ -d "$ROOT" ] || { log "root '$ROOT' is not a directory"; exit 1; }

applied=0 skipped=0
for n in "${names[@]}"; do
  p="$pdir/$n"
  if out=$(patch --dry-run --batch --forward -p1 -F0 -d "$ROOT" -i "$p" 2>&1); then
    if grep -qi 'fuzz' <<<"$out"; then
      log "$n applies only with fuzz against $ROOT (re-make it against the pinned version):"
      echo "$out" >&2
      exit 1
    fi
    if grep -qi 'offset' <<<"$out"; then log "note: $n applies at shifted lines: $(grep -i offset <<<"$out" | tr '\n' ' ')"; fi
    patch --batch --forward -p1 -F0 --no-backup-if-mismatch -d "$ROOT" -i "$p" >/dev/null
    log "applied $n"
    applied=$((applied + 1))
  elif patch --dry-run --batch --reverse -p1 -F0 -d "$ROOT" -i "$p" >/dev/null 2>&1; then
    log "already applied, skipped: $n"
    skipped=$((skipped + 1))
  else
    log "$n does not apply to $ROOT (neither forward nor already applied):"
    echo "$out" >&2
    exit 1
  fi
done
log "done: $applied applied, $skipped already present, root $ROOT"
