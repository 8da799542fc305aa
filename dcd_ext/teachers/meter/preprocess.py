"""METER's evaluation image transform for CLIP encoders (``clip_transform`` in the official code):
Resize(size, bicubic) of the shorter side -> CenterCrop(size) -> RGB -> [0, 1] -> CLIP mean/std.
Written with PIL + numpy, reproducing torchvision's size and crop arithmetic (no torchvision needed).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["CLIP_MEAN", "CLIP_STD", "clip_preprocess"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _resize_shorter(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    if (width <= height and width == size) or (height <= width and height == size):
        return image
    if width < height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    return image.resize((new_w, new_h), Image.BICUBIC)


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def clip_preprocess(image: Image.Image, size: int) -> Tensor:
    """One PIL image -> float32 [3, size, size]."""
    image = _center_crop(_resize_shorter(image, size), size).convert("RGB")
    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (tensor - mean) / std
