# `make site` and `make test` set everything up on a machine with only Python 3.11+ and git.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra package index for the CPU build of torch. PyPI's Linux wheels of torch
# bundle CUDA; on such a machine run, for example,
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PIP_TORCH_FLAGS := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)

.PHONY: site test serve validate bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Knowledge-base tools only: no torch.
$(VENV)/.kb-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# Everything the test suite needs, torch as the CPU build.
$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(PIP_TORCH_FLAGS) -e '.[reference,notebooks,test]'
	$(BIN)/python -c "import sys, torch; sys.exit(0 if torch.version.cuda is None else 'torch ' + torch.__version__ + ' is a CUDA build; rerun with TORCH_INDEX set to a CPU wheel index (see the Makefile)')"
	touch $(VENV)/.kb-installed $@

validate: $(VENV)/.kb-installed
	$(BIN)/kb validate

site: validate
	$(BIN)/mkdocs build --strict --site-dir site

serve: $(VENV)/.kb-installed
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest

bench: $(VENV)/.test-installed
	$(BIN)/python bench/bench_kb.py

clean:
	rm -rf $(VENV) site
