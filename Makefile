# Two commands from a fresh clone: `make demo` and `make test`. Everything lives in .venv/.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; override (e.g. TORCH=torch) on a machine with a GPU.
TORCH ?= torch==2.13.0
SAMPLE := out/sample.safetensors

.PHONY: demo test lint bench install install-test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Two stamps: .runtime = the package and its runtime dependencies (enough for the demo);
# .installed = that plus the test extra. A venv made by `make demo` still gets the test extra on
# `make test`, and editing pyproject.toml redoes both.
$(VENV)/.runtime: pyproject.toml | $(PY)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed: $(VENV)/.runtime
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.runtime

install-test: $(VENV)/.installed

demo: install
	$(PY) scripts/make_sample.py $(SAMPLE) --model wan
	$(VENV)/bin/latent2mp4 decode $(SAMPLE) --decoder preview --overwrite
	@echo "demo video: $(abspath out/sample.mp4)"

test: install-test lint
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

lint: install-test
	$(VENV)/bin/ruff check latent2mp4 tests scripts
	$(VENV)/bin/ruff format --check latent2mp4 tests scripts
	$(VENV)/bin/mypy latent2mp4

bench: install
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) scripts/bench.py

clean:
	rm -rf out .pytest_cache
