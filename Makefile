# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
EXTRAS ?= cpu,test,peers,tracking,cloud

.PHONY: install browser demo test test-fast bench clean

install: $(STAMP) browser

# The peers the tests cross-check against (Xplique, tf-keras-vis and their tf-keras) go in with
# --no-deps, so they cannot pull a second, GPU TensorFlow; their light dependencies come with the
# `peers` extra, and tf-keras matches the installed TensorFlow's minor version.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	TF=$$($(BIN)/pip show tensorflow-cpu tensorflow 2>/dev/null | awk '/^Version:/ {split($$2, v, "."); print v[1] "." v[2]; exit}'); \
	$(BIN)/pip install --quiet --no-deps xplique==2.0.2 tf-keras-vis==0.8.7 "tf-keras==$$TF.*"
	touch $(STAMP)

# tests/test_browser.py drives Debian chromium (headless, through playwright): install it when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	  else echo "make: chromium is missing and installing it needs root or sudo: apt-get install chromium" >&2; exit 1; fi; \
	  echo "installing Debian chromium for the browser test (apt-get)"; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium \
	    || { echo "make: apt-get could not install chromium (needed by tests/test_browser.py)" >&2; exit 1; }; \
	  command -v chromium >/dev/null 2>&1 || { echo "make: chromium still not found after apt-get" >&2; exit 1; }; }

demo: install
	$(BIN)/audit demo --out reports/demo

# Every test, the slow end-to-end ones included. pytest exits 5 when no test ran:
# that is a failure here, never a pass.
# Tests run in TEST_WORKERS processes (pytest-xdist); tests/conftest.py groups them so that each
# file's fixtures and the shared demo nights run once. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

test-fast: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow"

# Speed and memory targets, as ratios measured within one run (JSON + markdown in benchmarks/results).
# Every benchmark runs even when an earlier one misses a target; the target fails at the end if any did.
BENCHMARKS = attribution discovery scale trust report internals decode production budget
bench: install
	@failed=; for b in $(BENCHMARKS); do \
	  args=; \
	  echo "== benchmarks/$$b.py"; \
	  $(BIN)/python benchmarks/$$b.py --out benchmarks/results $$args || failed="$$failed $$b"; \
	done; \
	if [ -n "$$failed" ]; then echo "make bench: targets missed or errors in:$$failed (see benchmarks/results)" >&2; exit 1; fi

clean:
	rm -rf $(VENV) reports/demo reports/.cache build *.egg-info
