"""``python -m dcd_ext.info``: what this installation of dcd_ext is and what it was built with."""

from __future__ import annotations

import json
import platform
import sys
from importlib import import_module
from typing import Optional

import torch

import dcd_ext
from dcd_ext._loader import compiled_library
from dcd_ext.cuda_status import cuda_status


def cpuinfo_field(name: str) -> str:
    """The first processor's ``name`` line of /proc/cpuinfo ("model name", "vendor_id", "flags"), or "" where
    there is no such file or line."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_model() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def collect() -> dict:
    info = {
        "dcd_ext": dcd_ext.__version__,
        "location": dcd_ext.__path__[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
    }
    try:
        found = compiled_library()
        built = found.info
        info.update(compiled_library=str(found.library), library_origin=found.origin,
                    built_against_torch=built.TORCH_VERSION, cuda_kernels=built.WITH_CUDA,
                    cuda_archs=built.CUDA_ARCHS or None, built_cuda_version=built.CUDA_VERSION)
    except ImportError as exc:
        info.update(built_against_torch=None, cuda_kernels=False, error=str(exc))
    try:
        import_module("dcd_ext.ops")
        info["ops_loaded"] = True
        info["cpu_gemm"] = torch.ops.dcd_ext.cpu_gemm_report()
    except ImportError as exc:
        info.update(ops_loaded=False, error=str(exc))
    # Asking for devices is cheap and creates no CUDA context; torch's driver warnings become cuda_status.
    status = cuda_status()
    info["cuda_devices"] = status.device_count
    info["cuda_status"] = status.summary
    return info


def build_parser():
    from dcd_ext.cli import make_parser

    parser = make_parser("python -m dcd_ext.info", __doc__.strip())
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0 if info.get("ops_loaded") else 1


if __name__ == "__main__":
    sys.exit(main())
