"""ViLT teacher (transformers' ViltForImageAndTextRetrieval from a local directory)."""

from .teacher import ViltTeacher, load_vilt_teacher, vilt_image_processor
from .tiny import build_tiny_vilt

__all__ = ["ViltTeacher", "load_vilt_teacher", "vilt_image_processor", "build_tiny_vilt"]
