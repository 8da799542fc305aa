"""Issue 22 item 8: DCD mines within each process's share of the batch, so a run depends on the process count
and not on --accum-steps; the run folder records that pool (config.json, report.md) and the docs say so."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from dcd_ext.train import main
from dcd_ext.train.mining_pool import describe_mining_pool, mining_pool
from train_fixtures import write_table

DOCS = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def test_the_pool_is_the_share_of_one_process_whatever_the_accumulation():
    loss = SimpleNamespace(k=3, mine_by="student", teacher_pool=None)  # what the pool reads of a DCDLoss
    one = mining_pool(loss, 128, 1, 2)
    two = mining_pool(loss, 128, 2, 1)
    assert one["captions_per_process"] == 128 and two["captions_per_process"] == 64
    assert describe_mining_pool(two) == ("DCD mining pool: 64 captions per process per step (the global batch of 128 "
                                         "over 2 processes; --accum-steps 1 does not change it, another process "
                                         "count does)")
    assert mining_pool(object(), 128, 2, 1) is None  # a contrastive loss mines nothing


def test_a_dcd_run_records_its_mining_pool(tmp_path, tiny_vilt_dir):
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")
    out = tmp_path / "run"
    assert main(["--data", table, "--teacher", tiny_vilt_dir, "--k", "2", "--epochs", "1", "--batch-size", "8",
                 "--accum-steps", "2", "--image-size", "32", "--student-width", "16", "--student-layers", "1",
                 "--embed-dim", "8", "--val-split", "none", "--rerank-k", "2", "--threads", "1", "--out", str(out),
                 "--no-progress", "--device", "cpu"]) == 0
    pool = json.loads((out / "config.json").read_text())["mining_pool"]
    assert pool == {"captions_per_process": 8, "processes": 1, "global_batch": 8, "accum_steps": 2, "k": 2,
                    "mine_by": pool["mine_by"], "teacher_pool": pool["teacher_pool"]}
    line = "DCD mining pool: 8 captions per process per step (the global batch of 8 over 1 process; --accum-steps 2"
    assert line in (out / "report.md").read_text() and line in (out / "log.txt").read_text()


def test_the_docs_no_longer_promise_that_accumulation_reproduces_processes_for_dcd():
    text = " ".join(DOCS.read_text(encoding="utf-8").split())
    assert "so `--accum-steps 2` in one process reproduces a 2-process run of the same global batch." not in text
    assert "DCD's mining does not" in text and "`mining_pool`" in text
