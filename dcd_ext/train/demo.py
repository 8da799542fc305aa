"""The built-in demo: synthetic scenes, a small ViLT teacher, a DCD student and its contrastive baseline.

1. Data: the synthetic scene set from the seed: small ``train`` / ``val`` / ``test`` splits for the students.
2. Teacher: a tiny ViLT cross-encoder trained on a separate, ten times larger ``teacher`` split
   (demo_teacher.py). The default preset's teacher ships with the package; other recipes and
   ``--retrain-teacher`` train one into the cache.
3. Two students with the same architecture, initial weights, data order and number of steps: one trained
   with the contrastive loss alone, one with DCD.
4. Evaluation on the test split: the teacher scoring all pairs, both students, and the DCD student with
   the teacher re-ranking its top candidates; report.md with the table, the curves and a retrieval example.
"""

from __future__ import annotations

import dataclasses
import argparse
import os
import time

import torch

from ..data import make_synthetic_split
from ..retrieval.evaluation import evaluate_student, evaluate_student_and_rerank, evaluate_teacher
from ..retrieval.metrics import format_table
from ..losses import ContrastiveLoss
from ..students import build_small_student, load_student, save_student
from .checkpoint import check_checkpoint_fits, latest_checkpoint
from .components import make_loss
from .demo_presets import PRESETS, DemoPreset
from .demo_teacher import read_info, shipped_teacher_for, teacher_key, write_teacher
from .loop import TrainSettings, train_student
from .report import write_plots, write_report
from .retrieval_example import write_retrieval_example
from .run_dir import RunDir, get_logger, write_config

def preset_from_args(args) -> DemoPreset:
    """The --demo-size preset with any explicitly given flags applied on top."""
    preset = PRESETS[args.demo_size]
    overrides = {name: getattr(args, flag) for name, flag in (
        ("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr"), ("k", "k"), ("alpha", "alpha"),
        ("embed_dim", "embed_dim"), ("student_width", "student_width"), ("student_layers", "student_layers"),
        ("rerank_k", "rerank_k"), ("teacher_pool", "teacher_pool"), ("image_size", "image_size"))
        if getattr(args, flag) is not None}
    return dataclasses.replace(preset, **overrides)


def demo_splits(preset: DemoPreset, seed: int):
    """The students' (train, val, test) synthetic splits of a preset and seed."""
    return tuple(make_synthetic_split(name, count, seed, preset.image_size) for name, count in
                 (("train", preset.train_images), ("val", preset.val_images), ("test", preset.test_images)))


def default_cache_dir() -> str:
    return os.environ.get("DCD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dcd_ext")


def demo_teacher(preset: DemoPreset, seed: int, cache_dir: str, retrain: bool, run: RunDir,
                 progress: bool, device: torch.device, micro_batch_size: int):
    """The demo teacher and a description: the shipped one when the preset's recipe is its recipe (unless
    ``retrain``), else the one cached for this recipe and seed, trained first if the cache has none."""
    from ..teachers.vilt import load_vilt_teacher

    log = get_logger()
    shipped = None if retrain else shipped_teacher_for(preset.teacher, preset.teacher_images, preset.image_size)
    if shipped is not None:
        log.info(f"using the shipped demo teacher in {shipped}")
        return (load_vilt_teacher(shipped, device=device, micro_batch_size=micro_batch_size),
                {**read_info(shipped), "source": "shipped", "path": str(shipped)})
    key = teacher_key(preset.teacher, preset.teacher_images, preset.image_size, seed)
    path = os.path.join(cache_dir, f"demo-teacher-{key}")
    info = read_info(path)
    if info is not None and not retrain:
        log.info(f"reusing the cached demo teacher in {path}")
        return (load_vilt_teacher(path, device=device, micro_batch_size=micro_batch_size),
                {**info, "source": "cached", "path": path})
    info = write_teacher(path, preset.teacher, preset.teacher_images, preset.image_size, seed, run, progress, device,
                         micro_batch_size)
    log.info(f"demo teacher trained in {info['train_seconds']:.0f} s and cached in {path}")
    return (load_vilt_teacher(path, device=device, micro_batch_size=micro_batch_size),
            {**info, "source": "trained", "path": path})


def demo_dcd_loss(args, preset: DemoPreset, teacher):
    """The demo's DCD loss: the loss of a run on your data (``make_loss``) with the preset's k, alpha and pool."""
    return make_loss(argparse.Namespace(**{**vars(args), "loss": "dcd", "k": preset.k, "alpha": preset.alpha,
                                  "teacher_pool": preset.teacher_pool}), teacher)


def train_demo_student(name: str, loss_fn, preset: DemoPreset, train, val, args, run: RunDir,
                       device: torch.device) -> dict:
    torch.manual_seed(args.seed)
    student = build_small_student(train.captions, width=preset.student_width, embed_dim=preset.embed_dim,
                                  image_size=preset.image_size, image_channels=list(preset.student_channels),
                                  text_layers=preset.student_layers)
    settings = TrainSettings(epochs=preset.epochs, batch_size=preset.batch_size, lr=preset.lr,
                             weight_decay=args.weight_decay, warmup=args.warmup, grad_clip=args.grad_clip,
                             precision=args.precision, accum_steps=args.accum_steps, save_every=args.save_every,
                             device=device, seed=args.seed, log_every=args.log_every, keep_checkpoints=args.keep_checkpoints, progress=not args.no_progress,
                             eval_batch_size=args.eval_batch_size)
    resume = latest_checkpoint(run.file("checkpoints", name)) if args.resume else None
    if resume is not None:
        check_checkpoint_fits(resume, student)
    summary = train_student(name, student, loss_fn, train, val, settings, run, resume)
    save_student(student, run.file(name))
    return summary


def story(results: dict) -> list[str]:
    """What the table says about the method: the teacher's lead, the share of it DCD recovers, re-ranking,
    and the speed the student keeps."""
    teacher, base = results["teacher"], results["student_contrastive"]
    dcd, rerank = results["student_dcd"], results["student_dcd_rerank"]
    if teacher["rsum"] is None:  # the teacher was only timed (too many pairs)
        return [f"DCD RSUM {dcd['rsum']:.1f} vs contrastive-only {base['rsum']:.1f} ({dcd['rsum'] - base['rsum']:+.1f})"]
    gap = teacher["rsum"] - base["rsum"]
    lines = [f"teacher RSUM {teacher['rsum']:.1f} = {teacher['rsum'] / max(base['rsum'], 1e-9):.2f}x the "
             f"contrastive-only student's {base['rsum']:.1f}"]
    if gap > 0:
        lines.append(f"DCD student {dcd['rsum']:.1f}: {dcd['rsum'] - base['rsum']:+.1f} RSUM, "
                     f"{100 * (dcd['rsum'] - base['rsum']) / gap:.0f}% of the gap to the teacher closed")
    else:
        lines.append(f"DCD student {dcd['rsum']:.1f} ({dcd['rsum'] - base['rsum']:+.1f} RSUM; the teacher does not lead)")
    lines.append(f"DCD + teacher re-ranking {rerank['rsum']:.1f} ({rerank['rsum'] - dcd['rsum']:+.1f} over the DCD student)")
    lines.append(f"per query the DCD student takes {dcd['ms_per_query']:.3f} ms, the teacher scoring all pairs "
                 f"{teacher['ms_per_query']:.1f} ms: {teacher['ms_per_query'] / max(dcd['ms_per_query'], 1e-9):.0f}x faster")
    return lines


def run_demo(args, run: RunDir, device: torch.device, command: str) -> dict:
    log = get_logger()
    started = time.perf_counter()
    preset = preset_from_args(args)
    train, val, test = demo_splits(preset, args.seed)
    run.create()
    write_config(run, args, command, "demo", preset=dataclasses.asdict(preset))
    run.set_status("running")
    log.info(f"demo ({args.demo_size}): synthetic scenes, train {train.num_images} images / {train.num_captions} "
             f"captions, val {val.num_images}, test {test.num_images} / {test.num_captions}; run folder {run.path}")

    cache_dir = args.cache_dir or default_cache_dir()
    teacher, teacher_info = demo_teacher(preset, args.seed, cache_dir, args.retrain_teacher, run,
                                         not args.no_progress, device, args.teacher_batch_size)

    dcd_loss = demo_dcd_loss(args, preset, teacher)
    summaries = {
        "student_contrastive": train_demo_student("student_contrastive", ContrastiveLoss(args.queue_size), preset,
                                                  train, val, args, run, device),
        "student_dcd": train_demo_student("student_dcd", dcd_loss, preset, train, val, args, run, device),
    }

    log.info(f"evaluating on the test split ({test.num_images} images, {test.num_captions} captions)")
    results = {}
    results["teacher"], _ = evaluate_teacher(teacher, test, max_pairs=args.teacher_eval_max_pairs, seed=args.seed,
                                           progress=not args.no_progress)
    baseline = load_student(run.file("student_contrastive"), device)
    results["student_contrastive"] = evaluate_student(baseline, test, args.eval_batch_size, device)
    student = load_student(run.file("student_dcd"), device)
    results["student_dcd"], results["student_dcd_rerank"] = evaluate_student_and_rerank(
        student, teacher, test, preset.rerank_k, args.eval_batch_size, device)
    if args.demo_fusion:  # the shallow cross-encoder students and the cascade (fusion_demo.py)
        from .fusion_demo import run_fusion_demo
        fusion_results, fusion_text = run_fusion_demo(args, run, device, preset, teacher, train, val, test, student)
        results.update(fusion_results)
    run.write_json("results.json", results)

    plots = write_plots(run)
    example, example_text = write_retrieval_example(
        run, test, teacher, {"contrastive-only student": baseline, "DCD student": student}, device)
    wall = time.perf_counter() - started
    outcome = story(results)
    teacher_line = {"shipped": f"shipped with the package ({teacher_info['path']})",
                    "cached": f"reused from {teacher_info['path']}",
                    "trained": f"trained in {teacher_info['train_seconds']:.0f} s, cached in {teacher_info['path']}"}[
        teacher_info["source"]]
    sections = [
        ("Setup", "\n".join([
            f"- data: synthetic scenes (seed {args.seed}), student training split {train.num_images} images / "
            f"{train.num_captions} captions, validation {val.num_images} images, test {test.num_images} images / "
            f"{test.num_captions} captions",
            f"- teacher: tiny ViLT cross-encoder ({preset.teacher.layers} layers, hidden {preset.teacher.hidden}, "
            f"patch {preset.teacher.patch_size}) trained on {preset.teacher_images} other scenes, {teacher_line}",
            f"- students: small dual encoders (width {preset.student_width}, D = {preset.embed_dim}), same seed, "
            f"{preset.epochs} epochs x batch {preset.batch_size}",
            f"- DCD: k = {preset.k}, alpha = {preset.alpha}, T = {args.temperature}, kind {args.distill_kind}, "
            f"weighting {args.weighting}, mining by {args.mine_by}; re-ranking depth {preset.rerank_k}",
            f"- device {device}, {torch.get_num_threads()} threads; wall time {wall:.0f} s"])),
        ("Outcome", "\n".join([f"- {line}" for line in outcome] + [
            f"- teacher scoring during DCD training: {summaries['student_dcd']['teacher_pairs']} pairs in "
            f"{summaries['student_dcd']['teacher_seconds']:.0f} s"])),
        ("Retrieval example", f"{example_text}\n\n![retrieval example]({example})"),
    ]
    if args.demo_fusion:
        sections.insert(1, ("Fusion students", fusion_text))
    write_report(run, "DCD demo", command, sections, results, plots)
    print(f"\nDCD demo ({args.demo_size}) on {device}: test split {test.num_images} images, "
          f"{test.num_captions} captions")
    print(format_table(results))
    for line in outcome:
        print(line)
    print(f"wall time {wall:.0f} s; run folder {run.path}")
    log.info(f"demo finished in {wall:.0f} s")
    return results

