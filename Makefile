# Two entry points for newcomers (see README): `make demo` and `make test`.
# Each creates the virtual environment itself on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: demo test env env-test clean

# The main job on the embedded default: synthetic data in the real ICBHI format, made on the fly.
demo: env
	$(PY) -m resp_jax.main --config=configs/mscl.py:quick

# The whole test suite (what CI runs), over TEST_WORKERS processes (pytest-xdist; 0 runs it
# in this process). Most tests are single-threaded XLA compilation, so two workers on two
# cores roughly halve the wall time.
TEST_WORKERS ?= 2
test: env-test
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

env: $(VENV)/.installed
env-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "resp_jax needs Python >= 3.11, found " + sys.version'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e .
	touch $@

# torch (CPU is enough), transformers and safetensors only for the weight converters and the
# PyTorch / Hugging Face parity tests.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[torch,ast,dev]'
	touch $@

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
