#!/usr/bin/env bash
# Run selections of one pytest file side by side, one pytest process each (for GPU tests whose
# engines run one after another inside a test: two selections take the time of the longer one).
#
#   bash scripts/pytest-side-by-side.sh PYTHON FILE "SEL1 SEL2 ..." [PYTEST_ARGS...]
#
# Each selection is a `-k` expression. Prints each process's output in turn (selection order, a
# header line each), then one line: "[M failed, ]N passed in S s side by side (SEL: its pytest
# summary line; ...)", which the smoke suite's step line quotes. Each process writes its output to
# SBS_LOG_DIR/<n>-<SEL>.log as it runs (default: a temporary folder, removed at the end); stopped
# by a signal (a step's timeout), the script first prints what each process wrote so far.
# Exit status: 0 when every process passed, else the first non-zero one's (143 on SIGTERM);
# 2 for bad arguments.
set -uo pipefail
PY=${1:-}; FILE=${2:-}; SELS=${3:-}
if [ -z "$PY" ] || [ -z "$FILE" ]; then
  echo "usage: pytest-side-by-side.sh PYTHON FILE \"SEL1 SEL2 ...\" [PYTEST_ARGS...]" >&2
  exit 2
fi
[ -f "$FILE" ] || { echo "pytest-side-by-side: FILE='$FILE' does not exist" >&2; exit 2; }
read -r -a sel <<<"$SELS"
[ ${#sel[@]} -gt 0 ] || { echo "pytest-side-by-side: no selection in '$SELS'; accepted: -k expressions without spaces, space-separated" >&2; exit 2; }
shift 3
if [ -n "${SBS_LOG_DIR:-}" ]; then
  logs=$SBS_LOG_DIR; mkdir -p "$logs" || exit 2
else
  logs=$(mktemp -d); trap 'rm -rf "$logs"' EXIT
fi
# pytest's closing line: "[===] 1 passed, 1 deselected in 0.72s [(0:00:00)] [===]", or no tests ran
SUMMARY='^(=+ )?(([0-9]+ [a-z]+(, )?)+|no tests ran) in [0-9.]+s( \([0-9:]+\))?( =+)?$'
t0=$SECONDS
pids=(); shown=()
log_of() { echo "$logs/$1-${sel[$1]//[^A-Za-z0-9_.-]/_}.log"; }
show() {  # show N RC: a process's output, once
  [ -z "${shown[$1]:-}" ] || return 0
  shown[$1]=1
  echo "--- ${sel[$1]}: $PY -m pytest $ARGS $FILE -k ${sel[$1]} (rc=$2)"
  cat "$(log_of "$1")" 2>/dev/null
}
ARGS="$*"
on_signal() {
  local i
  for i in "${!sel[@]}"; do kill "${pids[$i]}" 2>/dev/null; show "$i" "stopped"; done
  echo "pytest-side-by-side: stopped by a signal after $((SECONDS - t0)) s (logs above)"
  exit 143
}
trap on_signal TERM INT
for i in "${!sel[@]}"; do
  "$PY" -m pytest "$@" "$FILE" -k "${sel[$i]}" > "$(log_of "$i")" 2>&1 &
  pids+=($!)
done
rc=0; passed=0; failed=0; parts=()
for i in "${!sel[@]}"; do
  wait "${pids[$i]}"; r=$?
  [ $r -eq 0 ] || [ $rc -ne 0 ] || rc=$r
  show "$i" "$r"
  last=$(grep -E "$SUMMARY" "$(log_of "$i")" | tail -n 1 | tr -d '=' | sed 's/^ *//;s/ *$//')
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
