# `make test` and `make demo` build .venv from scratch on a fresh machine (pip only), then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Keep test/benchmark runs on the machine's cores without oversubscription.
export OMP_NUM_THREADS ?= 2

.PHONY: venv test test-fast demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(PY) -m uniformer.demo

clean:
	rm -rf $(VENV) .pytest_cache demo_out
