"""METER teacher: CLIP-ViT + RoBERTa + co-attention layers in plain PyTorch, official checkpoint loader."""

from .checkpoint import LoadReport, load_meter_checkpoint, meter_config_from_state_dict, save_meter_checkpoint
from .config import MeterConfig
from .model import MeterForRetrieval
from .preprocess import clip_preprocess
from .teacher import MeterTeacher, load_meter_teacher
from .tiny import build_tiny_meter_checkpoint

__all__ = [
    "MeterConfig",
    "MeterForRetrieval",
    "MeterTeacher",
    "LoadReport",
    "load_meter_checkpoint",
    "load_meter_teacher",
    "save_meter_checkpoint",
    "meter_config_from_state_dict",
    "build_tiny_meter_checkpoint",
    "clip_preprocess",
]
