# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
EXTRAS ?= cpu,test

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: install
	$(BIN)/audit demo --out reports/demo

# Every test, the slow end-to-end ones included. pytest exits 5 when no test ran:
# that is a failure here, never a pass.
test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# Speed and memory targets, as ratios measured within one run (JSON + markdown in benchmarks/results).
bench: install
	$(BIN)/python benchmarks/attribution.py --out benchmarks/results
	$(BIN)/python benchmarks/discovery.py --out benchmarks/results
	$(BIN)/python benchmarks/scale.py --out benchmarks/results
	$(BIN)/python benchmarks/internals.py --out benchmarks/results

clean:
	rm -rf $(VENV) reports/demo reports/.cache build *.egg-info
