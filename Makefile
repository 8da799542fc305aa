# The two newcomer commands (see README.md):
#   make demo   set up, then run the built-in DCD demo (python -m dcd_ext.train)
#   make test   set up, then run every test: pytest, the C++ header tests (ctest), and the promised
#               commands from the repository root (the benchmark suite at smoke sizes)
# `make setup` alone installs the package; `make bench` times the benchmark suite.

PYTHON ?= python3
PIP := $(PYTHON) -m pip
# the torch to install where none is importable (the CPU machines' local CUDA 13.0 build)
TORCH_SPEC ?= torch==2.14.1
BUILD_DIR ?= build/cmake
PYTEST_ARGS ?=

# nvcc lives in /usr/local/cuda; /usr/local/bin/nvcc is a wrapper that misleads torch's detection
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME ?= /usr/local/cuda
endif
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0+PTX
export MAX_JOBS ?= 2
# test-cuda-archs: the architectures every .cu file must compile for (tensor-core and SIMT paths alike)
CUDA_TEST_ARCHS ?= 7.0 7.5 8.0 9.0
NVCC ?= $(CUDA_HOME)/bin/nvcc
NVCC_TEST_FLAGS := -std=c++17 -O3 --expt-relaxed-constexpr -Icsrc -Icsrc/include -D__CUDA_NO_HALF_OPERATORS__ \
	-D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__

.PHONY: setup demo test browser test-python test-cpp test-cuda-archs test-root-commands bench clean

setup:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install "setuptools>=69" wheel ninja==1.13.2
	$(PIP) install --no-build-isolation ".[test]"
	$(PYTHON) -m dcd_ext.info

demo: setup
	$(PYTHON) -m dcd_ext.train

test: setup browser test-cuda-archs test-cpp test-python test-root-commands

# the service's page test drives Debian's chromium headless; installed here as root with apt where it can
# be, and never a failure: without it that one test skips and says why
browser:
	@if command -v chromium >/dev/null 2>&1; then echo "browser: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "browser: installing Debian's chromium (apt-get) for the web page test"; \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >/dev/null 2>&1 \
			|| echo "browser: apt-get could not install chromium; the web page test will skip"; \
	else echo "browser: no chromium, and not root with apt-get; the web page test will skip"; fi

# pytest runs as a script from the repo root, so it imports the installed package, not ./dcd_ext
test-python:
	$(PYTHON) -m pytest --version >/dev/null
	cd python_tests && $(PYTHON) -m pytest -q -p no:cacheprovider --rootdir=.. $(PYTEST_ARGS) .

test-cpp:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build $(BUILD_DIR) -j $(MAX_JOBS)
	ctest --test-dir $(BUILD_DIR) --output-on-failure

# The .cu files are torch-free, so nvcc alone compiles them for each architecture in seconds. An
# architecture this nvcc cannot target (CUDA 13 dropped sm_70) is skipped with a message.
test-cuda-archs:
	@if [ ! -x "$(NVCC)" ]; then echo "test-cuda-archs: skipped, no nvcc at '$(NVCC)'"; exit 0; fi; \
	known="$$($(NVCC) --list-gpu-arch)"; out="$$(mktemp -d)"; trap 'rm -rf "$$out"' EXIT; \
	for arch in $(CUDA_TEST_ARCHS); do \
		sm="$$(echo $$arch | tr -d .)"; \
		if ! echo "$$known" | grep -qx "compute_$$sm"; then \
			echo "test-cuda-archs: sm_$$sm skipped, $(NVCC) cannot target it"; continue; \
		fi; \
		for f in csrc/cuda/*.cu; do \
			echo "test-cuda-archs: sm_$$sm $$f"; \
			$(NVCC) $(NVCC_TEST_FLAGS) -gencode arch=compute_$$sm,code=sm_$$sm -c $$f -o "$$out/$$(basename $$f .cu).o" || exit 1; \
		done; \
	done

# the promised commands exactly as a user types them in the repository root, where ./dcd_ext (the source
# tree, nothing compiled in it) comes first on sys.path; the benchmarks at smoke sizes
test-root-commands:
	$(PYTHON) -m dcd_ext.info
	$(PYTHON) -m dcd_ext.train --help >/dev/null
	$(PYTHON) -m pytest bench/ --benchmark-only --bench-sizes smoke -q -p no:cacheprovider

bench: setup
	$(PIP) install ".[bench]"
	$(PYTHON) -m pytest bench/ --benchmark-only -p no:cacheprovider \
		--benchmark-columns=min,median,max,rounds --benchmark-group-by=group --benchmark-json=bench-results.json

clean:
	rm -rf build dist *.egg-info dcd_ext/_C*.so dcd_ext/_build_info.py
