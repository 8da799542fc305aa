"""What the commands share: one parser style, one device resolution, the same teacher flags everywhere
(old spellings hidden but working), atomic writes that follow the umask, and the commands run from the
repository root."""

from __future__ import annotations

import argparse
import json
import os
import re
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


# ---- docs and --help agree; every parser is make_parser's (issue "nothing silent", item 13) ----------------

def flags_table(markdown: str, heading: str) -> list[tuple[list[str], str]]:
    """(flags, default cell) of each row of the table under ``heading``."""
    section = markdown.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`--"):
            rows.append((re.findall(r"`(--[a-z0-9-]+)`", cells[0]), cells[1]))
    return rows


def literal(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def test_training_docs_flags_table_matches_the_parser():
    from dcd_ext.train.params import RUN_DEFAULTS
    parser = train_parser()
    by_flag = {opt: action for action in parser._actions for opt in action.option_strings}
    rows = flags_table((REPO / "docs" / "training.md").read_text(), "## Flags")
    documented = {flag for flags, _ in rows for flag in flags}
    shown = {opt for action in parser._actions if action.help != argparse.SUPPRESS and action.dest != "help"
             for opt in action.option_strings}
    assert shown - documented == set(), "flags missing from the docs/training.md table"
    assert documented - shown == set(), "documented flags the parser does not have"
    checked = 0
    for flags, cell in rows:
        defaults = re.split(r"\s*[,/]\s*", cell) if len(flags) > 1 else [cell]
        if len(defaults) != len(flags):
            continue
        for flag, doc in zip(flags, defaults):
            action = by_flag[flag]
            actual = RUN_DEFAULTS.get(action.dest, action.default)
            if actual in (None, False) or doc in ("", "auto") and actual == "auto":
                continue
            assert literal(doc) == literal(str(actual)), f"{flag}: docs say {doc!r}, --help says {actual!r}"
            checked += 1
    assert checked >= 30


def test_every_parser_is_made_by_make_parser():
    import ast
    package = REPO / "dcd_ext"
    offenders = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == \
                    "ArgumentParser" and path.name != "cli.py":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []
    for command in COMMANDS + ("info",):
        assert parser_of(command).allow_abbrev is False, command
    assert train_parser().allow_abbrev is False


def test_teacher_pointing_at_an_empty_folder_or_a_table_says_what_a_teacher_is(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"teacher: .*empty is a folder with neither config.json nor a \.ckpt file "
                                         r"\(it is empty\); a teacher is a ViLT or BLIP Hugging Face folder"):
        cli.teacher_kind(str(empty))
    table = tmp_path / "pairs.csv"
    table.write_text("image,caption\na.png,a cat\n")
    with pytest.raises(ValueError, match=r"pairs\.csv is a \.csv file that is not a checkpoint.*METER checkpoint"):
        cli.teacher_kind(str(table))
    (empty / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="it holds notes.txt"):
        cli.teacher_kind(str(empty))
    (empty / "meter.ckpt").write_bytes(b"PK\x03\x04")
    assert cli.teacher_kind(str(empty)) == "meter"
    pickled = tmp_path / "weights"
    torch.save({"w": torch.zeros(1)}, pickled)
    assert cli.teacher_kind(str(pickled)) == "meter"


# ---- user errors are one line; Python callers still get the exception (item 7) ---------------------------

def run_command(*argv: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


def test_user_errors_print_one_line_and_exit_2(tmp_path):
    missing = str(tmp_path / "missing.csv")
    done = run_command("dcd_ext.evaluate", "--teacher", str(tmp_path), "--data", missing)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: pairs file not found: {missing}"]
    assert done.stdout == ""
    done = run_command("dcd_ext.search", "--index", str(tmp_path / "x.idx"), "--text", "")
    assert done.returncode == 2 and done.stderr == "error: queries: --text number 1 is empty\n"
    done = run_command("dcd_ext.evaluate", "--teacher", str(tmp_path), "--data", missing, DCD_TRACEBACK="1")
    assert done.returncode == 1 and "Traceback" in done.stderr and "FileNotFoundError" in done.stderr
    from dcd_ext.evaluate import main as evaluate_main
    with pytest.raises(FileNotFoundError, match="pairs file not found"):
        evaluate_main(["--teacher", str(tmp_path), "--data", missing])


def test_error_line_of_a_data_loader_worker_error():
    wrapped = OSError("Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                      '  File "x.py", line 1, in f\nOSError: pairs:train, pairs.csv line 4: cannot read image file a.png')
    assert cli.error_line(wrapped) == "pairs:train, pairs.csv line 4: cannot read image file a.png"
    assert cli.error_line(ValueError("a\nb")) == "a b"
