"""What the commands share: one parser style, one device resolution, the same teacher flags everywhere
(old spellings hidden but working), atomic writes that follow the umask, and the commands run from the
repository root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dcd_ext import cli
from dcd_ext.files import write_atomically, write_text_atomically

COMMANDS = ("evaluate", "train_teacher", "index", "search", "speed")
REPO = Path(__file__).resolve().parent.parent


def parser_of(command: str):
    module = __import__(f"dcd_ext.{command}", fromlist=["build_parser"])
    return module.build_parser()


def train_parser():
    from dcd_ext.train.params import build_parser
    return build_parser()


REQUIRED = {"train": [], "evaluate": ["--data", "d"], "search": ["--index", "i"],
            "train_teacher": ["--data", "d", "--teacher", "t", "--out", "o"], "index": ["--student", "s", "--out", "o"],
            "speed": []}


@pytest.mark.parametrize("command", ["train", "evaluate", "search", "train_teacher"])
def test_teacher_flags_mean_the_same_everywhere(command):
    parser = train_parser() if command == "train" else parser_of(command)
    text = " ".join(parser.format_help().split())
    assert "--teacher-tokenizer" in text and "--teacher-kind" in text
    assert "a folder's config.json says (model_type vilt or blip)" in text
    assert "--tokenizer " not in text  # the old spelling is accepted but not shown
    args = parser.parse_args(REQUIRED[command] + ["--tokenizer", "tok"])
    assert args.teacher_tokenizer == "tok" and args.teacher_kind == "auto"


def test_old_spellings_of_train_teacher_flags_still_work():
    args = parser_of("train_teacher").parse_args(["--data", "d.csv", "--teacher", "t", "--out", "o",
                                                  "--image-root", "imgs", "--bf16", "--tokenizer", "tok"])
    assert (args.images, args.precision, args.teacher_tokenizer) == ("imgs", "bf16", "tok")
    text = parser_of("train_teacher").format_help()
    assert "--images" in text and "--precision" in text and "--image-root" not in text and "--bf16" not in text


@pytest.mark.parametrize("command", COMMANDS)
def test_no_prefix_abbreviations(command, capsys):
    parser = parser_of(command)
    flag = next(a for action in parser._actions for a in action.option_strings if len(a) > 8)
    with pytest.raises(SystemExit):
        parser.parse_args(REQUIRED[command] + [flag[:-2], "1"])
    assert f"unrecognized arguments: {flag[:-2]} 1" in capsys.readouterr().err


def test_epoch_is_not_epochs(capsys):
    with pytest.raises(SystemExit):
        train_parser().parse_args(["--epoch", "3"])
    assert "unrecognized arguments: --epoch 3" in capsys.readouterr().err


def test_device_resolution_is_one_function():
    assert cli.resolve_device("cpu") == torch.device("cpu")
    assert cli.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device: not a device name"):
        cli.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            cli.resolve_device("cuda")


def test_teacher_kind_detection(tmp_path):
    folder = tmp_path / "vilt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    ckpt = tmp_path / "meter.ckpt"
    ckpt.write_bytes(b"x")
    assert cli.teacher_kind(str(folder)) == "vilt"
    for model_type in ("vilt", "blip"):
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
        assert cli.teacher_kind(str(folder)) == model_type
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ValueError, match="model_type 'clip'"):
        cli.teacher_kind(str(folder))
    assert cli.teacher_kind(str(ckpt)) == "meter"
    assert cli.teacher_kind(str(ckpt), "vilt") == "vilt"
    with pytest.raises(FileNotFoundError, match="teacher: not found"):
        cli.teacher_kind(str(tmp_path / "missing"))


def test_atomic_writes_follow_the_umask_and_leave_nothing_behind(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text_atomically(str(tmp_path / "a.json"), "{}")
        assert os.stat(path).st_mode & 0o777 == 0o644
        os.umask(0o077)
        write_text_atomically(str(tmp_path / "b.json"), "{}")
        assert os.stat(tmp_path / "b.json").st_mode & 0o777 == 0o600
    finally:
        os.umask(old)

    def fail(temp):
        Path(temp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(str(tmp_path / "a.json"), fail)
    assert (tmp_path / "a.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def run_in_repo_root(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not (REPO / "setup.py").exists(), reason="needs the repository checkout")
def test_commands_run_from_the_repository_root():
    """The root's ./dcd_ext shadows the installed package; the compiled library is still found."""
    done = run_in_repo_root("-m", "dcd_ext.info", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["ops_loaded"] is True
    assert Path(info["location"]).resolve() == (REPO / "dcd_ext").resolve()
    assert Path(info["compiled_library"]).name.startswith("_C")
    done = run_in_repo_root("-c", "import torch, dcd_ext.ops as ops; q = torch.eye(3); "
                                  "print(ops.similarity_topk(q, q, 1)[1].flatten().tolist())")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 2]"
    done = run_in_repo_root("-m", "dcd_ext.train", "--help")
    assert done.returncode == 0 and "--teacher-tokenizer" in done.stdout
