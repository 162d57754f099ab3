# `make demo` and `make test` are the two commands of the README's quickstart.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_INDEX ?=

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml distill/__init__.py  # the version lives in __init__.py
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, at the one version the tests ran on (pyproject.toml allows 2.13.x). A version
	# pin does not choose the build: pip takes what its index serves for it. This machine's pip
	# finds a local CPU wheel; on PyPI the Linux wheel is the CUDA one (several GB). For a CPU
	# build elsewhere: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/distill run pipeline --config demo

# The suite in one worker per core (at most 4), each on one thread (tests/conftest.py): 2 cores
# run it in ~80 s instead of ~130 s in one process.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -n auto --maxprocesses 4

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/teacher_speed.py
	$(BIN)/python bench/distill_speed.py

clean:
	rm -rf $(VENV) runs
