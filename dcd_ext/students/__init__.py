"""Dual-encoder students: small configurable towers, towers initialised from a ViLT or METER teacher, or a
pretrained dual encoder (a CLIP or SigLIP folder via ``load_student``, an open_clip model via
``build_open_clip_student``; docs/own_models.md); and shallow cross-encoder (fusion) students built from a
loaded teacher (``build_fusion_student``)."""

from .dual_encoder import DualEncoder, StudentConfig
from .factory import (build_meter_student, build_small_student, build_vilt_student, is_student_folder,
                      load_student, save_student, student_fingerprint, student_folder_kind)
from .fusion import FusionStudent, build_fusion_student, load_fusion_student
from .open_clip_student import build_open_clip_student
from .tokenizer import WordTokenizer, build_vocab
from .transforms import ImageTransform

__all__ = ["DualEncoder", "ImageTransform", "StudentConfig", "WordTokenizer", "build_meter_student",
           "build_open_clip_student", "build_small_student", "build_vilt_student", "build_vocab",
           "is_student_folder", "load_student", "save_student", "student_fingerprint", "student_folder_kind",
           "FusionStudent", "build_fusion_student", "load_fusion_student"]
