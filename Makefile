# Every target sets itself up from a fresh clone: it creates .venv and installs featstore first.
# CPU machines get the CPU build of torch through constraints-cpu.txt. GPU users: install the torch
# build for their CUDA into .venv first (or any env), then run with CONSTRAINTS= (empty).
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints-cpu.txt
BIN := $(VENV)/bin

.PHONY: install test demo bench clean

$(BIN)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),--constraint $(CONSTRAINTS)) --editable '.[test]'
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/featstore datasets ls
	$(BIN)/featstore build --dataset 1k
	$(BIN)/featstore ls --dataset 1k --layers 'layer_03[0-3]'
	$(BIN)/python examples/quickstart.py --dataset 1k

bench: install
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) .pytest_cache
