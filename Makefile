# The two set-up commands of the README. Both create .venv from nothing on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: env demo test lint gpu-smoke bench-qdq
env:
	@VENV=$(VENV) bash scripts/setup-env.sh

## The main job on the embedded CPU default.
demo: env
	$(PY) -m vllm_qdq.study.demo

## The whole CPU test suite (what CI runs).
test: env
	$(VENV)/bin/ruff check overlay scripts tests
	$(PY) -m pytest tests -m "not gpu" -q --durations=40

lint: env
	$(VENV)/bin/ruff check overlay scripts tests

bench-qdq: env
	$(PY) scripts/bench_qdq_cpu.py
