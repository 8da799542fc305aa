"""``python -m dcd_ext.train``: the built-in demo, or DCD / contrastive training on your data.

A run starts in two phases. First everything it needs is loaded and checked (data, image files, teacher,
student and one forward pass of it on one training example, the checkpoint a resume continues from) without
writing anything; only then is the run folder made
(or, for a resume, written to). A run that fails to start leaves no folder behind; one that fails later
keeps the traceback in its log.txt and says ``failed`` in status.json.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
import time
from typing import Optional, Sequence

import torch

from ..cli import load_teacher_from_args, resolve_device
from ..distributed import SINGLE, World, broadcast_object, init_process_group, shutdown, world_from_env
from ..retrieval.evaluation import evaluate_student, evaluate_student_and_rerank, evaluate_teacher
from ..retrieval.metrics import format_table
from ..students import load_student, save_student
from ..text_coverage import coverage_warnings
from .checkpoint import check_checkpoint_fits, latest_checkpoint, read_meta
from .components import (build_student_from_args, check_input_files, load_data_from_args, make_loss,
                         screen_images, settings_from_args, skipped_images_text)
from .dry_run import check_student_reads_an_example
from .fusion import fusion_results, is_fusion_run, run_name
from .loop import Interrupted, check_layout, train_student
from .mining_pool import describe_mining_pool, mining_pool
from .params import parse_args
from .report import write_plots, write_report
from .run_dir import RunDir, check_new_run_folder, default_run_folder, get_logger, write_config
from .run_identity import check_checkpoint_identity, run_identity


def resume_checkpoint(args, run: RunDir, name: str) -> Optional[str]:
    if not args.resume:
        return None
    path = args.resume_checkpoint or latest_checkpoint(run.file("checkpoints", name))
    if path is None:
        get_logger().info(f"[{name}] {run.path} holds no checkpoint yet: training starts from the beginning")
    return path


def run_training(args, run: RunDir, device: torch.device, command: str, world: World = SINGLE) -> dict:
    """Train one student on --data (DCD or contrastive), then evaluate it (and the teacher) on the eval split.
    Every process of a torchrun world trains; rank 0 alone evaluates and writes."""
    log = get_logger()
    started = time.perf_counter()
    # ---- start: load and check everything, write nothing ----
    train, val, test = load_data_from_args(args)
    (train, val, test), skipped = screen_images([train, val, test], args.skip_bad_images,
                                                progress=not args.no_progress and world.is_main)
    if args.early_stop and val is None:
        raise ValueError(f"early_stop: --early-stop {args.early_stop} needs a validation split, and {args.data} has "
                         f"no {args.val_split!r} split (pass --val-split with one it has)")
    log.info(f"data: train {train.name} {train.num_images} images / {train.num_captions} captions; "
             f"eval {test.name} {test.num_images} / {test.num_captions}"
             + (f"; val {val.name} {val.num_images}" if val else ""))
    teacher = load_teacher_from_args(args, device) if args.teacher else None
    torch.manual_seed(args.seed)
    name = run_name(args) if is_fusion_run(args) else f"student_{args.loss}"
    student = build_student_from_args(args, train, teacher)
    check_student_reads_an_example(student, train, args.student)
    loss_fn = make_loss(args, teacher, world.rank)
    settings = settings_from_args(args, device)
    check_layout(settings, world)
    if world.is_main:
        dual = None if getattr(student, "is_cross_encoder", False) else student  # a fusion student reads as its teacher
        for message in coverage_warnings(train.captions, dual, teacher, "training captions"):
            log.warning(message)
        for message in coverage_warnings(test.captions, dual, None, "evaluation captions"):
            log.warning(message)
    settings.run_identity = run_identity(args)
    checkpoint = resume_checkpoint(args, run, name)
    if checkpoint is not None:
        check_checkpoint_fits(checkpoint, student)
        check_checkpoint_identity(checkpoint, read_meta(checkpoint)["extra"].get("run"), settings.run_identity)
    pool = mining_pool(loss_fn, args.batch_size, world.size, args.accum_steps)
    if pool is not None:
        log.info(describe_mining_pool(pool))
    # ---- the run folder ----
    if world.is_main:
        run.create()
        write_config(run, args, command, "train", world_size=world.size, mining_pool=pool)
        if skipped:
            run.write_text("skipped_images.txt", skipped_images_text(skipped))
        run.set_status("running")
    summary = train_student(name, student, loss_fn, train, val, settings, run, checkpoint, world)
    if not world.is_main:
        return {}
    save_student(student, run.file(name))

    results = {}
    if is_fusion_run(args):  # a cross-encoder student: it and the teacher score every test pair
        results = fusion_results(name, student, teacher, test, args)
    elif teacher is None:
        results[name] = evaluate_student(student, test, args.eval_batch_size, device)
    else:
        results[name], results[f"{name}_rerank"] = evaluate_student_and_rerank(
            student, teacher, test, args.rerank_k, args.eval_batch_size, device)
    best = summary.get("best")
    last_epoch = summary.get("early_stopped") or args.epochs
    if best is not None and best["epoch"] != last_epoch and os.path.isdir(run.file(f"{name}_best")):
        results[f"{name}_best"] = evaluate_student(load_student(run.file(f"{name}_best"), device), test,
                                                   args.eval_batch_size, device)
    if teacher is not None:
        results["teacher"], estimated = evaluate_teacher(teacher, test, args.teacher_eval_max_pairs, seed=args.seed)
        if estimated:
            log.info(f"teacher: {test.num_images * test.num_captions} pairs exceed --teacher-eval-max-pairs; "
                     "its ms/query is estimated from a sample, its recalls are not computed")
    run.write_json("results.json", results)
    wall = time.perf_counter() - started
    plots = write_plots(run)
    lines = [f"- train: {train.name}, {train.num_images} images, {train.num_captions} captions",
             f"- eval: {test.name}, {test.num_images} images, {test.num_captions} captions",
             f"- teacher: {args.teacher or 'none'}; student: {args.student}; loss: {args.loss}",
             f"- {summary['steps']} steps, {summary['teacher_pairs']} teacher pairs scored in training",
             f"- device {device}; wall time {wall:.0f} s"]
    if best is not None:
        lines.append(f"- best validation RSUM {best['rsum']:.1f} at epoch {best['epoch']} ({name}_best/)"
                     + (f"; stopped early after epoch {summary['early_stopped']}" if summary.get("early_stopped")
                        else ""))
    if pool is not None:
        lines.append(f"- {describe_mining_pool(pool)}")
    if skipped:
        lines.append(f"- {len(skipped)} unreadable images left out (skipped_images.txt)")
    write_report(run, f"DCD training run ({args.loss})", command, [("Setup", "\n".join(lines))], results, plots)
    print(format_table(results))
    print(f"wall time {wall:.0f} s; run folder {run.path}")
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    command = "python -m dcd_ext.train " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    world = world_from_env()
    if world.distributed and args.demo:
        raise ValueError("python -m dcd_ext.train: the built-in demo runs in one process; "
                         "under torchrun pass --data (and --teacher for DCD)")
    check_input_files(args)
    replaces = not args.resume and check_new_run_folder(args.out, args.overwrite)
    device = resolve_device(args.device, world)
    if args.threads:
        torch.set_num_threads(args.threads)
    init_process_group(world, device)
    finished, run = False, None
    try:
        # every rank uses rank 0's folder (its default name holds the time); it is made once the run has started
        run = RunDir(broadcast_object(world, args.out or default_run_folder("demo" if args.demo else args.loss)),
                     create=False, replace=replaces)
        log = run.setup_logging(writer=world.is_main)
        log.info(f"run folder {run.path}; device {device}"
                 + (f"; {world.size} processes" if world.distributed else "") + f"; command: {command}")
        if args.resumed_overrides:
            log.info("resuming with " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                  for k, v in args.resumed_overrides.items()))
        code = run_command(args, run, device, command, world)
        finished = code == 0
        return code
    except Exception as e:
        if run is not None and run.created:
            run.record_failure(e)
            e.add_note(f"traceback in {run.file('log.txt')}")
        raise
    finally:
        shutdown(world, finished)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a scheduler's stop, ``kill``) ends the run like Ctrl-C: the interrupted checkpoint is written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(args, run: RunDir, device: torch.device, command: str, world: World) -> int:
    with sigterm_as_interrupt():
        return run_guarded(args, run, device, command, world)


def launcher(world: World) -> str:
    """How to start this run again (the interrupted-run hint): torchrun with the process count it had."""
    return f"torchrun --nproc_per_node {world.size} -m dcd_ext.train" if world.distributed else "python -m dcd_ext.train"


def run_guarded(args, run: RunDir, device: torch.device, command: str, world: World) -> int:
    log = get_logger()
    try:
        if args.demo:
            from .demo import run_demo
            run_demo(args, run, device, command)
        else:
            run_training(args, run, device, command, world)
    except Interrupted as e:
        log.info(f"{e}. Continue with: {launcher(world)} --resume {run.path}")
        run.set_status("interrupted", checkpoint=e.checkpoint)
        return 130
    except KeyboardInterrupt:
        log.info("interrupted " + ("outside training (nothing to save)" if run.created else "before the run started"))
        run.set_status("interrupted", checkpoint=None)
        return 130
    run.set_status("finished")
    return 0
