# difftori: `make demo` and `make test` are the two commands a new user needs.
PY ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup test demo bench bench-setup clean

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)

# Re-install only when the package metadata or constraints change (quick when already installed).
$(STAMP): $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(PIP) install -q --disable-pip-version-check -c constraints.txt -e ".[dmc,metaworld,dev]"
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PYTHON) -m pytest -q tests

demo: setup
	$(VENV)/bin/difftori rl demo

# theseus-ai is only for the optimizer benchmark; it must be installed without its deps.
$(VENV)/.bench-installed: $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[bench]"
	$(PIP) install -q --no-deps --no-build-isolation theseus-ai==0.2.3
	$(PIP) install -q --no-deps torchlie==0.1.0 torchkin==0.1.1
	touch $@

bench-setup: $(VENV)/.bench-installed

bench: bench-setup
	$(PYTHON) benchmarks/optim_vs_theseus.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
