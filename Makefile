# Two entry points for a fresh machine: `make run` and `make test`. Both build .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
MODEL   ?= meta-llama/Llama-3.1-8B
ARGS    ?=

.PHONY: run test install clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, exactly pinned: the CPU build (see pyproject.toml)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/tracecost trace $(MODEL) $(ARGS)

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
