"""The run folder: config.json, log.txt, metrics.jsonl, checkpoints/, results.json, report.md, plots."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any, Optional

from ..files import write_text_atomically

LOGGER_NAME = "dcd_ext.train"


def default_run_folder(mode: str) -> str:
    return os.path.join("runs", time.strftime("%Y%m%d-%H%M%S") + f"-{mode}")


def jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


class RunDir:
    def __init__(self, path: str):
        self.path = path
        os.makedirs(path, exist_ok=True)
        self.metrics_path = os.path.join(path, "metrics.jsonl")

    def file(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def checkpoint_dir(self, run: str) -> str:
        path = self.file("checkpoints", run)
        os.makedirs(path, exist_ok=True)
        return path

    def write_json(self, name: str, payload: Any) -> str:
        return write_text_atomically(self.file(name), json.dumps(jsonable(payload), indent=2) + "\n")

    def read_json(self, name: str) -> Optional[Any]:
        path = self.file(name)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)

    def log_metrics(self, row: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(jsonable(row)) + "\n")

    def read_metrics(self) -> list[dict]:
        if not os.path.isfile(self.metrics_path):
            return []
        with open(self.metrics_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate_metrics(self, run: str, after_step: int) -> None:
        """Drop rows of ``run`` logged after ``after_step`` (a resumed run logs those steps again)."""
        rows = [r for r in self.read_metrics() if r.get("run") != run or r.get("step", 0) <= after_step]
        with open(self.metrics_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    def setup_logging(self, quiet: bool = False, writer: bool = True) -> logging.Logger:
        """``writer``: this process writes log.txt (rank 0); the other ranks print warnings only."""
        logger = logging.getLogger(LOGGER_NAME)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        if not writer:
            console = logging.StreamHandler(sys.stderr)
            console.setLevel(logging.WARNING)
            logger.addHandler(console)
            return logger
        fmt = logging.Formatter("%(asctime)s | %(levelname)s | %(message)s", "%Y-%m-%d %H:%M:%S")
        file_handler = logging.FileHandler(self.file("log.txt"))
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
        if not quiet:
            console = logging.StreamHandler(sys.stderr)
            console.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(console)
        return logger


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)
