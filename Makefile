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
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export MAX_JOBS ?= 2

.PHONY: setup demo test test-python test-cpp test-root-commands bench clean

setup:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install "setuptools>=69" wheel ninja==1.13.2
	$(PIP) install --no-build-isolation ".[test]"
	$(PYTHON) -m dcd_ext.info

demo: setup
	$(PYTHON) -m dcd_ext.train

test: setup test-cpp test-python test-root-commands

# pytest runs as a script from the repo root, so it imports the installed package, not ./dcd_ext
test-python:
	$(PYTHON) -m pytest --version >/dev/null
	cd python_tests && $(PYTHON) -m pytest -q -p no:cacheprovider --rootdir=.. $(PYTEST_ARGS) .

test-cpp:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build $(BUILD_DIR) -j $(MAX_JOBS)
	ctest --test-dir $(BUILD_DIR) --output-on-failure

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
