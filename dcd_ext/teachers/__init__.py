"""Cross-encoder teachers (ViLT, METER, BLIP) behind one scoring API.

    teacher = load_teacher("vilt", "/models/vilt-b32-finetuned-coco")
    teacher = load_teacher("meter", "meter_clip16_288_roberta_flickr.ckpt", tokenizer="/models/roberta-base")
    teacher = load_teacher("blip", "/models/blip-itm-base-coco")
    scores = teacher.score(images, texts)              # pair i = (images[i], texts[i])
    scores = teacher.score_pairs(images, texts, pairs) # pairs [P, 2] = (image index, text index)

transformers is imported only when a teacher is loaded or built.
"""

from .base import CrossEncoderTeacher
from .checkpoint_io import CheckpointError
from .finetune import finetune_teacher
from .loader import TEACHER_KINDS, load_teacher

__all__ = ["CrossEncoderTeacher", "CheckpointError", "TEACHER_KINDS", "finetune_teacher", "load_teacher"]
