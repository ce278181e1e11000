#!/usr/bin/env bash
# Run selections of one pytest file side by side, one pytest process each (for GPU tests whose
# engines run one after another inside a test: two selections take the time of the longer one).
#
#   bash scripts/pytest-side-by-side.sh PYTHON FILE "SEL1 SEL2 ..." [PYTEST_ARGS...]
#
# Each selection is a `-k` expression. Prints each process's output in turn (selection order, a
# header line each), then one line: "N passed[, M failed] in S s side by side (SEL: its last
# line; ...)", which the smoke suite's step line quotes. Exit status: 0 when every process passed,
# else the first non-zero one's; 2 for bad arguments.
set -uo pipefail
PY=${1:-}; FILE=${2:-}; SELS=${3:-}
if [ -z "$PY" ] || [ -z "$FILE" ] || [ -z "$SELS" ]; then
  echo "usage: pytest-side-by-side.sh PYTHON FILE \"SEL1 SEL2 ...\" [PYTEST_ARGS...]" >&2
  exit 2
fi
[ -f "$FILE" ] || { echo "pytest-side-by-side: FILE='$FILE' does not exist" >&2; exit 2; }
shift 3
read -r -a sel <<<"$SELS"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
t0=$SECONDS
pids=()
for i in "${!sel[@]}"; do
  "$PY" -m pytest "$@" "$FILE" -k "${sel[$i]}" > "$tmp/$i.log" 2>&1 &
  pids+=($!)
done
rc=0; passed=0; failed=0; parts=()
for i in "${!sel[@]}"; do
  wait "${pids[$i]}"; r=$?
  [ $r -eq 0 ] || [ $rc -ne 0 ] || rc=$r
  echo "--- ${sel[$i]}: $PY -m pytest $* $FILE -k ${sel[$i]} (rc=$r)"
  cat "$tmp/$i.log"
  last=$(grep -E '(passed|failed|error|no tests ran)' "$tmp/$i.log" | tail -n 1 | tr -d '=' | sed 's/^ *//;s/ *$//')
  [ -n "$last" ] || last="rc=$r, no pytest summary line"
  p=$(grep -oE '[0-9]+ passed' <<<"$last" | awk '{s+=$1} END{print s+0}')
  f=$(grep -oE '[0-9]+ (failed|errors?)' <<<"$last" | awk '{s+=$1} END{print s+0}')
  [ $r -eq 0 ] || [ "$f" -gt 0 ] || f=1  # a process that failed without a count (a crash) counts once
  passed=$((passed + p)); failed=$((failed + f))
  parts+=("${sel[$i]}: $last")
done
joined=$(printf '%s; ' "${parts[@]}")
echo "$([ $failed -gt 0 ] && echo "$failed failed, ")$passed passed in $((SECONDS - t0)) s side by side (${joined%; })"
exit $rc
