# Two entry points for newcomers: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test check docs bench install clean

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
	$(MAKE) --no-print-directory check || status=$$?; \
	echo "== the suite =="; \
	$(PY) -m pytest $(PYTEST_ARGS) || status=$$?; \
	echo "== the same callback, registry and resume tests on the JAX backend =="; \
	KERAS_BACKEND=jax $(PY) -m pytest -q -p no:cacheprovider -k "not server" $(JAX_TESTS) || status=$$?; \
	echo "== floor and newest supported versions, each in its own venv (noxfile.py) =="; \
	$(VENV)/bin/nox $(NOX_ARGS) || status=$$?; \
	exit $$status

# Lint, format, types, the docstring examples and the docs site; every part runs, and `make check` fails if any does.
# mypy cannot follow the editable install's import hook, so it checks a view of the package as
# installed: tracked_ckpt/ with integrations/ linked in as tracked_ckpt/integrations (its errors
# name that path).
MYPY_VIEW := build/mypy

check: install
	@status=0; \
	echo "== ruff check =="; \
	$(VENV)/bin/ruff check . || status=$$?; \
	echo "== ruff format --check =="; \
	$(VENV)/bin/ruff format --check . || status=$$?; \
	echo "== mypy (strict) =="; \
	rm -rf $(MYPY_VIEW) && mkdir -p $(MYPY_VIEW)/tracked_ckpt && \
	ln -s $(CURDIR)/tracked_ckpt/*.py $(CURDIR)/tracked_ckpt/py.typed $(MYPY_VIEW)/tracked_ckpt/ && \
	ln -s $(CURDIR)/integrations $(MYPY_VIEW)/tracked_ckpt/integrations && \
	(cd $(MYPY_VIEW) && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml \
		--cache-dir $(CURDIR)/.mypy_cache -p tracked_ckpt) || status=$$?; \
	echo "== doctests =="; \
	$(PY) -m pytest -q -p no:cacheprovider -o addopts= --doctest-modules tracked_ckpt integrations || status=$$?; \
	echo "== mkdocs build --strict =="; \
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q -d build/site || status=$$?; \
	exit $$status

# The documentation site (mkdocs.yml, docs/), served with live reload at http://127.0.0.1:8000.
docs: install
	$(VENV)/bin/mkdocs serve

bench: install
	$(PY) benchmarks/run.py
	$(PY) benchmarks/cost.py
	$(PY) benchmarks/trainers.py
	$(PY) benchmarks/short_fits.py

clean:
	rm -rf $(VENV) .nox build *.egg-info .mypy_cache .ruff_cache mlflow.db mlruns checkpoints .tracked_ckpt
