# The two commands of the README's quick start. Each makes and reuses a local virtual environment (.venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint venv browser

demo: $(VENV)/.installed
	$(BIN)/resnets demo

# browser first: a machine that lacks chromium and cannot install it says so before the venv is built
test: browser $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

# Debian's chromium for tests/test_serve_page.py: installed with apt-get when missing (as root), else one line why not
browser:
	@$(SHELL) scripts/need_chromium.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@
