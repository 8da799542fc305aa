"""The run folder: config.json, log.txt, metrics.jsonl, status.json, checkpoints/, results.json, report.md,
plots.

The folder is made only once a run has started well (its data, teacher and student loaded, a resumed
checkpoint checked): until :meth:`RunDir.create` the log is kept in memory, so a run that fails to start
leaves no half-made folder behind, and a refused resume writes nothing into the folder it names. A new run
never writes into a folder that holds another run (its checkpoints would be resumed as this run's): it is
refused, or with ``--overwrite`` deleted by :meth:`RunDir.create` (:func:`check_new_run_folder`).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import math
import os
import sys
import time
import traceback
from typing import Any, Optional

from ..existing_output import check_new_folder, remove_folder
from ..files import write_atomically, write_text_atomically

LOGGER_NAME = "dcd_ext.train"


def default_run_folder(mode: str) -> str:
    return os.path.join("runs", time.strftime("%Y%m%d-%H%M%S") + f"-{mode}")


def is_run_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def check_new_run_folder(path: Optional[str], overwrite: bool) -> bool:
    """Whether a new run in ``path`` replaces an earlier run (only with ``overwrite``); a folder holding a run
    is refused without it, one holding anything else always (see :mod:`dcd_ext.existing_output`)."""
    if path is None:
        return False
    return check_new_folder(path, overwrite, "run", is_run_folder, f"continue it with --resume {path}")


def jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


class RunDir:
    """``create=False``: the folder is made by :meth:`create` (log records wait in memory until then).
    ``replace``: :meth:`create` first deletes the earlier run the folder holds (see :func:`check_new_run_folder`)."""

    def __init__(self, path: str, create: bool = True, replace: bool = False):
        self.path = path
        self.replace = replace
        self.metrics_path = os.path.join(path, "metrics.jsonl")
        self._buffer: Optional[logging.handlers.MemoryHandler] = None
        self._file_handler: Optional[logging.FileHandler] = None
        self._writer = True
        self.created = False
        if create:
            self.create()

    def create(self) -> "RunDir":
        """Make the folder (it may exist: a resumed run) and start log.txt with the records logged so far."""
        if self.created:
            return self
        if self.replace:
            remove_folder(self.path)
        os.makedirs(self.path, exist_ok=True)
        self.created = True
        if self._buffer is not None:
            logger = logging.getLogger(LOGGER_NAME)
            self._file_handler = self._open_log_file()
            self._buffer.setTarget(self._file_handler)
            self._buffer.flush()
            logger.removeHandler(self._buffer)
            self._buffer.close()
            self._buffer = None
            logger.addHandler(self._file_handler)
        return self

    def file(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def checkpoint_dir(self, run: str) -> str:
        path = self.file("checkpoints", run)
        os.makedirs(path, exist_ok=True)
        return path

    def write_json(self, name: str, payload: Any) -> str:
        return write_text_atomically(self.file(name), json.dumps(jsonable(payload), indent=2) + "\n")

    def write_text(self, name: str, text: str) -> str:
        return write_text_atomically(self.file(name), text)

    def read_json(self, name: str) -> Optional[Any]:
        path = self.file(name)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)

    def set_status(self, status: str, **details: Any) -> None:
        """status.json: running, finished, interrupted or failed (with the error), and when."""
        if self.created and self._writer:
            self.write_json("status.json", {"status": status, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                            **details})

    def record_failure(self, error: BaseException) -> None:
        """The traceback goes to log.txt only (the console shows one line), and status.json says failed."""
        if not self.created or not self._writer:
            return
        if self._file_handler is not None:
            text = "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()
            record = logging.LogRecord(LOGGER_NAME, logging.ERROR, __file__, 0, f"run failed:\n{text}", None, None)
            self._file_handler.handle(record)
            self._file_handler.flush()
        self.set_status("failed", error=f"{type(error).__name__}: {error}")

    def log_metrics(self, row: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(jsonable(row)) + "\n")

    def read_metrics(self) -> list[dict]:
        if not os.path.isfile(self.metrics_path):
            return []
        with open(self.metrics_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate_metrics(self, run: str, after_step: int, validated: bool = True) -> None:
        """Drop rows of ``run`` logged after ``after_step`` (a resumed run logs those steps again); with
        ``validated`` False also the validation row at ``after_step`` (the epoch's validation runs again)."""
        def keep(r: dict) -> bool:
            if r.get("run") != run:
                return True
            step = r.get("step", 0)
            return step < after_step or step == after_step and (validated or r.get("split") != "val")
        rows = [r for r in self.read_metrics() if keep(r)]
        text = "".join(json.dumps(r) + "\n" for r in rows)

        def write(temp: str) -> None:
            with open(temp, "w") as f:
                f.write(text)
        write_atomically(self.metrics_path, write)

    def _open_log_file(self) -> logging.FileHandler:
        handler = logging.FileHandler(self.file("log.txt"))
        handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(message)s", "%Y-%m-%d %H:%M:%S"))
        return handler

    def setup_logging(self, quiet: bool = False, writer: bool = True) -> logging.Logger:
        """``writer``: this process writes log.txt (rank 0); the other ranks print warnings only. Before the
        folder exists the records are kept in memory and written to log.txt by :meth:`create`."""
        logger = logging.getLogger(LOGGER_NAME)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        self._writer = writer
        if not writer:
            console = logging.StreamHandler(sys.stderr)
            console.setLevel(logging.WARNING)
            logger.addHandler(console)
            return logger
        if self.created:
            self._file_handler = self._open_log_file()
            logger.addHandler(self._file_handler)
        else:
            self._buffer = logging.handlers.MemoryHandler(capacity=1_000_000, flushLevel=logging.CRITICAL + 1)
            logger.addHandler(self._buffer)
        if not quiet:
            console = logging.StreamHandler(sys.stderr)
            console.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(console)
        return logger


def write_config(run: RunDir, args, command: str, mode: str, **extra) -> None:
    """config.json of a new run; a resumed run keeps its own and adds the resume (its command and the settings
    it changed) to ``resumes``, so that a later resume continues with those."""
    if args.resume and run.read_json("config.json"):
        config = run.read_json("config.json")
        config["args"] = vars(args)
        config.setdefault("resumes", []).append({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command,
                                                 "overrides": args.resumed_overrides})
        run.write_json("config.json", config)
        return
    run.write_json("config.json", {"mode": mode, "args": vars(args), "command": command, "cwd": os.getcwd(),
                                   **extra})


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)
