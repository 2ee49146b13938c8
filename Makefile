# Two commands for a fresh machine: `make demo` and `make test`. Every target is idempotent:
# each install step leaves a stamp in .venv/.stamps and reruns only when its inputs change.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMPS := $(VENV)/.stamps
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
CSRC := $(shell find deta/layers/csrc -type f 2>/dev/null)

.PHONY: setup test test-avx2 lint format demo clean collect-env cuda-build-check

setup: $(STAMPS)/deta

$(STAMPS)/venv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip<26"
	mkdir -p $(STAMPS) && touch $@

$(STAMPS)/torch: $(STAMPS)/venv
	$(BIN)/pip install $(TORCH_PINS)
	touch $@

$(STAMPS)/detectron2: $(STAMPS)/torch dev/install_detectron2.py
	$(BIN)/python dev/install_detectron2.py
	touch $@

$(STAMPS)/deps: $(STAMPS)/detectron2 dev/requirements.txt
	$(BIN)/pip install -r dev/requirements.txt
	touch $@

# --no-build-isolation: setup.py compiles deta._C against the torch installed above.
$(STAMPS)/deta: $(STAMPS)/deps setup.py $(CSRC)
	$(BIN)/pip install --no-build-isolation --no-deps -e .
	touch $@

test: setup
	$(BIN)/python -m pytest tests

# The parity, fast-path and kernel tests again with oneDNN, ATen and MKL capped at AVX2: on an
# AVX-512/AMX machine they then run as on an AVX2-only CPU (no oneDNN bf16, no AMX). MKL too:
# torch's fp32 matmul/addmm goes to MKL's sgemm, which the other two variables do not reach.
CPU_CLASS_TESTS := tests/modeling/test_golden_parity.py tests/modeling/test_fast_cpu_inference.py \
	tests/modeling/test_resnet_fast_cpu.py tests/modeling/test_deta_e2e.py \
	tests/layers/test_ms_deform_attn.py tests/modeling/test_backbone_train_dtype.py
test-avx2: setup
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
		$(BIN)/python -m pytest $(CPU_CLASS_TESTS)

lint: $(STAMPS)/deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMPS)/deps
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

collect-env: setup
	$(BIN)/python -m deta.utils.collect_env

demo: setup
	$(BIN)/python tools/run_demo.py

# Compile (not run) the CUDA kernels on a machine without a GPU; needs the toolkit root in CUDA_HOME.
cuda-build-check: setup
	FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$${TORCH_CUDA_ARCH_LIST:-8.0;9.0}" \
	CUDA_HOME="$${CUDA_HOME:-/usr/local/cuda}" \
	$(BIN)/python setup.py build_ext --build-temp build/cuda-temp --build-lib build/cuda-lib

clean:
	rm -rf build *.egg-info deta/_C*.so
