"""Benchmark configuration: full sizes when timing, smoke sizes under --benchmark-disable (CI)."""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--bench-sizes", choices=("auto", "smoke", "full"), default="auto",
                     help="problem sizes: full when benchmarks are timed, smoke under --benchmark-disable (auto)")


@pytest.fixture(scope="session")
def full_sizes(request) -> bool:
    choice = request.config.getoption("--bench-sizes")
    if choice == "auto":
        return not request.config.getoption("benchmark_disable")
    return choice == "full"


@pytest.fixture(autouse=True)
def _record_machine(benchmark):
    from dcd_ext.info import cpu_model

    benchmark.extra_info.update(torch=torch.__version__, threads=torch.get_num_threads(), cpu=cpu_model())
