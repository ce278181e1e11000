#!/usr/bin/env bash
# Stage what the GPU smoke suite needs beyond vLLM on a GPU host without a package index, like
# ../shared/gpu/stage-vllm.sh does for vLLM:
#   study: lm-eval with its [api] extras (`gpu-smoke.sh study` drives the servers through it);
#   omni:  vllm-omni and what importing its diffusion attention layer needs (the `kernels` step's
#          tests/gpu/test_sage3_route_gpu.py builds a real vllm-omni Attention layer).
#   bash scripts/stage-gpu-extras.sh OUT [study] [omni]   # here (reaches PyPI); default: both
#   bash OUT/pN/install.sh TARGET                         # there, each part: pip installs its wheels
# Parts of at most 45 MiB (a transfer carries 64 MiB with the working tree). Versions come from
# scripts/constraints-cpu.txt (the ones the CPU image runs); wheels for CPython 3.12 x86-64;
# packages the host already has (HOST_HAS, default ../shared/gpu/host-has.txt) or that
# stage-vllm.sh stages (HOST_NEEDS) are left out; sdist-only pure-Python packages are built into
# wheels here. Each install.sh imports what its group provides once every part is in.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: stage-gpu-extras.sh OUT [study] [omni]}
shift
groups=("$@"); [ ${#groups[@]} -eq 0 ] && groups=(study omni)
HOST_HAS=${HOST_HAS:-../shared/gpu/host-has.txt}
LOCK=scripts/constraints-cpu.txt
# lm_eval[api] (the study drives servers through lm-eval's API model): tenacity aiohttp requests tiktoken
STUDY=(lm_eval tenacity aiohttp requests tiktoken datasets evaluate dill multiprocess sacrebleu rouge_score scikit-learn sqlitedict pytablewriter
       word2number jsonlines more-itertools zstandard tqdm-multiprocess pybind11 nltk absl-py portalocker
       colorama lxml chardet DataProperty mbstrdecoder pathvalidate tabledata tcolorpy typepy joblib threadpoolctl
       scipy)
# found by importing vllm_omni.diffusion.attention.{layer,backends.registry}, .config, .data,
# .forward_context and vllm_qdq.sage3 with each candidate blocked (cv2, av, soundfile, soxr,
# fa3_fwd, gguf are optional there)
OMNI=(vllm-omni diffusers aenum omegaconf prettytable wcwidth importlib_metadata)
pkgs=(); checks=()
for g in "${groups[@]}"; do
  case $g in
    study) pkgs+=("${STUDY[@]}"); checks+=("import lm_eval, tenacity, aiohttp, requests; print('lm_eval', lm_eval.__version__)") ;;
    omni) pkgs+=("${OMNI[@]}"); checks+=("import vllm_omni.diffusion.attention.layer, vllm_omni.diffusion.forward_context; print('vllm_omni imports')") ;;
    *) echo "stage-gpu-extras: unknown group '$g'; accepted: study omni" >&2; exit 2 ;;
  esac
done
norm() { tr 'A-Z_.' 'a-z--'; }
have=$( (grep -v '^#' "$HOST_HAS" 2>/dev/null; grep -v '^#' "${HOST_NEEDS:-../shared/gpu/host-needs.txt}" 2>/dev/null \
         | sed 's/[<>=!;[ ].*//') | tr ' ' '\n' | norm | grep -v '^$' || true)
reqs=()
for p in $(printf '%s\n' "${pkgs[@]}" | awk '!seen[$0]++'); do
  n=$(norm <<<"$p")
  grep -qx "$n" <<<"$have" && continue
  pin=$(grep -i -E "^${p//[-_]/[-_]}==" "$LOCK" | head -n1 || true)
  reqs+=("${pin:-$p}")
done
echo "stage-gpu-extras (${groups[*]}): ${reqs[*]}" >&2
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any)
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
for r in "${reqs[@]}"; do
  pip download -q --no-deps "${PLAT[@]}" -d "$WORK" "$r" 2>/dev/null \
    || pip wheel -q --no-deps -w "$WORK" "$r"
done
rm -rf "$OUT"; mkdir -p "$OUT"
# parts of at most 45 MiB, largest wheels first
limit=$((45 << 20)); k=0; declare -A size=()
stamp=$(date +%s)  # names this staging's markers on the host (older stagings' do not count)
while read -r bytes w; do
  [ "$bytes" -le $limit ] || echo "stage-gpu-extras: warning: $(basename "$w") is $((bytes >> 20)) MiB, over the part limit: a part of its own" >&2
  placed=
  for ((i = 1; i <= k; i++)); do
    if [ $((size[$i] + bytes)) -le $limit ]; then placed=$i; break; fi
  done
  if [ -z "$placed" ]; then k=$((k + 1)); placed=$k; size[$k]=0; mkdir -p "$OUT/p$k/wheels"; fi
  mv "$w" "$OUT/p$placed/wheels/"; size[$placed]=$((size[$placed] + bytes))
done < <(find "$WORK" -name '*.whl' -printf '%s %p\n' | sort -rn)
check=$(printf '%s; ' "${checks[@]}")
for ((i = 1; i <= k; i++)); do
  cat > "$OUT/p$i/install.sh" <<SH
#!/bin/bash
# part $i of $k (stage-gpu-extras.sh ${groups[*]}): install its wheels into TARGET; the last part
# to arrive checks that everything imports (PYTHONPATH must hold TARGET: . /opt/gpu-site/env.sh)
set -e
here=\$(cd "\$(dirname "\$0")" && pwd)
target=\${1:?usage: install.sh TARGET}
python3 -m pip install -q --no-index --no-deps --no-compile --target "\$target" "\$here"/wheels/*.whl
touch "\$target/.extras-$stamp-p$i"
if [ "\$(ls "\$target"/.extras-$stamp-p* | wc -l)" -ge $k ]; then python3 -c "$check"; fi
SH
done
if [ "$k" -eq 0 ]; then
  echo "stage-gpu-extras: nothing to stage: the host has every package of ${groups[*]}" >&2; exit 0
fi
du -sh "$OUT"/p* >&2
echo "staged $k parts in $OUT: on the GPU host, bash $OUT/pN/install.sh /opt/gpu-site/deps for N=1..$k" >&2
