# Two commands do all set-up themselves on a fresh machine:
#   make demo   - runs the main job on the built-in data and models, outputs under demo_output/
#   make test   - runs the test suite (all of it: CI's command)
#   make test-fast - the tests not marked slow (the inner loop while developing; README, "Developing")
# Both create .venv and install what they need (CPU torch pinned; see README for a CUDA build).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= 2

.PHONY: demo test test-fast venv benchmarks gpu-check clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q Testing

test-fast: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q -m "not slow" Testing

demo: $(STAMP)
	$(PY) -m GANTrainerLib.demo --out demo_output

benchmarks: $(STAMP)
	$(PY) benchmarks/run.py

# The prepared GPU check (benchmarks/gpu_check.py; docs/training.md "Checking a GPU"). With GPU_PYTHON set, that
# interpreter (one with a CUDA torch) runs it without any install; otherwise the venv's (make TORCH_SPEC=... for CUDA).
GPU_PYTHON ?=
GPU_CHECK_ARGS ?=
gpu-check:
ifeq ($(GPU_PYTHON),)
	$(MAKE) venv
	$(PY) benchmarks/gpu_check.py --out gpu_check $(GPU_CHECK_ARGS)
else
	$(GPU_PYTHON) benchmarks/gpu_check.py --out gpu_check $(GPU_CHECK_ARGS)
endif

clean:
	rm -rf $(VENV) demo_output .pytest_cache gpu_check gpu_check_out
