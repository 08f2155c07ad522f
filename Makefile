# The two commands of the README. Both create .venv if it is missing (torch pinned to the CPU build
# first, so that nothing pulls a multi-GB CUDA build), then run.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.hermesflow-installed
DEMO_OUT ?= runs/demo

.PHONY: setup demo test bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The default pipeline: evaluate the shipped base model, one self-play round, evaluate again.
# It resumes if interrupted; `rm -rf runs/demo` starts afresh.
demo: setup
	$(BIN)/hermesflow run --out $(DEMO_OUT)

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_world.py
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_fingerprint.py
	$(BIN)/python benchmarks/bench_plan.py
	$(BIN)/python benchmarks/bench_samplers.py
