"""Dual-encoder students (small configurable towers, or towers initialised from a ViLT or METER teacher) and
shallow cross-encoder (fusion) students built from a loaded teacher."""

from .dual_encoder import DualEncoder, StudentConfig
from .factory import (build_meter_student, build_small_student, build_vilt_student, is_student_folder,
                      load_student, save_student)
from .fusion import FusionStudent, build_fusion_student, load_fusion_student
from .tokenizer import WordTokenizer, build_vocab
from .transforms import ImageTransform

__all__ = ["DualEncoder", "ImageTransform", "StudentConfig", "WordTokenizer", "build_meter_student",
           "build_small_student", "build_vilt_student", "build_vocab", "is_student_folder", "load_student",
           "save_student", "FusionStudent", "build_fusion_student", "load_fusion_student"]
