#!/usr/bin/env bash
# Stage lm-eval (and what it needs beyond the GPU host's packages) for `gpu-smoke.sh study` on a
# GPU host without a package index, like ../shared/gpu/stage-vllm.sh does for vLLM.
#   bash scripts/stage-gpu-study.sh OUT      # here (reaches PyPI)
#   bash OUT/install.sh TARGET               # there: pip installs the wheels into TARGET (--target)
# Versions come from scripts/constraints-cpu.txt (the ones the CPU study runs); wheels for
# CPython 3.12 x86-64; packages the host already has (HOST_HAS, default ../shared/gpu/host-has.txt)
# are left out; sdist-only pure-Python packages are built into wheels here.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: stage-gpu-study.sh OUT}
HOST_HAS=${HOST_HAS:-../shared/gpu/host-has.txt}
LOCK=scripts/constraints-cpu.txt
rm -rf "$OUT"; mkdir -p "$OUT/wheels"
# lm_eval[api] (the study drives servers through lm-eval's API model): tenacity aiohttp requests tiktoken
PKGS=(lm_eval tenacity aiohttp requests tiktoken datasets evaluate dill multiprocess sacrebleu rouge_score scikit-learn sqlitedict pytablewriter
      word2number jsonlines more-itertools zstandard tqdm-multiprocess pybind11 nltk absl-py portalocker
      colorama lxml chardet DataProperty mbstrdecoder pathvalidate tabledata tcolorpy typepy joblib threadpoolctl
      scipy)
have=$(grep -v '^#' "$HOST_HAS" 2>/dev/null | tr ' ' '\n' | tr 'A-Z_' 'a-z-' | grep -v '^$' || true)
reqs=()
for p in "${PKGS[@]}"; do
  n=$(tr 'A-Z_' 'a-z-' <<<"$p")
  grep -qx "$n" <<<"$have" && continue
  pin=$(grep -i -E "^${p//[-_]/[-_]}==" "$LOCK" | head -n1 || true)
  reqs+=("${pin:-$p}")
done
echo "stage-gpu-study: ${reqs[*]}" >&2
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any)
for r in "${reqs[@]}"; do
  pip download -q --no-deps "${PLAT[@]}" -d "$OUT/wheels" "$r" 2>/dev/null \
    || pip wheel -q --no-deps -w "$OUT/wheels" "$r"
done
cat > "$OUT/install.sh" <<'SH'
#!/bin/bash
set -e
here=$(cd "$(dirname "$0")" && pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --target "${1:?target}" "$here"/wheels/*.whl
python3 -c "import lm_eval; print('lm_eval', lm_eval.__version__)"
SH
du -sh "$OUT" >&2
