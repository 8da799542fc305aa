"""Image preprocessing of the small and ViLT-initialised students (PIL in, float tensor [3, S, S] out).

METER-initialised students use METER's own CLIP transform (``dcd_ext.teachers.meter.clip_preprocess``).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

HALF = (0.5, 0.5, 0.5)


class ImageTransform:
    """Square bicubic resize to ``size`` (whole image kept), then per-channel normalisation."""

    def __init__(self, size: int, mean=HALF, std=HALF):
        if size < 1:
            raise ValueError(f"size must be positive; got {size}")
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> Tensor:
        image = image.convert("RGB")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - self.mean) / self.std
