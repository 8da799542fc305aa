"""``python -m dcd_ext.train --student fusion``: the flags, student, loss and final evaluation of a shallow
cross-encoder ("fusion") student (``dcd_ext.students.fusion``, ``dcd_ext.losses.fusion``)."""

from __future__ import annotations

import argparse

from ..cli import positive_int
from ..losses.fusion import RECIPES, FusionLoss
from ..students.fusion import HEAD_INITS, build_fusion_student, is_fusion_folder, load_fusion_student, parse_layers
from .run_dir import get_logger

DEFAULT_CASCADE_DEPTHS = "10,50"


def add_fusion_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fusion student (a shallow cross-encoder: the DCD authors' student form)")
    group.add_argument("--fusion-layers", type=parse_layers,
                       help="--student fusion: the teacher's joint layers to copy, e.g. 0,3,5 (default: half of "
                            "them spread from the first to the last; METER's 6 co-attention layers: 0,3,5)")
    group.add_argument("--fusion-head-init", choices=HEAD_INITS,
                       help="--student fusion: rank head from the teacher's rank head, or (METER) from its "
                            "checkpoint's ITM 'match' row as the authors (default: rank; itm with --recipe authors "
                            "and a METER teacher)")
    group.add_argument("--recipe", choices=RECIPES, default="dcd",
                       help="--student fusion: dcd (the candidate terms of DCD with --distill-kind, --weighting, "
                            "--alpha) or authors (the authors' loss: alpha*T^2*MSE + (1-alpha)*BCE against "
                            "[1,0,...,0] weighted by the teacher's normalised entropy, teacher-ranked pool)")
    group.add_argument("--cascade-k", default=DEFAULT_CASCADE_DEPTHS,
                       help="--demo-fusion: depths at which the fusion student re-ranks the DCD dual encoder's "
                            "top k (comma-separated)")
    group.add_argument("--demo-fusion", action="store_true",
                       help="demo: also distil fusion students (DCD and the authors' recipe) from the demo "
                            "teacher and evaluate them alone and as re-rankers of the DCD student (cascade)")
    group.add_argument("--fusion-epochs", type=positive_int, help="--demo-fusion: epochs of the fusion students")


def is_fusion_run(args: argparse.Namespace) -> bool:
    return args.student == "fusion" or (args.student not in (None, "small", "teacher") and is_fusion_folder(args.student))


def check_fusion_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Flag combinations a fusion run needs (called by ``parse_args``)."""
    fusion = not args.demo and is_fusion_run(args)
    if args.demo_fusion and not args.demo:
        parser.error("--demo-fusion belongs to the built-in demo (no --data, --teacher, --student)")
    if args.recipe != "dcd" and not (fusion or args.demo_fusion):
        parser.error("--recipe authors is the loss of a fusion student: pass --student fusion")
    if not fusion:
        return
    if args.teacher is None:
        parser.error("--student fusion needs --teacher (the student keeps its frozen encoders)")
    if args.loss != "dcd":
        parser.error("--student fusion trains with --loss dcd (there is no contrastive-only cross-encoder)")
    if args.accum_steps != 1:
        parser.error("--student fusion takes no --accum-steps")
    if args.precision == "fp16":
        parser.error("--student fusion trains in --precision fp32 or bf16")
    if args.queue_size:
        parser.error("--student fusion has no embedding queue (--queue-size)")
    if args.teacher_pool is not None and args.k is not None and args.teacher_pool < args.k:
        parser.error(f"--teacher-pool ({args.teacher_pool}) must be at least --k ({args.k})")


def run_name(args: argparse.Namespace) -> str:
    return f"student_fusion_{args.recipe}"


def head_init_for(args: argparse.Namespace, teacher) -> str:
    if args.fusion_head_init is not None:
        return args.fusion_head_init
    return "itm" if args.recipe == "authors" and getattr(teacher, "kind", None) == "meter" else "rank"


def build_fusion_from_args(args: argparse.Namespace, teacher):
    """A new fusion student of ``teacher`` (``--student fusion``) or a saved one to continue training."""
    if args.student != "fusion":
        return load_fusion_student(args.student, teacher.device).train()
    student = build_fusion_student(teacher, args.fusion_layers, head_init=head_init_for(args, teacher))
    get_logger().info(f"fusion student: teacher {teacher.kind} layers {list(student.layers_kept)} of "
                      f"{student.teacher_layers}, head from {student.head_init}, "
                      f"{sum(p.numel() for p in student.parameters()):,} trained parameters")
    return student.train()


def make_fusion_loss(args: argparse.Namespace, teacher, rank: int = 0, seed: int | None = None) -> FusionLoss:
    if args.recipe == "authors" and args.mine_by != "teacher":
        get_logger().info("--recipe authors: candidates are the teacher's top k of a random pool (--mine-by teacher)")
    return FusionLoss(teacher, recipe=args.recipe, k=args.k, alpha=args.alpha, temperature=args.temperature,
                      kind=args.distill_kind, weighting=args.weighting, mine_by=args.mine_by,
                      teacher_pool=args.teacher_pool,
                      seed=(args.seed if seed is None else seed) + 1_000_003 * rank)


def fusion_results(name: str, student, teacher, test, args: argparse.Namespace) -> dict:
    """Final evaluation of a fusion run: the student scoring every test pair, and the teacher doing the same
    (each within --teacher-eval-max-pairs; beyond it only their time per query is estimated)."""
    from ..retrieval.cascade import evaluate_cross_encoder

    results = {}
    for key, model in ((name, student), ("teacher", teacher)):
        results[key], estimated = evaluate_cross_encoder(model, test, args.teacher_eval_max_pairs, seed=args.seed)
        if estimated:
            get_logger().info(f"{key}: {test.num_images * test.num_captions} pairs exceed --teacher-eval-max-pairs; "
                              "its ms/query is estimated from a sample, its recalls are not computed")
    return results
