"""BLIP teacher (transformers' BlipForImageTextRetrieval ITM head from a local directory)."""

from .teacher import BlipTeacher, load_blip_teacher
from .tiny import build_tiny_blip

__all__ = ["BlipTeacher", "build_tiny_blip", "load_blip_teacher"]
