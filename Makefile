# difftori: `make demo` and `make test` are the two commands a new user needs.
PY ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup test test-kernels demo bench bench-setup maniskill test-maniskill clean

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)

# Re-install only when the package metadata or constraints change (quick when already installed).
$(STAMP): $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(PIP) install -q --disable-pip-version-check -c constraints.txt -e ".[dmc,metaworld,robosuite,dev,sweep]"
	# mpc.pytorch (the differentiable-MPC peer of the pendulum and optimizer benchmarks and their tests): its metadata
	# pins numpy<2, which it does not need, so it is installed without dependencies (as theseus-ai for the optimizer
	# benchmark).
	$(PIP) install -q --disable-pip-version-check --no-deps mpc==0.0.6
	# robosuite (the lift / can / square IL tasks): its dependency mink pins numpy<2 and is only used for one humanoid's IK,
	# so robosuite is installed without dependencies; the ones it uses come with the extra `robosuite` above.
	$(PIP) install -q --disable-pip-version-check --no-deps -c constraints.txt robosuite==1.5.2
	touch $(STAMP)

setup: $(STAMP)

# One pytest worker per core (tests use one torch thread each); a test file's tests share one worker (--dist loadfile),
# so a module fixture (e.g. the pendulum --quick grid) is built once.
TEST_WORKERS ?= auto
PYTEST := $(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: setup
	$(PYTEST) tests

# The learning tests once more under a second CPU kernel set (avx2 where the native one is avx512, else the
# portable default), so a test that only passes with one kind of float kernels fails here.
SECOND_CAPABILITY = $(shell $(PYTHON) -c "import torch; print('avx2' if torch.backends.cpu.get_cpu_capability() == 'AVX512' else 'default')" 2>/dev/null)
test-kernels: setup
	ATEN_CPU_CAPABILITY=$(SECOND_CAPABILITY) $(PYTEST) -m learning tests

demo: setup
	$(VENV)/bin/difftori rl demo

# theseus-ai is only for the optimizer benchmark (peer 1 of optim_peers.py); it must be installed without its deps.
$(VENV)/.bench-installed: $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[bench]"
	$(PIP) install -q --no-deps --no-build-isolation theseus-ai==0.2.3
	$(PIP) install -q --no-deps torchlie==0.1.0 torchkin==0.1.1
	touch $@

bench-setup: $(VENV)/.bench-installed

bench: bench-setup
	$(PYTHON) benchmarks/optim_peers.py

# ManiSkill3 in its own venv: mplib 0.1.1 (ManiSkill's motion planner, our experts) segfaults under numpy 2, so this
# venv holds numpy<2 while the default one keeps numpy 2.x. Also fetches the private software Vulkan driver SAPIEN
# renders with (Mesa 25 lavapipe into $(MS_VENV)/vulkan, no root, system Mesa untouched; see difftori/envs/vulkan.py).
MS_VENV ?= .venv-maniskill
MS_STAMP := $(MS_VENV)/.installed

$(MS_VENV)/bin/python:
	$(PY) -m venv $(MS_VENV)

$(MS_STAMP): $(MS_VENV)/bin/python pyproject.toml constraints.txt
	$(MS_VENV)/bin/pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(MS_VENV)/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[maniskill,dev,sweep]"
	$(MS_VENV)/bin/python -m difftori.envs.vulkan fetch
	touch $@

maniskill: $(MS_STAMP)

test-maniskill: maniskill
	$(MS_VENV)/bin/python -m pytest -q tests/envs/test_maniskill.py tests/envs/test_maniskill_registry.py

clean:
	rm -rf $(VENV) $(MS_VENV) build *.egg-info src/*.egg-info
