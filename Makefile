# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# CPU wheel on machines without CUDA; a torch already in the venv (a GPU build, say) is kept.
TORCH_SPEC ?= torch==2.13.0
# pytest-xdist workers of `make test` (each runs torch on one thread).
TEST_WORKERS ?= 2

.PHONY: demo test lint validity clean-venv

# The venv with torch (the CPU wheel unless a torch is already there).
define VENV_WITH_TORCH
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -qq "$(TORCH_SPEC)"
endef

# The project and its runtime dependencies: all `make demo` needs.
$(STAMP): pyproject.toml
	$(VENV_WITH_TORCH)
	$(BIN)/python -m pip install -qq -e .
	touch $(STAMP)

# The same plus the test tools, dp-accounting and Ray (the dev extra): what `make test` needs.
DEV_STAMP := $(VENV)/.dev-stamp
$(DEV_STAMP): pyproject.toml
	$(VENV_WITH_TORCH)
	$(BIN)/python -m pip install -qq -e ".[dev]"
	touch $(STAMP) $(DEV_STAMP)

demo: $(STAMP)
	$(BIN)/python -m secure_fcit demo --config configs/demo.toml

test: $(DEV_STAMP)
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist worksteal --durations=15

lint: $(DEV_STAMP)
	$(BIN)/ruff check secure_fcit tests benchmarks

validity: $(STAMP)
	$(BIN)/python benchmarks/validity.py

clean-venv:
	rm -rf $(VENV)
