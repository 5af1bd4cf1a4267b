# Two entry points for newcomers: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,examples]'
	touch $(STAMP)

demo: install
	$(PY) examples/train_digits.py

# Keras fixes its backend at import, so the JAX run is a second pytest process, on the embedded
# store only (what depends on the backend is saving and loading, not the tracker's transport).
# Both runs always run; `make test` fails if either does.
JAX_TESTS ?= tests/test_callback.py tests/test_registry.py tests/test_resume.py tests/test_backends.py

test: install
	@status=0; \
	$(PY) -m pytest $(PYTEST_ARGS) || status=$$?; \
	echo "== the same callback, registry and resume tests on the JAX backend =="; \
	KERAS_BACKEND=jax $(PY) -m pytest -q -p no:cacheprovider -k "not server" $(JAX_TESTS) || status=$$?; \
	echo "== floor and newest supported versions, each in its own venv (noxfile.py) =="; \
	$(VENV)/bin/nox $(NOX_ARGS) || status=$$?; \
	exit $$status

bench: install
	$(PY) benchmarks/run.py
	$(PY) benchmarks/cost.py
	$(PY) benchmarks/trainers.py
	$(PY) benchmarks/short_fits.py

clean:
	rm -rf $(VENV) .nox build *.egg-info mlflow.db mlruns checkpoints .tracked_ckpt
