# fastvae: `make demo` trains the default VAE on the bundled digits; `make test` builds and runs every check (CI);
# `make test-fast` is the inner loop: the linter and the tests not marked slow.
# A virtualenv in .venv sees the system's packages: an installed torch (e.g. a CUDA build) is used as it is,
# otherwise torch==2.13.0 is installed (a bare `torch` would pull several GB of CUDA wheels).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
MAX_JOBS ?= 2
NVCC ?= nvcc
CUDA_ARCHS ?= 80 90
DEPS := "setuptools>=70" wheel pybind11 ninja numpy pytest hypothesis scipy matplotlib tqdm scikit-learn POT geomloss \
	pykeops ruff

.PHONY: all env build lint wheel-check test test-fast cuda-check data demo bench clean

all: test

$(BIN)/.ready:
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q $(DEPS)
	touch $@

env: $(BIN)/.ready

# The extension is built once and rebuilt only when a file it is built from changed (a stamp file: `make demo` after
# `make test` does not rebuild). `make clean` forgets it. The ninja of the virtualenv (DEPS) compiles, into build/obj,
# only what changed since the last build (setup.py's BuildExt), so `wheel-check` after `build` only links.
BUILD_INPUTS := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)
# (The distribution was called fastvae before it became torch-fastvae: an old editable install of it goes first.)
$(BIN)/.built: $(BIN)/.ready $(BUILD_INPUTS)
	$(BIN)/python -m pip uninstall -q -y fastvae 2>/dev/null || true
	MAX_JOBS=$(MAX_JOBS) $(BIN)/python -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(BIN)/.built

# The wheel as `pip wheel .` builds it (reusing build/obj: only the link runs after `build`), its contents and
# metadata, and fastvae imported from it in a virtualenv that holds only torch and numpy, outside the checkout:
# scripts/wheel_smoke.sh.
wheel-check: build
	BUILD_PY=$(BIN)/python BASE_PY=$(PYTHON) MAX_JOBS=$(MAX_JOBS) bash scripts/wheel_smoke.sh

# Every CUDA kernel file must compile for sm_80 and sm_90 (the kernels are torch-free: CUDA runtime + CCCL only), with
# no implicit narrowing conversion in its host code (-Wconversion as an error; the device code is checked so by the
# g++ builds against tests/cudasim in tests/cuda_on_cpu/test_cuda_kernels_on_cpu.py), and
# the CUDA backends of the binding must pass a syntax check against torch's headers (a CPU torch ships the c10/cuda
# headers but not their generated macro file, which build/stub provides). The file lists are setup.py's.
SETUP_LIST = $(BIN)/python -c 'import setup; print(" ".join(setup.$(1)))'
cuda-check: $(BIN)/.ready
	@if command -v $(NVCC) >/dev/null 2>&1; then \
	  for f in $$($(call SETUP_LIST,CUDA_KERNELS)); do for a in $(CUDA_ARCHS); do \
	    echo "nvcc sm_$$a $$f"; \
	    $(NVCC) -std=c++17 -O3 -Icsrc/include -Icsrc -gencode arch=compute_$$a,code=sm_$$a \
	      -Xcompiler=-Wconversion,-Werror=conversion -c $$f -o /dev/null || exit 1; \
	  done; done; \
	  mkdir -p build/stub/c10/cuda/impl; \
	  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > build/stub/c10/cuda/impl/cuda_cmake_macros.h; \
	  inc="$$($(BIN)/python -c 'from torch.utils.cpp_extension import include_paths as p; print(" ".join("-I"+i for i in p()))')"; \
	  cuda_inc="$$($(NVCC) --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#[$$] INCLUDES="\(.*\)".*/\1/p')"; \
	  for f in $$($(call SETUP_LIST,CUDA_BINDING)); do echo "syntax check $$f"; \
	    $(CXX) -std=c++17 -fsyntax-only -DFASTVAE_WITH_CUDA -Icsrc -Icsrc/include $$inc -Ibuild/stub \
	      $$cuda_inc $$($(BIN)/python -m pybind11 --includes) $$f || exit 1; \
	  done; \
	else echo "cuda-check: nvcc not found, CUDA sources not compiled"; fi

# Fashion-MNIST for `--data fashion` and its tests: Debian's dataset-fashion-mnist (IDX files under
# /usr/share/datasets), installed when missing and this is root on a Debian system; otherwise a note says how.
FASHION_PKG := dataset-fashion-mnist
data:
	@dpkg -s $(FASHION_PKG) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $(FASHION_PKG) (Fashion-MNIST, 30 MB)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(FASHION_PKG) >/dev/null; } \
	      || { echo "data: could not install $(FASHION_PKG)"; exit 1; }; \
	  else echo "data: $(FASHION_PKG) is not installed (apt-get install $(FASHION_PKG)); its tests are skipped"; fi; }

# ruff, configured in pyproject.toml ([tool.ruff]); installed here too for a .venv made before it joined DEPS.
lint: $(BIN)/.ready
	@$(BIN)/python -m ruff --version >/dev/null 2>&1 || $(BIN)/python -m pip install -q ruff
	$(BIN)/python -m ruff check fastvae tests scripts setup.py

# CI: every test (the slow ones too), the 25 slowest listed at the end.
test: lint build cuda-check data wheel-check
	$(BIN)/python -m pytest -q --durations=25 tests

# The inner loop: no CUDA compile, no wheel, no data install, and the tests marked @pytest.mark.slow left out (the CUDA
# sources and their execution model run on the CPU, torch.compile, DDP, the benchmark suite's quick run, a few tests of
# child processes): about 80 s of pytest on the 2-core machine, against 9 minutes for all.
test-fast: lint build
	$(BIN)/python -m pytest -q -m "not slow" --durations=10 tests

# The default VAE on the bundled 8x8 digits (no download): ~1 minute on 2 CPU cores; a rerun replaces out/digits
# (--overwrite: the demo's own folder). One torch thread: the model
# is small, and a second thread only waits on the first (or, on a busy machine, on the scheduler).
demo: build
	$(BIN)/fastvae train --out out/digits --overwrite --threads 1
	@echo "pictures: out/digits/{samples,reconstructions,loss_curve}.png  metrics: out/digits/metrics.{csv,json}"

bench: build
	$(BIN)/python -m fastvae.bench --out bench/results/cpu-$$(date -u +%Y%m%d)

clean:
	rm -rf build *.egg-info fastvae/_C*.so $(VENV)
