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

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/run.py
	$(PY) benchmarks/trainers.py

clean:
	rm -rf $(VENV) build *.egg-info mlflow.db mlruns checkpoints .tracked_ckpt
