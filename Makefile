# The two commands of the README. Both create .venv if it is missing (torch pinned to the CPU build
# first, so that nothing pulls a multi-GB CUDA build), then run.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.hermesflow-installed
DEMO_OUT ?= runs/demo

.PHONY: setup demo test bench clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	rm -rf $(DEMO_OUT)/world
	$(BIN)/hermesflow world --out $(DEMO_OUT)/world --n 600 --seed 0 --split train
	$(BIN)/hermesflow validate $(DEMO_OUT)/world

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_world.py
