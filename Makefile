# Two commands from a fresh clone: `make demo` and `make test`. Everything lives in .venv/.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; override (e.g. TORCH=torch) on a machine with a GPU.
TORCH ?= torch==2.13.0
SAMPLE := out/sample.safetensors

.PHONY: demo test lint bench install install-test wheel-check clean

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

# What `pip install` gives a user: the wheel alone, in a fresh venv, run from another folder (no
# source tree on the path): its presets must be inside it, and a preview decode must work.
WHEEL_DIR := out/wheel
wheel-check: install
	rm -rf $(WHEEL_DIR) && mkdir -p $(WHEEL_DIR)
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(WHEEL_DIR) .
	$(PY) scripts/check_wheel.py $(WHEEL_DIR)/latent2mp4-*.whl
	$(PYTHON) -m venv $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/python -m pip install -q "$(TORCH)" $(WHEEL_DIR)/latent2mp4-*.whl
	$(PY) scripts/make_sample.py $(WHEEL_DIR)/sample.safetensors --model wan
	cd $(WHEEL_DIR) && venv/bin/python -c "import latent2mp4; print(latent2mp4.__file__)" \
		| grep -q site-packages
	cd $(WHEEL_DIR) && venv/bin/latent2mp4 presets >presets.txt && grep -q "wan2.2" presets.txt
	cd $(WHEEL_DIR) && venv/bin/latent2mp4 decode sample.safetensors -m wan --decoder preview \
		-o sample.mp4 && test -s sample.mp4
	@echo "wheel-check: the installed wheel lists its presets and decodes"

bench: install
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) scripts/bench.py

clean:
	rm -rf out .pytest_cache
