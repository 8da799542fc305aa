"""A host whose NVIDIA driver is older than torch's CUDA (issue 21): torch's long driver warnings become one
line of our own, printed only where a command resolves ``--device auto``, after the user's arguments and files
are checked. The old driver is a stub ``libcuda.so.1`` whose ``cuDriverGetVersion`` reports a CUDA one major
version below torch's, and a ``libnvidia-ml.so.1`` whose ``nvmlInit`` fails (a driver without a GPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from dcd_ext import cuda_status as cs

TORCH_CUDA_MAJOR = int(torch.version.cuda.split(".")[0]) if torch.version.cuda else 0
OLD_DRIVER_CODE = (TORCH_CUDA_MAJOR - 1) * 1000 + 20  # 12020 (CUDA 12.2) under a CUDA 13 torch
OLD_DRIVER_TEXT = f"{TORCH_CUDA_MAJOR - 1}.2"
STUBS = {
    "libcuda.so.1": f"int cuDriverGetVersion(int *version) {{ *version = {OLD_DRIVER_CODE}; return 0; }}\n",
    "libnvidia-ml.so.1": "int nvmlInit(void) { return 9; }\nint nvmlInit_v2(void) { return 9; }\n",  # DRIVER_NOT_LOADED
}
REASON = f"the NVIDIA driver is older than this torch's CUDA {torch.version.cuda} (found {OLD_DRIVER_TEXT})"
TORCH_WARNING = (f"UserWarning: CUDA initialization: The NVIDIA driver on your system is too old (found version "
                 f"{OLD_DRIVER_CODE})")


def run_python(args: list[str], env: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=str(cwd), capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def old_driver_env(tmp_path_factory):
    """The environment of a process that finds the stub driver libraries first."""
    if not torch.version.cuda:
        pytest.skip("this torch is built without CUDA: it never asks a driver")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the stub driver libraries")
    folder = tmp_path_factory.mktemp("old_driver")
    for name, source in STUBS.items():
        (folder / f"{name}.c").write_text(source)
        subprocess.run([compiler, "-shared", "-fPIC", "-o", str(folder / name), str(folder / f"{name}.c")], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DCD_TRACEBACK")}
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(folder)] + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    done = run_python(["-c", "import torch; print(torch.cuda.is_available())"], env, folder)
    if TORCH_WARNING not in done.stderr:  # the stub is what this test is about: show that torch warns with it
        pytest.skip(f"torch did not take the stub driver (stdout {done.stdout.strip()!r}, stderr {done.stderr[:300]!r})")
    return env


def test_reason_of_torchs_warnings():
    old = ("CUDA initialization: The NVIDIA driver on your system is too old (found version 12020). Please update "
           "your GPU driver ... (Triggered internally at c10/cuda/CUDAFunctions.cpp:119.)")
    assert cs.reason_from_warnings(["Can't initialize NVML", old]) == \
        f"the NVIDIA driver is older than this torch's CUDA {torch.version.cuda} (found 12.2)"
    assert cs.reason_from_warnings(["Can't initialize NVML"]) == "can't initialize NVML"
    assert cs.reason_from_warnings(["CUDA initialization: Unexpected error from cudaGetDeviceCount(). Did you run "
                                    "some cuda functions before calling NumCudaDevices() that might have already set "
                                    "an error? Error 804: forward compatibility was attempted on non supported HW "
                                    "(Triggered internally at x.cpp:1.)"]) == \
        "unexpected error from cudaGetDeviceCount()"
    assert cs.reason_from_warnings([]) is None


def test_note_only_where_a_driver_answered(monkeypatch, capsys):
    for status, note in ((cs.CudaStatus(False, 0), ""), (cs.CudaStatus(True, 2), ""),
                         (cs.CudaStatus(False, 0, "why"), "note: CUDA unavailable: why; running on the CPU\n")):
        monkeypatch.setattr(cs, "cuda_status", lambda: status)
        cs.note_cuda_unavailable.cache_clear()
        cs.note_cuda_unavailable()
        cs.note_cuda_unavailable()
        assert capsys.readouterr().err == note
    cs.note_cuda_unavailable.cache_clear()
    assert cs.CudaStatus(True, 2).summary == "available, 2 devices"
    assert cs.CudaStatus(False, 0, "why").summary == "unavailable: why"


def test_user_error_is_one_line_on_a_host_with_an_old_driver(old_driver_env, tmp_path):
    missing = str(tmp_path / "missing.csv")
    for argv in (["-m", "dcd_ext.train", "--data", missing, "--loss", "contrastive", "--out", str(tmp_path / "run")],
                 ["-m", "dcd_ext.evaluate", "--teacher", str(tmp_path), "--data", missing]):
        done = run_python(argv, old_driver_env, tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr == f"error: pairs file not found: {missing}\n", argv
        assert done.stdout == ""


def test_device_auto_says_why_once_and_cuda_names_the_reason(old_driver_env, tmp_path):
    code = ("from dcd_ext.cli import resolve_device\n"
            "print(resolve_device('auto'), resolve_device('auto'))\n"
            "try:\n    resolve_device('cuda')\nexcept ValueError as e:\n    print(e)\n")
    done = run_python(["-c", code], old_driver_env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"note: CUDA unavailable: {REASON}; running on the CPU\n"
    assert done.stdout.splitlines() == ["cpu cpu", f"device: cuda was asked for but CUDA is not available: {REASON}"]


def test_info_shows_the_reason_as_a_field(old_driver_env, tmp_path):
    done = run_python(["-m", "dcd_ext.info", "--json"], old_driver_env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "NVML" not in done.stderr
    info = json.loads(done.stdout)
    assert info["cuda_status"] == f"unavailable: {REASON}"
    assert info["cuda_devices"] == 0
