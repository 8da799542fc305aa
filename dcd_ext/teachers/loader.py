"""``load_teacher(kind, path, ...)``: one entry point for every cross-encoder teacher."""

from __future__ import annotations

from pathlib import Path

from .base import CrossEncoderTeacher

__all__ = ["TEACHER_KINDS", "load_teacher"]

TEACHER_KINDS = ("vilt", "meter", "blip")


def load_teacher(kind: str, path, *, tokenizer=None, device=None, micro_batch_size: int = 32,
                 bf16: bool = False, **options) -> CrossEncoderTeacher:
    """Load a teacher from local files.

    - ``load_teacher("vilt", dir)``: a Hugging Face directory (config.json, weights, tokenizer
      files, preprocessor_config.json), e.g. a copy of dandelin/vilt-b32-finetuned-coco.
    - ``load_teacher("meter", ckpt, tokenizer=dir)``: an official METER fine-tuned checkpoint (or a
      directory written by ``MeterTeacher.save``) and a local RoBERTa tokenizer directory.
    - ``load_teacher("blip", dir)``: a Hugging Face ``BlipForImageTextRetrieval`` directory (config.json
      with model_type blip, weights, preprocessor_config.json, tokenizer files), e.g. a copy of
      Salesforce/blip-itm-base-coco; scores are the ITM head's match-minus-no-match logit.

    ``options`` go to the kind's loader (ViLT: ``image_size``, ``size_divisor``, ``max_text_len``,
    ``patch_seed``; METER: ``image_size``, ``max_text_len``, ``allow_pickle``, ``attn_implementation``,
    ``dropout``; BLIP: ``max_text_len``).
    """
    if not isinstance(kind, str) or kind.lower() not in TEACHER_KINDS:
        raise ValueError(f"unknown teacher kind {kind!r}: expected one of {list(TEACHER_KINDS)}")
    if path is None:
        raise ValueError("load_teacher needs a path to the teacher's files, got None")
    path = Path(path)
    common = dict(tokenizer=tokenizer, device=device, micro_batch_size=micro_batch_size, bf16=bf16)
    if kind.lower() == "vilt":
        from .vilt import load_vilt_teacher

        return load_vilt_teacher(path, **common, **options)
    if kind.lower() == "blip":
        from .blip import load_blip_teacher

        return load_blip_teacher(path, **common, **options)
    from .meter import load_meter_teacher

    return load_meter_teacher(path, **common, **options)
