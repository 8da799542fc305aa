"""The built-in demo: synthetic scenes, a small ViLT teacher, a DCD student and its contrastive baseline.

1. Data: the synthetic scene set from the seed: a large ``teacher`` split and small ``train`` / ``val`` /
   ``test`` splits.
2. Teacher: a tiny random-init ViLT, trained on the teacher split in two stages and cached under the cache
   dir:
   (a) its transformer is warmed up as a dual encoder with the image-text contrastive loss (one modality at
       a time, as the ViLT student runs it; cheap, since every pair in a batch is scored by a dot product);
   (b) it is fine-tuned as a cross-encoder with the listwise ranking loss of ViLT and METER.
   Stage (a) stands in for the large-scale pre-training real teachers get: a cross-encoder trained from
   random weights on the ranking loss alone sits at chance for many epochs first. The teacher split is
   ten times the students' training split, as a pre-trained teacher has seen far more than the paired
   data a student is distilled on; that gap is where distillation pays.
3. Two students with the same architecture, initial weights, data order and number of steps: one trained
   with the contrastive loss alone, one with DCD.
4. Evaluation on the test split: the teacher scoring all pairs, both students, and the DCD student with
   the teacher re-ranking its top candidates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

import torch

from ..data import make_synthetic_split, vocabulary
from ..retrieval.evaluation import evaluate_student, evaluate_student_and_rerank, evaluate_teacher
from ..retrieval.metrics import format_table
from ..losses import ContrastiveLoss, DCDLoss
from ..students import build_small_student, load_student, save_student
from ..students.factory import vilt_student_from_model
from .checkpoint import check_checkpoint_fits, latest_checkpoint
from .loop import TrainSettings, train_student
from .report import write_plots, write_report
from .run_dir import RunDir, get_logger, write_config

TEACHER_FORMAT = 1  # bump when the teacher recipe changes, so old caches are not reused


@dataclass(frozen=True)
class TeacherRecipe:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    patch_size: int = 8
    max_text_len: int = 16
    warmup_epochs: int = 20
    warmup_batch_size: int = 64
    warmup_lr: float = 2e-3
    finetune_epochs: int = 6
    finetune_batch_size: int = 16
    finetune_negatives: int = 7
    finetune_lr: float = 1e-3


@dataclass(frozen=True)
class DemoPreset:
    teacher_images: int
    train_images: int
    val_images: int
    test_images: int
    image_size: int = 32
    teacher: TeacherRecipe = field(default_factory=TeacherRecipe)
    student_width: int = 128
    embed_dim: int = 128
    student_channels: tuple[int, ...] = (16, 32, 64)
    student_layers: int = 2
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    k: int = 15
    alpha: float = 0.2
    rerank_k: int = 10
    teacher_pool: int = 16


PRESETS = {
    "tiny": DemoPreset(teacher_images=48, train_images=48, val_images=16, test_images=24,
                       teacher=TeacherRecipe(hidden=32, layers=1, heads=2, warmup_epochs=1, finetune_epochs=1,
                                             finetune_batch_size=16, finetune_negatives=3),
                       student_width=32, embed_dim=32, student_channels=(8, 8, 16), student_layers=1,
                       epochs=2, batch_size=16, k=3, rerank_k=5, teacher_pool=6),
    "default": DemoPreset(teacher_images=2000, train_images=200, val_images=100, test_images=300),
}


def preset_from_args(args) -> DemoPreset:
    """The --demo-size preset with any explicitly given flags applied on top."""
    preset = PRESETS[args.demo_size]
    overrides = {name: getattr(args, flag) for name, flag in (
        ("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr"), ("k", "k"), ("alpha", "alpha"),
        ("embed_dim", "embed_dim"), ("student_width", "student_width"), ("student_layers", "student_layers"),
        ("rerank_k", "rerank_k"), ("teacher_pool", "teacher_pool"), ("image_size", "image_size"))
        if getattr(args, flag) is not None}
    return dataclasses.replace(preset, **overrides)


def default_cache_dir() -> str:
    return os.environ.get("DCD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dcd_ext")


def teacher_cache_key(preset: DemoPreset, seed: int) -> str:
    payload = {"format": TEACHER_FORMAT, "recipe": dataclasses.asdict(preset.teacher), "seed": seed,
               "teacher_images": preset.teacher_images, "image_size": preset.image_size, "vocab": vocabulary()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def train_demo_teacher(out_dir: str, preset: DemoPreset, train, seed: int, run: RunDir, progress: bool,
                       device: torch.device, micro_batch_size: int):
    """Build, warm up and fine-tune the demo teacher, saved to ``out_dir``."""
    from ..teachers.finetune import finetune_teacher
    from ..teachers.vilt import build_tiny_vilt, load_vilt_teacher

    log = get_logger()
    recipe = preset.teacher
    build_tiny_vilt(out_dir, vocabulary(), image_size=preset.image_size, patch_size=recipe.patch_size,
                    hidden=recipe.hidden, layers=recipe.layers, heads=recipe.heads, max_text_len=recipe.max_text_len,
                    seed=seed)
    teacher = load_vilt_teacher(out_dir, device=device, micro_batch_size=micro_batch_size)

    log.info(f"teacher stage 1: contrastive warm-up of the ViLT transformer ({recipe.warmup_epochs} epochs)")
    torch.manual_seed(seed)
    dual = vilt_student_from_model(teacher.model.vilt, teacher.tokenizer, preset.image_size,
                                   embed_dim=recipe.hidden, max_length=recipe.max_text_len)
    settings = TrainSettings(epochs=recipe.warmup_epochs, batch_size=recipe.warmup_batch_size, lr=recipe.warmup_lr,
                             device=device, seed=seed, progress=progress, keep_checkpoints=1, log_every=20)
    train_student("teacher_warmup", dual, ContrastiveLoss(), train, None, settings, run)

    log.info(f"teacher stage 2: listwise fine-tuning as a cross-encoder ({recipe.finetune_epochs} epochs)")
    losses = finetune_teacher(teacher, train.images, train.captions, train.caption_image,
                              epochs=recipe.finetune_epochs, batch_size=recipe.finetune_batch_size,
                              n_negatives=recipe.finetune_negatives, lr=recipe.finetune_lr, seed=seed,
                              progress=progress and sys.stderr.isatty())
    steps_per_epoch = max(1, len(losses) // recipe.finetune_epochs)
    for step in range(0, len(losses), 20):
        window = losses[step:step + 20]
        run.log_metrics({"run": "teacher_finetune", "epoch": (step + len(window)) / steps_per_epoch,
                         "step": step + len(window), "loss": sum(window) / len(window)})
    teacher.save(out_dir)


def demo_teacher(preset: DemoPreset, seed: int, cache_dir: str, retrain: bool, run: RunDir,
                 progress: bool, device: torch.device, micro_batch_size: int):
    """The cached demo teacher, trained first if the cache has none for this recipe; returns (teacher, info)."""
    from ..teachers.vilt import load_vilt_teacher

    log = get_logger()
    path = os.path.join(cache_dir, f"demo-teacher-{teacher_cache_key(preset, seed)}")
    info_path = os.path.join(path, "dcd_demo_teacher.json")
    if os.path.isfile(info_path) and not retrain:
        log.info(f"reusing the cached demo teacher in {path}")
        with open(info_path) as f:
            info = json.load(f)
        return (load_vilt_teacher(path, device=device, micro_batch_size=micro_batch_size),
                {**info, "cached": True, "path": path})
    partial = path + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    start = time.perf_counter()
    split = make_synthetic_split("teacher", preset.teacher_images, seed, preset.image_size)
    log.info(f"training the demo teacher on {split.num_images} scenes / {split.num_captions} captions")
    train_demo_teacher(partial, preset, split, seed, run, progress, device, micro_batch_size)
    info = {"recipe": dataclasses.asdict(preset.teacher), "seed": seed, "train_seconds": time.perf_counter() - start}
    with open(os.path.join(partial, "dcd_demo_teacher.json"), "w") as f:
        json.dump(info, f, indent=1)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(partial, path)
    log.info(f"demo teacher trained in {info['train_seconds']:.0f} s and cached in {path}")
    return (load_vilt_teacher(path, device=device, micro_batch_size=micro_batch_size),
            {**info, "cached": False, "path": path})


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


def run_demo(args, run: RunDir, device: torch.device, command: str) -> dict:
    log = get_logger()
    started = time.perf_counter()
    preset = preset_from_args(args)
    train = make_synthetic_split("train", preset.train_images, args.seed, preset.image_size)
    val = make_synthetic_split("val", preset.val_images, args.seed, preset.image_size)
    test = make_synthetic_split("test", preset.test_images, args.seed, preset.image_size)
    run.create()
    write_config(run, args, command, "demo", preset=dataclasses.asdict(preset))
    run.set_status("running")
    log.info(f"demo ({args.demo_size}): synthetic scenes, train {train.num_images} images / {train.num_captions} "
             f"captions, val {val.num_images}, test {test.num_images} / {test.num_captions}; run folder {run.path}")

    cache_dir = args.cache_dir or default_cache_dir()
    teacher, teacher_info = demo_teacher(preset, args.seed, cache_dir, args.retrain_teacher, run,
                                         not args.no_progress, device, args.teacher_batch_size)

    dcd_loss = DCDLoss(teacher, k=preset.k, alpha=preset.alpha, temperature=args.temperature, kind=args.distill_kind,
                       weighting=args.weighting, con_weight=args.con_weight, mine_by=args.mine_by,
                       teacher_pool=preset.teacher_pool, queue_size=args.queue_size, seed=args.seed)
    summaries = {
        "student_contrastive": train_demo_student("student_contrastive", ContrastiveLoss(args.queue_size), preset,
                                                  train, val, args, run, device),
        "student_dcd": train_demo_student("student_dcd", dcd_loss, preset, train, val, args, run, device),
    }

    log.info(f"evaluating on the test split ({test.num_images} images, {test.num_captions} captions)")
    results = {}
    results["teacher"], _ = evaluate_teacher(teacher, test, max_pairs=args.teacher_eval_max_pairs, seed=args.seed)
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

    wall = time.perf_counter() - started
    gain = results["student_dcd"]["rsum"] - results["student_contrastive"]["rsum"]
    plots = write_plots(run)
    teacher_line = (f"reused from {teacher_info['path']}" if teacher_info["cached"] else
                    f"trained in {teacher_info['train_seconds']:.0f} s, cached in {teacher_info['path']}")
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
        ("Outcome", f"DCD RSUM {results['student_dcd']['rsum']:.1f} vs contrastive-only "
                    f"{results['student_contrastive']['rsum']:.1f} ({gain:+.1f}). Teacher scoring during DCD training: "
                    f"{summaries['student_dcd']['teacher_pairs']} pairs in "
                    f"{summaries['student_dcd']['teacher_seconds']:.0f} s."),
    ]
    if args.demo_fusion:
        sections.insert(1, ("Fusion students", fusion_text))
    write_report(run, "DCD demo", command, sections, results, plots)
    print(f"\nDCD demo ({args.demo_size}) on {device}: test split {test.num_images} images, "
          f"{test.num_captions} captions")
    print(format_table(results))
    print(f"DCD vs contrastive-only RSUM: {results['student_dcd']['rsum']:.1f} vs "
          f"{results['student_contrastive']['rsum']:.1f} ({gain:+.1f})")
    print(f"wall time {wall:.0f} s; run folder {run.path}")
    log.info(f"demo finished in {wall:.0f} s")
    return results

