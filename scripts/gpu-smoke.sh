#!/usr/bin/env bash
# GPU smoke suite: on a host with a CUDA GPU and vLLM 0.30.0 (or inside the image).
#
#   bash scripts/gpu-smoke.sh                     # every step, then the summary
#   bash scripts/gpu-smoke.sh kernels plugin      # chosen steps (e.g. one per CI job or call)
#   bash scripts/gpu-smoke.sh summary             # the table from the logs already written
#
# Steps (each meant to finish inside 10 minutes on one H200: an engine start there is 40-160 s; on a
# fresh machine ~100 s of the first was FlashInfer building its sampling kernels with no log line
# (results/h200-2026-12-04: 97.9 s), which the jit-warm line below now does first; SMOKE_STACK_DUMPS
# shows where any other silent wait is; measured times are in results/ and the README):
#   kernels       pytest -m gpu: Triton QDQ bit-exactness, the rotation / stochastic-rounding / FP4
#                 recipes, sage3 kernels and per-step routing (tests/gpu/test_triton_qdq_gpu.py,
#                 test_triton_recipes_gpu.py, test_sage3_gpu.py, test_sage3_route_gpu.py; the last needs
#                 vllm_omni: offline, the wheels stage-gpu-extras.sh omni stages)
#   plugin-gptoss, plugin-dense
#                 pytest -m gpu tests/gpu/test_plugin_gpu.py (one model each): activation QDQ in Marlin MoE /
#                 Marlin dense, eager and compiled + CUDA graphs, trace from the engine process, compile cache
#   plugin-exact  pytest -m gpu tests/gpu/test_plugin_exact_gpu.py: compiled + CUDA graphs against eager once
#                 both round alike (PyTorch forms of vLLM's ops, Inductor emulating eager's bf16 casts),
#                 QDQ off (agree to 0.02 nats) and on (nearer eager-on than eager-off by 3x), both models
#   method-llama, method-moe
#                 pytest -m gpu tests/gpu/test_qdq_method_gpu.py (one model each): the qdq method on CUDA,
#                 compiled + CUDA graphs and eager, vs the CPU reference and the unquantized model;
#                 method-llama also VLLM_QDQ_GRID_SYNC=eager against off on a wider Llama with NVFP4
#                 W+A (four more engines, in-process engine cores: the same bits; ~240 s on an H100)
#   kv-cache      pytest -m gpu tests/gpu/test_kv_cache_gpu.py: KV-cache + query QDQ (plugin) on the gpt-oss-
#                 and Llama-shaped models, eager / piecewise / default graphs, cache read back (issue 19);
#                 with SMOKE_JOBS > 1 the two models side by side (scripts/pytest-side-by-side.sh: 410 s
#                 one after the other in results/h200-2026-12-04c)
#   tp2           pytest -m gpu tests/gpu/test_tp2_gpu.py: TP=1 vs TP=2 with QDQ on (gpt-oss plugin, Llama
#                 qdq method), trace lines from both workers, QDQ on vs off; SKIP (with the reason) on
#                 fewer than two GPUs (issue 20)
#   serve         scripts/gpu_serve_check.py: vllm serve round trips, QDQ on / off
#   bench-qdq     scripts/bench_qdq_triton.py: Triton QDQ vs device copy (figures; the bandwidth targets
#                 are checked by its --check, not by the smoke suite)
#   bench-sage3   scripts/bench_sage3.py --no-check: sage3 vs SDPA (figures; its targets are issue 17's)
#                 SMOKE_BENCH_FULL=0 (default): bench-qdq without its switch sweeps (--no-sweeps: the
#                 tables that set the module's switches, no target among them) and bench-sage3 at D=128
#                 only (--dims 128: its targets' head size; --no-ws-probe, the default since 07c: the
#                 warp-specialization probe is opt-in, --ws-probe), to keep the suite inside its time
#                 budget; 1: both whole but for that probe (what a kernel change is timed with)
#   bench-plugin-gptoss, bench-plugin-dense
#                 scripts/bench_plugin_throughput.py --kv-cache nvfp4: throughput of activation QDQ
#                 (prefill- and decode-heavy) and KV-cache QDQ (SMOKE_KV_FORMAT, decode-heavy: issue 19)
#                 against QDQ off, four engines side by side (off, act, kv, a second off as the A/A
#                 control), interleaved rounds: as many as fit in SMOKE_BENCH_BUDGET seconds (default
#                 450, engine starts included; at most SMOKE_BENCH_ROUNDS, default 20); fails when a row's
#                 ratio is below SMOKE_PLUGIN_TARGET (default 0.97): the ratio QDQ's profiled cost allows
#                 on the off engine's best (decode-heavy: device time per step on its best step;
#                 prefill-heavy: device time plus the host time of QDQ's eager calls in one whole batch,
#                 on its best batch), gated by its A/A control and by QDQ adding at most
#                 LAUNCH_SLACK host launches a step outside its own calls (the bench's JUDGED_ON); wall times reported; SMOKE_BENCH_CPUS (a CPU list, e.g. 0-7): pin the
#                 engines there (--cpus; default unpinned); SMOKE_BENCH_MIN_S (default 4): seconds of
#                 batches per engine, shape and round (--min-seconds: turns per round)
#   bench-plugin  the two above in one process (--together): both models' eight engines up at once, one
#                 start-up (~90 s) instead of two, then rounds model by model in one SMOKE_BENCH_BUDGET;
#                 writes bench-plugin-gptoss.result and bench-plugin-dense.result from its per-model
#                 verdict lines (the summary's rows), and its own log and result. Not in the default run
#                 (eight engines of 4 GiB KV cache each: ~70 GB of GPU memory); for hosts whose calls are
#                 short (the device lease's `bench both` mode)
#   study         scripts/gpu_study.py: the study on one GPU (needs lm_eval installed)
#   summary       print the table of every step's result so far; exit 1 if any FAILED
#
# Every step writes $SMOKE_OUT/<step>.log and a one-line $SMOKE_OUT/<step>.result
# ("PASS|FAIL <seconds> s <detail>") and prints that line last. Models are built once under
# $SMOKE_OUT/models (SMOKE_MODELS) and shared by the steps; each step keeps its compile caches (vLLM's,
# Triton's, Inductor's) in $VLLM_CACHE_ROOT/<step> (default $SMOKE_OUT/vllm-cache), so a step run
# again starts warm and steps run side by side share no compile cache.
#
# SMOKE_STACK_DUMPS=60,90,120 (seconds; default unset): every Python process of a step, vLLM's
# engine cores included, writes all its threads' stacks to the step's logs at those seconds after it
# started (scripts/stack_dumps/sitecustomize.py): where an engine start waits without a log line.
#
# SMOKE_JIT_WARM=1 (default): before the first step that starts an engine, build FlashInfer's sampling
# kernels (scripts/gpu_jit_warm.py; vLLM's sampler on CUDA uses them, and where flashinfer-jit-cache is
# not installed an engine's first start compiles them with nvcc, ~100 s with no log line, every
# engine starting meanwhile waiting on FlashInfer's lock); its line says built, found, or not needed.
# Once built or found, $SMOKE_OUT/jit-warm.ready names the library, and a later run on the machine
# that finds it there skips the check's imports (~20 s a call). 0: leave it to the engines.
#
# SMOKE_JOBS=N (default 1) runs up to N of the check steps (kernels, plugin-*, method-*, serve,
# study) at once: their engines share the GPU (every engine gets a fixed KV-cache size, so vLLM
# skips the memory profiling that fails beside another engine). The bench-* steps always run
# alone, after the checks started before them have finished: they measure time. SMOKE_XDIST=N
# (default 8): the kernels step's pytest-xdist workers (a cold Triton cache makes that step a
# compile job: more workers where it runs alone on a host with more cores), each with the host's
# cores over the workers as its CPU threads (OMP_NUM_THREADS, unless set).
# Exit status: non-zero when a step failed, when there is no usable GPU (the reason is printed), or
# for an unknown step.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${SMOKE_OUT:-gpu-smoke-out}
mkdir -p "$OUT/models"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
CACHE_BASE=${VLLM_CACHE_ROOT:-$OUT/vllm-cache}
export SMOKE_MODELS=${SMOKE_MODELS:-$OUT/models}
JOBS=${SMOKE_JOBS:-1}
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || { echo "gpu-smoke: SMOKE_JOBS='$JOBS' is not a positive integer" >&2; exit 2; }
XDIST=${SMOKE_XDIST:-8}
[[ $XDIST =~ ^[1-9][0-9]*$ ]] || { echo "gpu-smoke: SMOKE_XDIST='$XDIST'; accepted: a positive whole number (the kernels step's pytest-xdist workers, default 8)" >&2; exit 2; }
DUMPS=${SMOKE_STACK_DUMPS:-}
if [ -n "$DUMPS" ] && ! [[ $DUMPS =~ ^[0-9]*\.?[0-9]+(,[0-9]*\.?[0-9]+)*$ && ! $DUMPS =~ (^|,)0*\.?0*(,|$) ]]; then
  echo "gpu-smoke: SMOKE_STACK_DUMPS='$DUMPS'; accepted: seconds > 0 after each process starts, comma-separated (e.g. 60,90,120)" >&2
  exit 2
fi
[[ ${SMOKE_BENCH_ROUNDS:-20} =~ ^[0-9]+$ ]] && [ "${SMOKE_BENCH_ROUNDS:-20}" -ge 3 ] || { echo "gpu-smoke: SMOKE_BENCH_ROUNDS='${SMOKE_BENCH_ROUNDS}'; accepted: a whole number >= 3 (the throughput bench's most rounds, default 20)" >&2; exit 2; }
[[ ${SMOKE_BENCH_BUDGET:-450} =~ ^[1-9][0-9]*$ ]] || { echo "gpu-smoke: SMOKE_BENCH_BUDGET='${SMOKE_BENCH_BUDGET}'; accepted: a whole number of seconds > 0 (the throughput bench's --budget-s, default 450)" >&2; exit 2; }
[[ ${SMOKE_BENCH_MIN_S:-4} =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ && ! ${SMOKE_BENCH_MIN_S:-4} =~ ^[0.]+$ ]] || { echo "gpu-smoke: SMOKE_BENCH_MIN_S='${SMOKE_BENCH_MIN_S}'; accepted: seconds > 0 (a round's batches per engine and shape, default 4)" >&2; exit 2; }
[ -z "${OMP_NUM_THREADS:-}" ] || [[ $OMP_NUM_THREADS =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || { echo "gpu-smoke: OMP_NUM_THREADS='${OMP_NUM_THREADS}'; accepted: a positive whole number (or a comma-separated list of them), or unset (the kernels step: the host's cores over its workers)" >&2; exit 2; }
JIT_WARM=${SMOKE_JIT_WARM:-1}
BENCH_FULL=${SMOKE_BENCH_FULL:-0}
[[ $BENCH_FULL =~ ^[01]$ ]] || { echo "gpu-smoke: SMOKE_BENCH_FULL='$BENCH_FULL'; accepted: 0 (bench-qdq without its switch sweeps, bench-sage3 at D=128) or 1 (both whole)" >&2; exit 2; }
[[ $JIT_WARM =~ ^[01]$ ]] || { echo "gpu-smoke: SMOKE_JIT_WARM='$JIT_WARM'; accepted: 1 (build FlashInfer's sampling kernels before the first engine step) or 0 (leave it to the engines)" >&2; exit 2; }
# every model is built on the spot: nothing to fetch (and no hub round trips: ~30 s per engine start
# on a host without network)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
STEPS=(kernels plugin-gptoss plugin-dense plugin-exact method-llama method-moe kv-cache tp2 serve study bench-qdq bench-sage3 bench-plugin-gptoss bench-plugin-dense)
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=("${STEPS[@]}" summary)
fail=0

for s in "${steps[@]}"; do
  if [ "$s" != summary ] && [[ " ${STEPS[*]} bench-plugin " != *" $s "* ]]; then
    echo "gpu-smoke: unknown step '$s'; accepted: ${STEPS[*]} bench-plugin summary" >&2
    exit 2
  fi
done

summary() {
  printf '%-22s %-6s %9s  %s\n' step result seconds detail
  local any=0 s line
  for s in "${STEPS[@]}"; do
    if [ -f "$OUT/$s.result" ]; then
      line=$(cat "$OUT/$s.result")
      read -r res secs _unit detail <<<"$line"
      printf '%-22s %-6s %9s  %s\n' "$s" "$res" "$secs" "$detail"
      [ "$res" = PASS ] || [ "$res" = SKIP ] || any=1
    else
      printf '%-22s %-6s %9s  %s\n' "$s" "-" "-" "not run"
    fi
  done
  return $any
}

gpu_check() {  # prints the GPU line or the reason there is none; exit status says which
  "$PY" - <<'PY'
import sys
try:
    import torch
except Exception as e:
    sys.exit(f"gpu-smoke: no GPU: torch does not import ({e})")
if not torch.cuda.is_available():
    sys.exit(f"gpu-smoke: no GPU: torch {torch.__version__} sees no CUDA device "
             f"(torch.version.cuda={torch.version.cuda}); run on a GPU host, e.g. docker run --gpus all ...")
try:
    import vllm
except Exception as e:
    sys.exit(f"gpu-smoke: vLLM does not import ({e})")
print(f"gpu-smoke: torch {torch.__version__}, vllm {vllm.__version__}, {torch.cuda.device_count()} x "
      f"{torch.cuda.get_device_name()}")
PY
}

step() {  # step NAME CMD...: log, time, one-line result
  local name=$1; shift
  local t0 t1 rc detail
  t0=$(date +%s.%N)
  echo "=== $name: $*"
  # each step's caches its own: vLLM's compile cache (vLLM points Inductor's cache inside it, per
  # compile hash) and Triton's, which is otherwise one per machine (~/.triton/cache), shared by steps
  # run side by side; TORCHINDUCTOR_CACHE_DIR covers what compiles before vLLM sets its own
  mkdir -p "$CACHE_BASE/$name"
  local dumps=()
  [ -z "$DUMPS" ] || dumps=(QDQ_STACK_DUMPS="$DUMPS" PYTHONPATH="$PWD/scripts/stack_dumps${PYTHONPATH:+:$PYTHONPATH}")
  env ${dumps[@]+"${dumps[@]}"} VLLM_CACHE_ROOT="$CACHE_BASE/$name" TRITON_CACHE_DIR="$CACHE_BASE/$name/triton" \
    TORCHINDUCTOR_CACHE_DIR="$CACHE_BASE/$name/inductor" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  [ "$JOBS" -gt 1 ] || tail -n 25 "$OUT/$name.log"
  detail=$(grep -E '^(=+ .*(passed|failed|error).* =+|[0-9]+ (passed|failed).*)$' "$OUT/$name.log" | tail -n 1 | tr -d '=' | sed 's/^ *//;s/ *$//')
  [ -n "$detail" ] || detail=$(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | cut -c1-100)
  local secs
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", b-a}')
  if [ $rc -eq 0 ]; then echo "PASS $secs s $detail" > "$OUT/$name.result"
  else echo "FAIL $secs s rc=$rc: $detail" > "$OUT/$name.result"; fail=1; fi
  echo "gpu-smoke: $name $(cat "$OUT/$name.result")"
}

pytest_args=(-m gpu -q -p no:cacheprovider -rfE)
xdist=()
"$PY" -c "import xdist" 2>/dev/null && xdist=(-n "$XDIST")

# the CPU threads of each kernels-step process (OMP_NUM_THREADS: torch's and OpenMP's): the host's
# cores over its pytest-xdist workers, at least 1, unless OMP_NUM_THREADS is set. With each of 8
# workers on all 16 cores beside the nine engine steps (06c), one test whose time is mostly a
# host-side loop of small tensor ops (tests/support/narrow_pairs.py) took 464 s of the step's 598;
# its int8 twin, the same loop once the engines and the other workers were done, 10.9 s.
kernel_threads() {
  if [ -n "${OMP_NUM_THREADS:-}" ]; then echo "$OMP_NUM_THREADS"; return; fi
  local n; n=$(nproc 2>/dev/null || echo 1)
  [ ${#xdist[@]} -eq 0 ] && { echo "$n"; return; }
  echo $(( n / XDIST > 0 ? n / XDIST : 1 ))
}

run_step() {
  local s=$1
  case $s in
    kernels)
      # the sage3 route test builds a real vllm-omni attention layer
      local kfiles=(tests/gpu/test_triton_qdq_gpu.py tests/gpu/test_triton_recipes_gpu.py tests/gpu/test_sage3_gpu.py)
      if "$PY" -c "import vllm_omni.diffusion.attention.layer" >/dev/null 2>&1; then
        # each test's time as it ends (kernels.times; --durations prints only if the run ends)
        rm -f "$OUT/kernels.times"
        step kernels env OMP_NUM_THREADS="$(kernel_threads)" QDQ_TEST_TIMES="$OUT/kernels.times" \
          "$PY" -m pytest "${pytest_args[@]}" "${xdist[@]}" \
          --durations=30 "${kfiles[@]}" tests/gpu/test_sage3_route_gpu.py
      else  # the other kernel tests still run; the step fails, saying why
        echo "=== kernels: vllm_omni does not import (pip install vllm-omni==0.30.0; offline: the wheels stage-gpu-extras.sh omni stages): tests/gpu/test_sage3_route_gpu.py not run, the step fails"
        step kernels "$PY" -m pytest "${pytest_args[@]}" "${xdist[@]}" "${kfiles[@]}"
        echo "FAIL $(awk '{print $2}' "$OUT/kernels.result") s vllm_omni not installed: test_sage3_route_gpu.py not run ($(cut -d' ' -f4- "$OUT/kernels.result"))" > "$OUT/kernels.result"
        fail=1; echo "gpu-smoke: kernels $(cat "$OUT/kernels.result")"; return 1
      fi ;;
    plugin-gptoss) step "$s" "$PY" -m pytest "${pytest_args[@]}" -s tests/gpu/test_plugin_gpu.py -k gptoss ;;
    plugin-dense) step "$s" "$PY" -m pytest "${pytest_args[@]}" -s tests/gpu/test_plugin_gpu.py -k dense ;;
    plugin-exact) step "$s" "$PY" -m pytest "${pytest_args[@]}" -s tests/gpu/test_plugin_exact_gpu.py ;;
    method-llama|method-moe)
      step "$s" "$PY" -m pytest "${pytest_args[@]}" -s tests/gpu/test_qdq_method_gpu.py -k "${s#method-}" ;;
    tp2)
      local n
      n=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
      if [ "${n:-0}" -lt 2 ]; then
        echo "SKIP 0 s needs two GPUs (tensor_parallel_size=2); this host has ${n:-0}" > "$OUT/tp2.result"
        echo "gpu-smoke: tp2 $(cat "$OUT/tp2.result")"; return 0
      fi
      step tp2 "$PY" -m pytest "${pytest_args[@]}" -s tests/gpu/test_tp2_gpu.py ;;
    kv-cache)
      if [ "$JOBS" -gt 1 ]; then  # its two models side by side: each runs five engines one after another
        step "$s" env SBS_LOG_DIR="$OUT/kv-cache.parts" bash scripts/pytest-side-by-side.sh "$PY" \
          tests/gpu/test_kv_cache_gpu.py "gptoss llama" "${pytest_args[@]}" -s
      else
        step "$s" "$PY" -m pytest "${pytest_args[@]}" -s tests/gpu/test_kv_cache_gpu.py
      fi ;;
    serve) step serve "$PY" scripts/gpu_serve_check.py --out "$SMOKE_MODELS" ;;
    bench-qdq)
      if [ "$BENCH_FULL" = 1 ]; then step bench-qdq "$PY" scripts/bench_qdq_triton.py
      else step bench-qdq "$PY" scripts/bench_qdq_triton.py --no-sweeps; fi ;;
    bench-sage3)
      if [ "$BENCH_FULL" = 1 ]; then step bench-sage3 "$PY" scripts/bench_sage3.py --no-check
      else step bench-sage3 "$PY" scripts/bench_sage3.py --no-check --dims 128 --no-ws-probe; fi ;;
    bench-plugin-gptoss|bench-plugin-dense|bench-plugin)
      # the throughput bench's smoke settings; bench-plugin: both models, their engines up at once
      # (--together: one start-up instead of two)
      local models=${s#bench-plugin-} together=()
      [ "$s" != bench-plugin ] || { models=gptoss,dense; together=(--together); }
      step "$s" "$PY" scripts/bench_plugin_throughput.py --models "$models" ${together[@]+"${together[@]}"} \
        --out "$SMOKE_MODELS" --kv-cache "${SMOKE_KV_FORMAT:-nvfp4}" --target "${SMOKE_PLUGIN_TARGET:-0.97}" \
        --json "$OUT/$s.json" --pairs "${SMOKE_BENCH_ROUNDS:-20}" --budget-s "${SMOKE_BENCH_BUDGET:-450}" \
        --min-seconds "${SMOKE_BENCH_MIN_S:-4}" ${SMOKE_BENCH_CPUS:+--cpus "$SMOKE_BENCH_CPUS"}
      local rc=$?
      [ "$s" = bench-plugin ] || return $rc
      # then one result per model from its verdict line (the summary's two bench rows)
      local m v detail secs
      secs=$(awk '{print $2}' "$OUT/bench-plugin.result")
      for m in gptoss dense; do
        v=$(grep -E "^verdict $m: " "$OUT/bench-plugin.log" | tail -n 1)
        detail=${v#verdict }
        if [[ $v == "verdict $m: PASS"* ]]; then
          echo "PASS $secs s $detail (step bench-plugin: both models' engines up at once)" > "$OUT/bench-plugin-$m.result"
        else
          [ -n "$v" ] || detail="no verdict line for $m: $(cut -d' ' -f4- "$OUT/bench-plugin.result")"
          echo "FAIL $secs s $detail (step bench-plugin)" > "$OUT/bench-plugin-$m.result"
          fail=1
        fi
        echo "gpu-smoke: bench-plugin-$m $(cat "$OUT/bench-plugin-$m.result")"
      done ;;
    study)
      # lm-eval's API model (what the study drives the servers with) needs its [api] extras
      if "$PY" -c "import lm_eval, tenacity, aiohttp, requests" 2>/dev/null; then
        step study "$PY" scripts/gpu_study.py --out "$OUT/study"
      else
        echo "=== study: lm_eval[api] is not installed (pip install 'lm_eval[api]'; offline: the wheels stage-gpu-extras.sh study stages); the step fails rather than pass unrun"
        echo "FAIL 0 s lm_eval[api] not installed" > "$OUT/study.result"; return 1
      fi ;;
  esac
}

# steps that start a vLLM engine (its start builds FlashInfer's sampling kernels where not prebuilt)
ENGINE_STEPS=" plugin-gptoss plugin-dense plugin-exact method-llama method-moe kv-cache tp2 serve study bench-plugin-gptoss bench-plugin-dense bench-plugin "
jit_warm() {  # once a run, before its first engine step: the ~100-s nvcc build as a line of its own
  jit_done=1
  [ "$JIT_WARM" = 1 ] || return 0
  local t0=$SECONDS rc line
  echo "gpu-smoke: FlashInfer sampling kernels for vLLM's sampler (built once per machine where flashinfer-jit-cache is not installed: ~100 s) ..."
  "$PY" scripts/gpu_jit_warm.py --marker "$OUT/jit-warm.ready" > "$OUT/jit-warm.log" 2>&1
  rc=$?
  line=$(grep '^jit-warm:' "$OUT/jit-warm.log" | tail -n 1)
  [ -n "$line" ] || line=$(grep -v '^\s*$' "$OUT/jit-warm.log" | tail -n 1 | cut -c1-200)
  echo "gpu-smoke: $line ($((SECONDS - t0)) s in all; log $OUT/jit-warm.log)"
  # a failed build is not a step's result: the engine steps meet the same error and fail with it
  [ $rc -eq 0 ] || echo "gpu-smoke: the FlashInfer build failed (rc=$rc); the engine steps will fail on it"
}

ran=()
for s in "${steps[@]}"; do
  if [ "$s" = summary ]; then
    wait
    summary || fail=1
    continue
  fi
  if [ -z "${gpu_ok:-}" ] && ! gpu_check; then
    wait
    echo "FAIL 0 s no GPU (see the line above)" > "$OUT/$s.result"
    exit 3
  fi
  gpu_ok=1
  [ -n "${jit_done:-}" ] || [[ $ENGINE_STEPS != *" $s "* ]] || jit_warm
  rm -f "$OUT/$s.result"
  ran+=("$s")
  if [ "$JOBS" -gt 1 ] && [[ $s != bench-* ]]; then
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    run_step "$s" &
  else
    wait  # a bench step measures time: nothing else on the GPU
    run_step "$s"
  fi
done
wait
for s in "${ran[@]}"; do
  read -r res _ < "$OUT/$s.result" 2>/dev/null || res=FAIL
  [ "$res" = PASS ] || [ "$res" = SKIP ] || fail=1
done
exit $fail
