#!/usr/bin/env bash
# The GPU smoke suite in one lease of a lent GPU machine (the `device` tool: calls of at most 10
# minutes, files back from $OUT only, no network), one mode a call. Each call runs on a machine
# where vLLM was staged first (../shared/gpu/stage-vllm.sh, scripts/recut-gpu-stage.py; `bash
# .gpu-stage-cut/pN/receive.sh` a call, carrying that part), from the repository root:
#
#   bash scripts/gpu-lease.sh prep            # carry .gpu-stage-extras/p1: extras (lm-eval, vllm-omni),
#                                             # the overlay, gpu-smoke.sh bench-qdq alone (its
#                                             # eager table is host time), then FlashInfer's sampling
#                                             # build and the throughput benches' models (niced)
#                                             # beside bench-sage3 (the suite's short
#                                             # form unless SMOKE_BENCH_FULL=1; LEASE_PREP: which of the
#                                             # two, default both); with LEASE_KERNELS=prep
#                                             # then the kernels step alone, in the time left (up to
#                                             # 585 s into the call; a cold Triton cache needs ~280 s)
#   bash scripts/gpu-lease.sh checks          # the engine check steps at once, and the kernels step
#                                             # among them unless LEASE_KERNELS=prep (SMOKE_JOBS=10), in
#                                             # a process session of their own (setsid: they outlive
#                                             # the call, capped at LEASE_CHECKS_LIMIT, default 1500 s);
#                                             # the call waits LEASE_CHECKS_TIMEOUT (default 575 s) for
#                                             # them, printing each result as it lands; only those not
#                                             # yet PASS / SKIP on this machine
#                                             # (LEASE_RERUN=1: every one again, e.g. after a new overlay)
#   bash scripts/gpu-lease.sh wait S          # wait up to S s more for that checks run; pack its logs
#                                             # (prep, bench and tune refuse to start while it runs)
#   bash scripts/gpu-lease.sh bench MODEL B [summary]   # bench-plugin-MODEL alone, --budget-s B (MODEL both:
#                                             # the step bench-plugin, both models' engines at once,
#                                             # 3-s turns unless SMOKE_BENCH_MIN_S); then
#                                             # the summary table (also written to $OUT/summary.txt)
#   bash scripts/gpu-lease.sh tune S          # when the suite is done and device time is left: a tile
#                                             # sweep (tune_qdq_triton.py, at most S seconds) of the kernel
#                                             # classes LEASE_TUNE_CLASSES (default: those whose instructions
#                                             # changed most since the sm_90 table's sweep); figures only
#   bash scripts/gpu-lease.sh restore         # a fresh machine mid-lease (the last one taken back):
#                                             # extras if carried, the overlay; FlashInfer's build
#                                             # unless LEASE_JIT=0 (then the engines run with
#                                             # VLLM_USE_FLASHINFER_SAMPLER=0: say so with the figures)
#
# The suite's output lives in /root/smoke (LEASE_SMOKE) between calls; each call packs its logs
# into one archive, $OUT/smoke-<mode>.tgz (a call brings back a limited number of files), without
# the models and compile caches. Budgets measured (results/lease-2026-12-06, H200; -06b and -06c, H100):
# vLLM staging 80-170 s from a cold machine (its start included); prep 340-360 s (extras and the
# overlay 20-50 s, bench-qdq alone 112-119 s, bench-sage3 166-178 s beside FlashInfer's build,
# ~106 s); the nine engine check steps with kernels among them past 575 s on both (06b: kernels at
# 99%, study near its end: hence the background run and `wait`); kernels alone 197 s warm (06),
# cold past 230 s (06b); bench gptoss 320: 4 engines up at ~113 s, profiles to ~162 s, rounds of
# ~46 s (4-s turns); bench both (06b, H100): 8 engines up at ~155 s, profiles to ~260 s, rounds of
# both models ~66 s (3-s turns): B >= 460 for 3 rounds. A lease of the whole suite (06c, H100,
# 1,764 s held with a 95-s probe after it): staging 80 s, prep 358 s, checks 578 s + wait 96 s
# (every check step done at +674 s), bench both 520 summary 517 s. 06d (H100, partial): prep with
# LEASE_PREP=bench-qdq LEASE_KERNELS=prep 368 s (bench-qdq 79 s, kernels alone 129 s), bench both
# 520 summary 485 s (profiles done at +175 s, 4 rounds). 06e (H100, the OMP and capture-size fixes
# in): start ~80 s, staging ~40 s, prep with LEASE_PREP="" 123 s, checks 356 s (all ten steps done
# inside the call), bench both 480 summary 462 s: the whole suite ~1,300 s.
# LEASE_SITE (default /opt/gpu-site): where the staging installed vLLM.
set -u
cd "$(dirname "$0")/.."
mode=${1:-}
case $mode in
  prep|checks|wait|bench|tune|restore) ;;
  *) echo "gpu-lease: mode '${mode}'; accepted: prep, checks, wait SECONDS, bench MODEL BUDGET_S [summary], tune SECONDS, restore" >&2; exit 2 ;;
esac
seconds() {  # seconds LABEL VALUE MAX [WHY]: VALUE a whole number of seconds > 0, at most MAX (0: no
  # cap), else exit 2 naming LABEL (the setting and its value, as given) and what is accepted
  [[ $2 =~ ^[1-9][0-9]*$ ]] && { [ "$3" -eq 0 ] || [ "$2" -le "$3" ]; } && return 0
  local cap=", at most $3"; [ "$3" -eq 0 ] && cap=" > 0"
  echo "gpu-lease: $1; accepted: a whole number of seconds$cap${4:+ ($4)}" >&2
  exit 2
}
[ "$mode" = wait ] && seconds "wait SECONDS '${2:-}'" "${2:-}" 590
[ "$mode" = tune ] && seconds "tune SECONDS '${2:-}'" "${2:-}" 560
if [ "$mode" = bench ]; then
  [[ ${2:-} =~ ^(gptoss|dense|both)$ ]] || { echo "gpu-lease: bench MODEL '${2:-}'; accepted: gptoss, dense, both (the two models' engines up at once: the smoke step bench-plugin)" >&2; exit 2; }
  seconds "bench BUDGET_S '${3:-}'" "${3:-}" 520 "the call ends at 600 s: the bench's start, its engines' shutdown and the packing after it"
  [ -z "${4:-}" ] || [ "$4" = summary ] || { echo "gpu-lease: bench's 4th argument '$4'; accepted: summary, or none" >&2; exit 2; }
fi
kernels_in=${LEASE_KERNELS:-checks}
[[ $kernels_in =~ ^(prep|checks)$ ]] || { echo "gpu-lease: LEASE_KERNELS='$kernels_in'; accepted: checks (the kernels step among the check steps, the default) or prep (alone after the benches)" >&2; exit 2; }
prep_steps=${LEASE_PREP-bench-qdq bench-sage3}  # the benches prep runs (05e: bench-qdq alone, sage3 unchanged)
for b in $prep_steps; do
  [[ $b =~ ^(bench-qdq|bench-sage3)$ ]] || { echo "gpu-lease: LEASE_PREP='${LEASE_PREP}' ('$b'); accepted: bench-qdq, bench-sage3 (space-separated, either or both; empty: neither)" >&2; exit 2; }
done
[[ ${LEASE_RERUN:-0} =~ ^[01]$ ]] || { echo "gpu-lease: LEASE_RERUN='${LEASE_RERUN}'; accepted: 0 (checks runs only the steps not yet PASS / SKIP on this machine, the default) or 1 (every one again)" >&2; exit 2; }
seconds "LEASE_CHECKS_LIMIT='${LEASE_CHECKS_LIMIT:-}'" "${LEASE_CHECKS_LIMIT:-1500}" 0 "the background checks run's cap, default 1500"
seconds "LEASE_CHECKS_TIMEOUT='${LEASE_CHECKS_TIMEOUT:-}'" "${LEASE_CHECKS_TIMEOUT:-575}" 590 "how long the checks call waits, default 575"
[ -n "${OUT:-}" ] || { echo "gpu-lease: \$OUT is not set (the device tool's folder of files to bring back)" >&2; exit 2; }
SITE=${LEASE_SITE:-/opt/gpu-site}  # where the staging installed vLLM (receive.sh's last part)
[ -f "$SITE/env.sh" ] || { echo "gpu-lease: $SITE/env.sh is missing: stage vLLM on this machine first (bash .gpu-stage-cut/pN/receive.sh, every part)" >&2; exit 3; }
. "$SITE/env.sh"
export SMOKE_OUT=${LEASE_SMOKE:-/root/smoke}
mkdir -p "$SMOKE_OUT"
T0=$SECONDS
el() { echo "[+$((SECONDS - T0)) s] $*"; }
pack() {  # the logs, results, JSON and study report; not the models or the compile caches
  tar -C "$SMOKE_OUT" -czf "$OUT/smoke-$1.tgz" --exclude=./models --exclude=./vllm-cache --exclude=./study/models .
  el "logs packed into smoke-$1.tgz"
}
BG=$SMOKE_OUT/checks-bg  # the checks run in the background: .pid, .log (its output), .rc once it ended
bg_running() { [ -f "$BG.pid" ] && [ ! -f "$BG.rc" ] && kill -0 "$(cat "$BG.pid")" 2>/dev/null; }
wait_bg() {  # wait_bg S: until the checks run ends or S seconds pass, printing each step's result line as it lands
  local t_end=$((SECONDS + $1)) shown=0 n
  while :; do
    n=$(grep -c '^gpu-smoke: ' "$BG.log" 2>/dev/null)
    if [ "${n:-0}" -gt "$shown" ]; then grep '^gpu-smoke: ' "$BG.log" | tail -n +$((shown + 1)); shown=$n; fi
    bg_running || break
    [ "$SECONDS" -lt "$t_end" ] || break
    sleep 5
  done
  if [ -f "$BG.rc" ]; then
    echo "checks rc=$(cat "$BG.rc")"
  elif bg_running; then
    echo "gpu-lease: checks still running after $1 s (pid $(cat "$BG.pid")): bash scripts/gpu-lease.sh wait S goes on waiting"
  else
    echo "gpu-lease: the checks run (pid $(cat "$BG.pid")) ended without an exit status (killed?); its log: $BG.log"
  fi
}
install_overlay() {
  local p
  for p in .gpu-stage-extras/p*/; do
    [ -f "$p/install.sh" ] || continue
    bash "$p/install.sh" "$SITE/deps" >> "$OUT/extras.log" 2>&1; echo "extras $p rc=$?"
  done
  python3 -m pip install -q --no-deps --no-build-isolation --upgrade --target "$SITE/deps" ./overlay \
    > "$OUT/pip.log" 2>&1
  echo "overlay rc=$?"
}
[ ! -f "$SMOKE_OUT/sampler.env" ] || . "$SMOKE_OUT/sampler.env"  # restore's choice, for later calls
if [[ $mode =~ ^(prep|bench|tune)$ ]] && bg_running; then  # these time things: nothing else on the machine
  echo "gpu-lease: the checks run (pid $(cat "$BG.pid")) is still going on this machine: $mode would time beside it; bash scripts/gpu-lease.sh wait SECONDS first" >&2
  exit 3
fi
case $mode in
  prep)
    nvidia-smi -L; git log -1 --format='commit %H' 2>/dev/null || true
    install_overlay
    # bench-qdq alone first: its eager table is host time per call, which a compile on the same
    # CPUs moves (05d and 05e ran it beside FlashInfer's build: eager figures of one format 9-19 us
    # from one row count to the next); then the build beside bench-sage3 (device-timed)
    rest=""
    for b in $prep_steps; do [ "$b" = bench-qdq ] || rest="$rest $b"; done
    if [[ " $prep_steps " == *" bench-qdq "* ]]; then
      el "bench-qdq alone"
      timeout 240 bash scripts/gpu-smoke.sh bench-qdq; echo "bench-qdq rc=$?"  # 05e: 120 s
    fi
    el "FlashInfer build (niced) beside:${rest:- no bench}"
    timeout 300 nice -n 10 python3 scripts/gpu_jit_warm.py --marker "$SMOKE_OUT/jit-warm.ready" > "$SMOKE_OUT/jit-warm-prep.log" 2>&1 & jw=$!
    # the throughput benches' models (random weights, ~20 s each on one CPU; 05e's bench call spent
    # ~40 s before its engines started), built now so that the bench calls start their engines at once
    timeout 300 nice -n 10 python3 scripts/bench_plugin_throughput.py --build-only --models gptoss,dense \
      --out "${SMOKE_MODELS:-$SMOKE_OUT/models}" > "$SMOKE_OUT/bench-models.log" 2>&1 & bm=$!
    if [ -n "$rest" ]; then
      # shellcheck disable=SC2086  # a list of step names, split on purpose
      timeout 300 bash scripts/gpu-smoke.sh $rest; echo "${rest# } rc=$?"  # 05d: 146 s
    fi
    wait $jw; echo "jit-warm rc=$?"; tail -n 2 "$SMOKE_OUT/jit-warm-prep.log"
    wait $bm; echo "bench models rc=$?"; tail -n 2 "$SMOKE_OUT/bench-models.log"
    left=$((585 - (SECONDS - T0)))  # the kernels step alone on the GPU: 106 s warm, ~280 s cold (05c)
    if [ "$kernels_in" != prep ]; then
      echo "gpu-lease: kernels run in the checks call (LEASE_KERNELS=checks)"
    elif [ "$left" -ge 60 ]; then
      # alone on the host now: more xdist workers for a cold Triton cache's compiles (05e: 323 s at 8)
      SMOKE_XDIST=${SMOKE_XDIST:-14} timeout "$left" bash scripts/gpu-smoke.sh kernels; echo "kernels rc=$?"
    else
      echo "gpu-lease: kernels not run: ${left} s left in this call (run: bash scripts/gpu-smoke.sh kernels)"
    fi
    pack prep ;;
  tune)
    # the tile table of the kernel classes whose instructions changed most since its sweep (issue 16;
    # tile_configs.json's sm_90 table is from results/h200-2026-12-03): figures only, nothing written
    classes=${LEASE_TUNE_CLASSES:-scaled_fp64,row_fp64,row_fp32,scaled_fp32}
    el "tile sweep (at most $2 s): scripts/tune_qdq_triton.py --classes $classes"
    timeout "$2" python3 scripts/tune_qdq_triton.py --classes "$classes" --tiles 1024,2048,4096,8192 --warps 2,4,8 \
      --json "$SMOKE_OUT/tune.json" > "$SMOKE_OUT/tune.log" 2>&1
    rc=$?
    echo "tune rc=$rc ($(grep -c 'best:' "$SMOKE_OUT/tune.log") classes swept; log tune.log)"
    [ $rc -eq 0 ] || tail -n 2 "$SMOKE_OUT/tune.log"
    pack tune ;;
  restore)
    nvidia-smi -L
    install_overlay
    if [ "${LEASE_JIT:-1}" = 0 ]; then
      echo "export VLLM_USE_FLASHINFER_SAMPLER=0" > "$SMOKE_OUT/sampler.env"
      echo "gpu-lease: FlashInfer's sampler off for this machine's engines (VLLM_USE_FLASHINFER_SAMPLER=0)"
    else
      rm -f "$SMOKE_OUT/sampler.env"
      timeout 300 python3 scripts/gpu_jit_warm.py --marker "$SMOKE_OUT/jit-warm.ready" > "$SMOKE_OUT/jit-warm-restore.log" 2>&1; echo "jit-warm rc=$?"
      tail -n 1 "$SMOKE_OUT/jit-warm-restore.log"
    fi
    pack restore ;;
  checks)
    if bg_running; then
      echo "gpu-lease: the checks run started earlier (pid $(cat "$BG.pid")) is still going: waiting for it"
    else
      extra=(); [ "$kernels_in" = prep ] || extra=(kernels)  # 04c: 446 s with kernels among the checks
      todo=(); done_=()
      for s in study ${extra[@]+"${extra[@]}"} kv-cache plugin-gptoss plugin-dense plugin-exact method-llama method-moe serve tp2; do
        r=$(cut -d' ' -f1 "$SMOKE_OUT/$s.result" 2>/dev/null)
        if [ "${LEASE_RERUN:-0}" != 1 ] && { [ "$r" = PASS ] || [ "$r" = SKIP ]; }; then done_+=("$s"); else todo+=("$s"); fi
      done
      # a second checks call on the same machine runs only what the first did not pass (05d: an
      # H100 took the ten steps past one call)
      [ ${#done_[@]} -eq 0 ] || echo "gpu-lease: checks already passed or skipped on this machine: ${done_[*]}"
      if [ ${#todo[@]} -eq 0 ]; then
        echo "gpu-lease: no check step left to run"
        pack checks; el done; exit 0
      fi
      echo "gpu-lease: checks to run: ${todo[*]}"
      # in a session of their own (setsid): the device tool ends a call's processes when it returns
      # but not those, so the steps run on past this call's limit (06b: an H100 cut kernels at 99%
      # and study near its end at 575 s) and a `wait` call collects them; LEASE_CHECKS_LIMIT caps them
      rm -f "$BG.rc"
      session=(setsid)
      command -v setsid >/dev/null || { session=(); echo "gpu-lease: no setsid on this host: the checks run ends with this call"; }
      SMOKE_JOBS=10 ${session[@]+"${session[@]}"} bash -c 'timeout "$1" bash scripts/gpu-smoke.sh "${@:3}"; echo $? > "$2.rc"' \
        checks "${LEASE_CHECKS_LIMIT:-1500}" "$BG" "${todo[@]}" > "$BG.log" 2>&1 < /dev/null &
      echo $! > "$BG.pid"
    fi
    wait_bg "${LEASE_CHECKS_TIMEOUT:-575}"
    pack checks ;;
  wait)
    if [ ! -f "$BG.pid" ]; then
      echo "gpu-lease: no checks run was started on this machine (bash scripts/gpu-lease.sh checks)"; exit 3
    fi
    wait_bg "$2"
    pack wait ;;
  bench)
    if [ "$2" = both ]; then
      # one start-up for eight engines; 3-s turns (2 prefill-heavy, 1 decode-heavy batch a round:
      # ~26 s a model) so that 4+ rounds of both fit after ~230 s of start-up and profiles
      SMOKE_BENCH_MIN_S=${SMOKE_BENCH_MIN_S:-3} SMOKE_BENCH_BUDGET=$3 timeout $(($3 + 60)) bash scripts/gpu-smoke.sh bench-plugin
    else
      SMOKE_BENCH_BUDGET=$3 timeout $(($3 + 60)) bash scripts/gpu-smoke.sh "bench-plugin-$2"
    fi
    echo "bench rc=$?"
    if [ "${4:-}" = summary ]; then
      bash scripts/gpu-smoke.sh summary | tee "$OUT/summary.txt"; echo "summary rc=${PIPESTATUS[0]}"
    fi
    pack "bench-$2" ;;
esac
el done
