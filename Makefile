# openllm_hub: `make demo` sets everything up and runs the main job; `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# llama-cpp-python compiles from source; the multimodal part is not needed. pip caches the wheel.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc)
PLUGINS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
# demo_train/: the demo models' training pipeline, a distribution of its own (not shipped in the llama plugin)
EDITABLES := -e . $(addprefix -e ,$(PLUGINS)) -e ./demo_train -e examples/third_party_plugin
CONSTRAINTS := -c requirements/constraints.txt

.PHONY: demo test lint typecheck pytest clean

$(VENV)/.installed: pyproject.toml requirements/constraints.txt requirements/test.txt $(wildcard plugins/*/pyproject.toml) demo_train/pyproject.toml examples/third_party_plugin/pyproject.toml
	@echo "==> creating $(VENV) and installing openllm-hub with its plugins (first run compiles llama.cpp: 5-25 min)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PIP) install -q --upgrade pip
	@$(PIP) install -q $(CONSTRAINTS) torch==2.13.0
	@$(PIP) install -q $(CONSTRAINTS) $(EDITABLES) -r requirements/test.txt
	@touch $@

demo: $(VENV)/.installed
	@$(PY) examples/demo.py

test: $(VENV)/.installed
	@bash scripts/test.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy --strict src/openllm_hub

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
