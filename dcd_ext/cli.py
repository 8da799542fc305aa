"""What every ``python -m dcd_ext.<command>`` shares: the parser style, flag types, device resolution and
the teacher flags. Commands import this module; it imports no command and no training code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Optional, Sequence

import torch

from .cuda_status import cuda_available, cuda_status, note_cuda_unavailable
from .distributed import SINGLE, World
from .missing_package import MissingPackageError
from .teachers import TEACHER_KINDS


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it has a fixed one (mode-dependent defaults say so in their help)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A command's parser: defaults in --help, and no prefix abbreviations (``--epoch`` is not ``--epochs``)."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter,
                                   allow_abbrev=False)


def add_hidden_alias(parser, alias: str, dest: str, **kwargs) -> None:
    """An old spelling of a flag that still works but is not shown in --help."""
    parser.add_argument(alias, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0; got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive; got {text}")
    return value


def unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1]; got {text}")
    return value


def add_device_argument(parser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")


def resolve_device(spec: str, world: World = SINGLE) -> torch.device:
    """The device a ``--device`` value names. In a multi-process run each process takes its own GPU
    (cuda:LOCAL_RANK), so there ``cuda`` may not name one. ``auto`` on a host whose driver cannot run this
    torch's CUDA says why, once, on stderr (see :mod:`dcd_ext.cuda_status`). Commands call it after checking
    their arguments and files, so that a user's mistake is reported before anything asks for CUDA."""
    if spec == "auto":
        spec = "cuda" if cuda_available() else "cpu"
        if spec == "cpu":
            note_cuda_unavailable()
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"device: not a device name: {spec!r} (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not cuda_available():
        reason = cuda_status().reason
        raise ValueError(f"device: {spec} was asked for but CUDA is not available"
                         + (f": {reason}" if reason else ""))
    if device.type != "cuda" or not world.distributed:
        return device
    if device.index is not None:
        raise ValueError(f"device: {spec} names one GPU, but torchrun gives each process its own "
                         "(cuda:LOCAL_RANK); pass --device cuda")
    if world.local_rank >= cuda_status().device_count:
        raise ValueError(f"device: LOCAL_RANK {world.local_rank} but only {cuda_status().device_count} GPUs")
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


TEACHER_KIND_HELP = ("teacher type; auto: a folder's config.json says (model_type vilt or blip), otherwise "
                     "(a checkpoint file) METER")


def add_teacher_arguments(parser, required: bool = False, purpose: str = "teacher",
                          batch_size: bool = True) -> None:
    """--teacher, --teacher-kind, --teacher-tokenizer (old spelling --tokenizer) and --teacher-batch-size."""
    parser.add_argument("--teacher", required=required,
                        help=f"{purpose}: a local ViLT or BLIP Hugging Face folder, or a METER checkpoint file")
    parser.add_argument("--teacher-kind", choices=("auto",) + TEACHER_KINDS, default="auto", help=TEACHER_KIND_HELP)
    parser.add_argument("--teacher-tokenizer",
                        help="tokenizer folder (METER: a RoBERTa folder; its config.json, if any, sets the text "
                             "encoder's heads etc.; default: the folder of the teacher)")
    add_hidden_alias(parser, "--tokenizer", "teacher_tokenizer")
    if batch_size:
        parser.add_argument("--teacher-batch-size", type=positive_int, default=256,
                            help="pairs per teacher forward pass (scoring micro-batch)")


HF_TEACHER_TYPES = {"vilt": "vilt", "blip": "blip"}  # config.json model_type -> teacher kind
TEACHER_CONTENTS = ("a teacher is a ViLT or BLIP Hugging Face folder (config.json, model.safetensors or "
                    "pytorch_model.bin, tokenizer files, preprocessor_config.json) or a METER checkpoint (a .ckpt "
                    "file, or a folder holding one, with --teacher-tokenizer naming its RoBERTa tokenizer folder)")
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# zip (torch.save) and pickle protocol 2+ (older torch.save / Lightning) files
CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")


def hf_teacher_kind(config: str) -> str:
    """The teacher kind a Hugging Face folder's config.json names (no model_type: ViLT, as before)."""
    try:
        with open(config, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"teacher: cannot read {config}: {e}") from None
    model_type = doc.get("model_type") if isinstance(doc, dict) else None
    if model_type is None:
        return "vilt"
    if model_type not in HF_TEACHER_TYPES:
        raise ValueError(f"teacher: {config} has model_type {model_type!r}; a teacher folder is ViLT or BLIP "
                         f"({', '.join(HF_TEACHER_TYPES)}), or pass a METER checkpoint")
    return HF_TEACHER_TYPES[model_type]


def teacher_kind(path: str, kind: str = "auto") -> str:
    """auto: a Hugging Face folder is the kind its config.json's ``model_type`` names (vilt, blip); a
    checkpoint file or a folder holding one is METER. Anything else (an empty folder, a data table) is
    refused with what a teacher must contain."""
    if kind != "auto":
        return kind
    if not os.path.exists(path):
        raise FileNotFoundError(f"teacher: not found: {path}")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")):
            return hf_teacher_kind(os.path.join(path, "config.json"))
        names = sorted(os.listdir(path))
        if any(n.endswith(".ckpt") for n in names):
            return "meter"
        held = "it is empty" if not names else "it holds " + ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        raise ValueError(f"teacher: {path} is a folder with neither config.json nor a .ckpt file ({held}); "
                         + TEACHER_CONTENTS)
    if path.lower().endswith(CHECKPOINT_SUFFIXES):
        return "meter"
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(CHECKPOINT_MAGIC):
        return "meter"
    what = f"a {os.path.splitext(path)[1]} file" if os.path.splitext(path)[1] else "a file"
    raise ValueError(f"teacher: {path} is {what} that is not a checkpoint (neither a zip nor a pickle); "
                     + TEACHER_CONTENTS + "; pass --teacher-kind to force one")


def check_teacher_argument(args: argparse.Namespace) -> None:
    """A missing or unrecognisable --teacher fails as loading it would, but before the device is resolved."""
    if getattr(args, "teacher", None):
        if not os.path.exists(args.teacher):
            raise FileNotFoundError(f"teacher: not found: {args.teacher}")
        teacher_kind(args.teacher, args.teacher_kind)


def check_folder_exists(path: str, what: str = "student") -> None:
    """A model folder argument that names nothing fails before the device is resolved."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what}: no such folder: {path}")


def load_teacher_from_args(args: argparse.Namespace, device: torch.device, **options):
    """The teacher the --teacher flags describe, on ``device``."""
    from .teachers import load_teacher

    if "micro_batch_size" not in options and getattr(args, "teacher_batch_size", None):
        options["micro_batch_size"] = args.teacher_batch_size
    return load_teacher(teacher_kind(args.teacher, args.teacher_kind), args.teacher,
                        tokenizer=getattr(args, "teacher_tokenizer", None), device=device, **options)


def add_precision_argument(parser, choices=("fp32", "bf16", "fp16"), what: str = "student forward") -> None:
    """--precision (old spelling --bf16 = --precision bf16)."""
    parser.add_argument("--precision", choices=choices, default="fp32",
                        help=f"{what} precision (autocast; weights stay float32)"
                             + ("; fp16 needs CUDA" if "fp16" in choices else ""))
    add_hidden_alias(parser, "--bf16", "precision", action="store_const", const="bf16")


# what a command reports as one line ``error: ...`` rather than a traceback: bad arguments, files that are
# missing or unreadable, a diverged loss, an optional package a folder needs. Anything else is a bug and keeps
# its traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError, MissingPackageError)
TRACEBACK_VARIABLE = "DCD_TRACEBACK"


def error_line(error: BaseException) -> str:
    """The one line that describes ``error``. A DataLoader worker's error arrives as "Caught X in DataLoader
    worker ...\nOriginal Traceback ..." whose last line is the original message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Traceback" in str(error):
        last = lines[-1]
        return last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].isidentifier() else last
    return " ".join(lines)


def run_command_line(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """The console entry of a command: runs ``main(argv)``; a user error (see :data:`USER_ERRORS`) is printed
    as one line ``error: <message>`` on stderr with exit status 2 (set DCD_TRACEBACK=1 for the traceback).
    ``main`` called from Python raises as usual."""
    try:
        return main(argv)
    except BrokenPipeError:  # the reader went away (``| head``): not an error of the command
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except USER_ERRORS as e:
        if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
            raise
        notes = " ".join(getattr(e, "__notes__", ()))
        print(f"error: {error_line(e)}" + (f" ({notes})" if notes else ""), file=sys.stderr)
        return 2
