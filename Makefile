# mulo: `make test` runs the test suite, `make demo` the quickstart. Both create .venv and install everything first.
# On a machine with an NVIDIA GPU (nvidia-smi works) JAX's CUDA build of the pinned version is installed instead of
# the CPU one: cuda13 on a CUDA 13 driver, else cuda12 (scripts/cuda_extra.sh; CUDA=12|13 forces it); force either
# with `make install ACCEL=cuda` or `make install ACCEL=cpu`. `make install TF=0` leaves out
# TensorFlow, TFDS, seqio and tensorflow-text (~2.5 GB): Fashion-MNIST (IDX files) and Tiny Shakespeare still work;
# CIFAR-10, ImageNet and LM1B, and `make test`, need the full install.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ACCEL ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
TF ?= 1
TF_PACKAGES := ^(tensorflow|tensorflow-datasets|seqio|tensorflow-text)==
JAX_VERSION := $(shell sed -n 's/^jax\[cpu\]==\([0-9.]*\).*/\1/p' requirements.txt)
export TF_CPP_MIN_LOG_LEVEL ?= 3
export PYTHONUNBUFFERED := 1

.PHONY: test demo install data clean
.SECONDARY:  # keep the .accel-* marker

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml $(VENV)/.accel-$(ACCEL)-tf$(TF)
	if [ "$(ACCEL)" = cuda ]; then bash scripts/cuda_extra.sh >/dev/null; fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if [ "$(TF)" = 0 ]; then grep -v -E '$(TF_PACKAGES)' requirements.txt > $(VENV)/requirements-notf.txt && \
	  $(BIN)/python -m pip install -q -r $(VENV)/requirements-notf.txt; \
	else $(BIN)/python -m pip install -q -r requirements.txt; fi
	if [ "$(ACCEL)" = cuda ]; then $(BIN)/python -m pip install -q "jax[$$(bash scripts/cuda_extra.sh)]==$(JAX_VERSION)"; fi
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

# which JAX build the venv has, with or without TensorFlow: changing ACCEL or TF reinstalls
$(VENV)/.accel-%:
	case "$*" in cpu-tf0|cpu-tf1|cuda-tf0|cuda-tf1) ;; *) echo "error: ACCEL must be cpu or cuda and TF 0 or 1" >&2; exit 2;; esac
	mkdir -p $(VENV)
	rm -f $(VENV)/.accel-*
	touch $@

# `make data` fetches Fashion-MNIST; `make data DATA="fashion_mnist lm1b"` also the LM1B tasks' T5 vocabulary
DATA ?= fashion_mnist
data: $(STAMP)
	bash scripts/ensure_data.sh $(BIN)/python $(DATA)

test: install data
	WANDB_MODE=$${WANDB_MODE:-disabled} $(BIN)/python -m pytest tests

demo: install data
	$(BIN)/python src/main.py meta-train --config config/meta_train/quickstart.py --auto_resume true

clean:
	rm -rf $(VENV) .pytest_cache
