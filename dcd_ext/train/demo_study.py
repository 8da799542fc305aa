"""How robust the demo's story is: the demo over several seeds (mean and spread) and one DCD student per
ablation (each weighting mode, mining by the teacher), written to ``study.md`` and ``study.json``.

    python -m dcd_ext.train.demo_study --seeds 0,1,2 --out runs/demo-study

Each seed is a full demo run (its own folder, report and table). An ablation trains only the DCD student
with one setting changed, on the same seed's data, teacher and initial weights, and is evaluated alone and
with the teacher re-ranking its top candidates.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
from typing import Optional, Sequence

import torch

ROWS = ("teacher", "student_contrastive", "student_dcd", "student_dcd_rerank")
# (row name, flags): every weighting mode (dcd is the demo's own), and mining by the teacher
ABLATIONS = (("weighting none", ["--weighting", "none"]), ("weighting entropy", ["--weighting", "entropy"]),
             ("weighting wsl", ["--weighting", "wsl"]), ("weighting dcd", []),
             ("mine by teacher", ["--mine-by", "teacher"]))


def mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def ablation_run(seed: int, flags: list[str], out: str, common: list[str], device: torch.device) -> dict:
    """The DCD student of the demo preset with ``flags`` changed: {"dcd": metrics, "rerank": metrics}."""
    from ..retrieval.evaluation import evaluate_student_and_rerank
    from ..students import load_student
    from .demo import (default_cache_dir, demo_dcd_loss, demo_splits, demo_teacher, preset_from_args,
                       train_demo_student)
    from .params import parse_args
    from .run_dir import RunDir, write_config

    args = parse_args(["--seed", str(seed), "--out", out] + common + flags)
    preset = preset_from_args(args)
    train, val, test = demo_splits(preset, seed)
    run = RunDir(out, create=False)
    run.create()
    write_config(run, args, "python -m dcd_ext.train.demo_study " + " ".join(flags), "demo-ablation",
                 preset=dataclasses.asdict(preset))
    teacher, _ = demo_teacher(preset, seed, args.cache_dir or default_cache_dir(), False, run, not args.no_progress,
                              device, args.teacher_batch_size)
    train_demo_student("student_dcd", demo_dcd_loss(args, preset, teacher), preset, train, val, args, run, device)
    student = load_student(run.file("student_dcd"), device)
    dcd, rerank = evaluate_student_and_rerank(student, teacher, test, preset.rerank_k, args.eval_batch_size, device)
    return {"dcd": dcd, "rerank": rerank}


def study_markdown(seeds: list[int], demos: dict[int, dict], ablations: dict[str, dict[int, dict]]) -> str:
    lines = [f"Seeds {', '.join(map(str, seeds))}: mean ± standard deviation of the test RSUM, then each seed.", "",
             "| model | RSUM | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---:|" + "---:|" * len(seeds)]
    for row in ROWS:
        values = [demos[s][row]["rsum"] for s in seeds]
        lines.append(f"| {row} | {mean_spread(values)} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    def mean_of(row: str) -> float:
        return statistics.mean(demos[s][row]["rsum"] for s in seeds)

    teacher, base, dcd = mean_of("teacher"), mean_of("student_contrastive"), mean_of("student_dcd")
    ratios = [demos[s]["teacher"]["rsum"] / demos[s]["student_contrastive"]["rsum"] for s in seeds]
    speed = [demos[s]["teacher"]["ms_per_query"] / demos[s]["student_dcd"]["ms_per_query"] for s in seeds]
    lines += ["", f"- teacher / contrastive-only RSUM: {teacher / base:.2f}x on the means "
                  f"(per seed {', '.join(f'{r:.2f}x' for r in ratios)})"]
    if teacher > base:
        closed = [100 * (demos[s]["student_dcd"]["rsum"] - demos[s]["student_contrastive"]["rsum"])
                  / (demos[s]["teacher"]["rsum"] - demos[s]["student_contrastive"]["rsum"]) for s in seeds]
        lines.append(f"- the DCD student closes {100 * (dcd - base) / (teacher - base):.0f}% of the gap between the "
                     f"means (per seed {', '.join(f'{c:.0f}%' for c in closed)})")
    lines.append(f"- the DCD student is {min(speed):.0f}x to {max(speed):.0f}x faster per query than the teacher "
                 "scoring all pairs")
    if ablations:
        ab_seeds = sorted({s for runs in ablations.values() for s in runs})
        lines += ["", f"Ablations (DCD student only; seeds {', '.join(map(str, ab_seeds))}; test RSUM, mean ± "
                      "standard deviation where several seeds):", "",
                  "| DCD variant | student | + teacher re-ranking |", "|---|---:|---:|"]
        for name, runs in ablations.items():
            lines.append(f"| {name} | {mean_spread([r['dcd']['rsum'] for r in runs.values()])} | "
                         f"{mean_spread([r['rerank']['rsum'] for r in runs.values()])} |")
        base = [demos[s]["student_contrastive"]["rsum"] for s in ab_seeds]
        lines.append(f"| (contrastive only, no teacher) | {mean_spread(base)} | |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..cli import make_parser, positive_int, resolve_device
    from .cli import main as train_main

    p = make_parser("python -m dcd_ext.train.demo_study",
                    "Run the built-in demo over several seeds and the DCD ablations; writes study.md and study.json.")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the full demo runs")
    p.add_argument("--ablation-seeds", default=None,
                   help="seeds of the ablation runs (default: the same as --seeds; 'none' skips them)")
    p.add_argument("--out", required=True, help="study folder (one sub-folder per run)")
    p.add_argument("--demo-size", default="default", choices=("tiny", "default"), help="demo preset")
    p.add_argument("--cache-dir", help="teacher cache (as for python -m dcd_ext.train)")
    p.add_argument("--threads", type=positive_int, help="CPU threads")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        ablation_seeds = ([] if args.ablation_seeds == "none" else
                          seeds if args.ablation_seeds is None else [int(s) for s in args.ablation_seeds.split(",")])
    except ValueError:
        raise ValueError(f"--seeds / --ablation-seeds: comma-separated integers expected, got "
                         f"{args.seeds!r} / {args.ablation_seeds!r}") from None
    common = ["--demo-size", args.demo_size, "--device", args.device]
    common += ["--cache-dir", args.cache_dir] if args.cache_dir else []
    common += ["--threads", str(args.threads)] if args.threads else []
    common += ["--no-progress"] if args.no_progress else []
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    os.makedirs(args.out, exist_ok=True)
    demos = {}
    for seed in seeds:
        folder = os.path.join(args.out, f"seed{seed}")
        if not os.path.isfile(os.path.join(folder, "results.json")):  # a finished run is kept (resumable study)
            # an unfinished run of an earlier study starts again (--overwrite: it is a run folder of its own)
            code = train_main(["--seed", str(seed), "--out", folder, "--overwrite"] + common)
            if code != 0:
                return code
        with open(os.path.join(folder, "results.json")) as f:
            demos[seed] = json.load(f)
    ablations: dict[str, dict[int, dict]] = {}
    for name, flags in ABLATIONS:
        for seed in ablation_seeds:
            if not flags and seed in demos:  # the demo's own DCD student
                ablations.setdefault(name, {})[seed] = {"dcd": demos[seed]["student_dcd"],
                                                        "rerank": demos[seed]["student_dcd_rerank"]}
                continue
            folder = os.path.join(args.out, f"ablation-{name.replace(' ', '-')}-seed{seed}")
            result_file = os.path.join(folder, "ablation.json")
            if not os.path.isfile(result_file):
                result = ablation_run(seed, flags, folder, common, device)
                with open(result_file, "w") as f:
                    json.dump(result, f, indent=1)
            with open(result_file) as f:
                ablations.setdefault(name, {})[seed] = json.load(f)
    text = study_markdown(seeds, demos, ablations)
    with open(os.path.join(args.out, "study.json"), "w") as f:
        json.dump({"seeds": seeds, "demos": demos, "ablations": ablations}, f, indent=1)
    with open(os.path.join(args.out, "study.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    from ..cli import run_command_line

    sys.exit(run_command_line(main))
