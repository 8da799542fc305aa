"""``python -m dcd_ext.speed --student S --teacher T``: the speed report for a student and teacher you bring
(a saved student, a CLIP / SigLIP folder or an open_clip folder; a ViLT, METER or BLIP teacher) instead of
the built-in randomly initialised setups. The measurement itself is :func:`dcd_ext.speed.report_one`."""

from __future__ import annotations

import os
from argparse import Namespace

GALLERY_HW = (480, 640)  # the synthetic gallery photos: COCO-like 480 x 640


def custom_setup(args: Namespace, setup_class):
    """A ``dcd_ext.speed.Setup`` of the student folder ``args.student`` and the teacher ``args.teacher``,
    both on the CPU (``report_one`` moves them to the measured device)."""
    from .cli import load_teacher_from_args, teacher_kind
    from .students import load_student

    student = load_student(args.student).eval()
    kind = teacher_kind(args.teacher, args.teacher_kind)
    teacher = load_teacher_from_args(args, "cpu", micro_batch_size=16)
    name = (f"{kind} teacher {os.path.basename(os.path.normpath(args.teacher))}, {student.config.kind} student "
            f"{os.path.basename(os.path.normpath(args.student))}")
    return setup_class(kind, name, teacher, student, GALLERY_HW)
