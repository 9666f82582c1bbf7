# mulo: `make test` runs the test suite, `make demo` the quickstart. Both create .venv and install everything first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 3
export PYTHONUNBUFFERED := 1

.PHONY: test demo install data clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

data: $(STAMP)
	bash scripts/ensure_data.sh $(BIN)/python

test: install data
	WANDB_MODE=$${WANDB_MODE:-disabled} $(BIN)/python -m pytest tests

demo: install data
	$(BIN)/python src/main.py meta-train --config config/meta_train/quickstart.py --auto_resume true

clean:
	rm -rf $(VENV) .pytest_cache
