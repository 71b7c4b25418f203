# The two commands a new user (and CI) runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup demo test lint bench models clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[bot,desktop,ray,dev,annotators]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/dreamhall dream "a red circle on a blue background" -n 4 -S 3220803958 -g
	$(VENV)/bin/dreamhall dream "a green triangle on a white background" -n 4
	$(VENV)/bin/dreamhall search "red circle" --limit 4
	$(VENV)/bin/dreamhall engine stop

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/engine_overhead.py
	QT_QPA_PLATFORM=offscreen $(PY) bench/desktop_gallery.py

models: setup
	PYTHON=$(PY) models/train_all.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
