"""Package metadata, lazy CUDA, and the stale-build error."""

import subprocess
import sys

import pytest

import dcd_ext


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                          timeout=300).stdout


def test_importing_the_package_and_ops_does_not_initialise_cuda():
    out = run_python("import torch, dcd_ext, dcd_ext.ops, dcd_ext.reference; print(torch.cuda.is_initialized())")
    assert out.strip() == "False"


def test_info_command_reports_the_build():
    out = subprocess.run([sys.executable, "-m", "dcd_ext.info", "--json"], check=True, capture_output=True,
                         text=True, timeout=300).stdout
    import json

    import torch

    info = json.loads(out)
    assert info["dcd_ext"] == dcd_ext.__version__
    assert info["built_against_torch"] == torch.__version__
    assert info["ops_loaded"] is True
    assert "bfloat16: " in info["cpu_gemm"] and "; features: " in info["cpu_gemm"] and "float32: " in info["cpu_gemm"]
    assert isinstance(info["cuda_kernels"], bool)
    assert info["cuda_status"].startswith("available" if info["cuda_devices"] else "unavailable: ")
    if info["cuda_kernels"]:
        assert info["cuda_archs"]


def test_extension_built_for_another_torch_fails_with_rebuild_hint(monkeypatch):
    from dcd_ext import _loader

    monkeypatch.setattr(_loader.build_info(), "TORCH_VERSION", "0.0.1")
    with pytest.raises(ImportError, match="built against torch 0.0.1.*pip install --no-build-isolation"):
        _loader.load_extension()
