"""``python -m dcd_ext.train``: the built-in demo, or DCD / contrastive training on your data."""

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
from ..students import save_student
from .checkpoint import latest_checkpoint
from .components import build_student_from_args, load_data_from_args, make_loss, settings_from_args
from .fusion import fusion_results, is_fusion_run, run_name
from .loop import Interrupted, train_student
from .params import parse_args
from .report import write_plots, write_report
from .run_dir import RunDir, default_run_folder, get_logger


def resume_target(resume: str, demo: bool) -> tuple[str, Optional[str]]:
    """(run folder, checkpoint file or None) for --resume given a run folder or a checkpoint file."""
    if os.path.isdir(resume):
        if not os.path.isfile(os.path.join(resume, "config.json")):
            raise FileNotFoundError(f"resume: {resume} is not a run folder (no config.json)")
        return resume, None
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"resume: no such run folder or checkpoint file: {resume}")
    if demo:
        raise ValueError("resume: the demo resumes from its run folder, not from one checkpoint file")
    # RUN/checkpoints/<name>/<file>.safetensors
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(resume)))), resume


def run_training(args, run: RunDir, device: torch.device, command: str, world: World = SINGLE) -> dict:
    """Train one student on --data (DCD or contrastive), then evaluate it (and the teacher) on the eval split.
    Every process of a torchrun world trains; rank 0 alone evaluates and writes."""
    log = get_logger()
    started = time.perf_counter()
    if world.is_main:
        run.write_json("config.json", {"mode": "train", "args": vars(args), "world_size": world.size})
    train, val, test = load_data_from_args(args)
    log.info(f"data: train {train.name} {train.num_images} images / {train.num_captions} captions; "
             f"eval {test.name} {test.num_images} / {test.num_captions}"
             + (f"; val {val.name} {val.num_images}" if val else ""))
    teacher = load_teacher_from_args(args, device) if args.teacher else None
    torch.manual_seed(args.seed)
    name = run_name(args) if is_fusion_run(args) else f"student_{args.loss}"
    student = build_student_from_args(args, train, teacher)
    checkpoint = args.resume_checkpoint or (latest_checkpoint(run.file("checkpoints", name)) if args.resume else None)
    summary = train_student(name, student, make_loss(args, teacher, world.rank), train, val,
                            settings_from_args(args, device), run, checkpoint, world)
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
        results["teacher"], estimated = evaluate_teacher(teacher, test, args.teacher_eval_max_pairs, seed=args.seed)
        if estimated:
            log.info(f"teacher: {test.num_images * test.num_captions} pairs exceed --teacher-eval-max-pairs; "
                     "its ms/query is estimated from a sample, its recalls are not computed")
    run.write_json("results.json", results)
    wall = time.perf_counter() - started
    plots = write_plots(run)
    setup = "\n".join([f"- train: {train.name}, {train.num_images} images, {train.num_captions} captions",
                       f"- eval: {test.name}, {test.num_images} images, {test.num_captions} captions",
                       f"- teacher: {args.teacher or 'none'}; student: {args.student}; loss: {args.loss}",
                       f"- {summary['steps']} steps, {summary['teacher_pairs']} teacher pairs scored in training",
                       f"- device {device}; wall time {wall:.0f} s"])
    write_report(run, f"DCD training run ({args.loss})", command, [("Setup", setup)], results, plots)
    print(format_table(results))
    print(f"wall time {wall:.0f} s; run folder {run.path}")
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    command = "python -m dcd_ext.train " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    args.resume_checkpoint = None
    if args.resume:
        folder, args.resume_checkpoint = resume_target(args.resume, args.demo)
        args.out = args.out or folder
    world = world_from_env()
    if world.distributed and args.demo:
        raise SystemExit("python -m dcd_ext.train: the built-in demo runs in one process; "
                         "under torchrun pass --data (and --teacher for DCD)")
    device = resolve_device(args.device, world)
    if args.threads:
        torch.set_num_threads(args.threads)
    init_process_group(world, device)
    finished = False
    try:
        # every rank uses rank 0's folder (its default name holds the time)
        run = RunDir(broadcast_object(world, args.out or default_run_folder("demo" if args.demo else args.loss)))
        log = run.setup_logging(writer=world.is_main)
        log.info(f"run folder {run.path}; device {device}"
                 + (f"; {world.size} processes" if world.distributed else "") + f"; command: {command}")
        code = run_command(args, run, device, command, world)
        finished = code == 0
        return code
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


def run_guarded(args, run: RunDir, device: torch.device, command: str, world: World) -> int:
    log = get_logger()
    launcher = "torchrun --nproc_per_node N -m dcd_ext.train" if world.distributed else "python -m dcd_ext.train"
    try:
        if args.demo:
            from .demo import run_demo
            run_demo(args, run, device, command)
        else:
            run_training(args, run, device, command, world)
    except Interrupted as e:
        log.info(f"{e}. Continue with: {launcher} --resume {run.path} (and the same flags)")
        return 130
    except KeyboardInterrupt:
        log.info("interrupted outside training (nothing to save)")
        return 130
    return 0
