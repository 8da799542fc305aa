"""The dual-encoder student: two towers, a linear projection each, L2 normalisation, a learnable logit scale."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

MAX_LOGIT_SCALE = 100.0


@dataclass
class StudentConfig:
    """Everything needed to rebuild a student's architecture (weights live next to it in safetensors)."""

    kind: str = "small"  # small | vilt | meter | clip | siglip | open_clip
    embed_dim: int = 256
    image_size: int = 32
    init_logit_scale: float = 1 / 0.07
    # small towers
    width: int = 256
    image_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    text_layers: int = 2
    heads: int = 4
    max_length: int = 32
    vocab: Optional[list[str]] = None
    # towers taken from a teacher: the backbone's own configuration, and how a ViLT tower pools its tokens
    backbone: Optional[dict] = None
    pooling: str = "cls"  # cls (ViLT's pooler on the first token) | mean (masked mean of the tokens)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StudentConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"student config has unknown keys {unknown}")
        return cls(**d)


class DualEncoder(nn.Module):
    """``towers`` provides ``image_features(pixels)``, ``text_features(ids, mask)``, ``image_dim``, ``text_dim``.

    ``project=False``: the towers already end in the model's own projections (a pretrained CLIP, SigLIP or
    open_clip model); no new linear layer is added and ``config.embed_dim`` must equal the towers' width.
    ``max_logit_scale``: the clamp of :meth:`clamp_logit_scale` (CLIP's 100; a pretrained model whose own
    scale is larger keeps it as the bound)."""

    def __init__(self, config: StudentConfig, towers: nn.Module, tokenizer: Callable[[list[str]], tuple[Tensor, Tensor]],
                 image_transform: Callable[[Image.Image], Tensor], project: bool = True,
                 max_logit_scale: float = MAX_LOGIT_SCALE):
        super().__init__()
        self.config = config
        self.towers = towers
        if project:
            self.image_proj = nn.Linear(towers.image_dim, config.embed_dim)
            self.text_proj = nn.Linear(towers.text_dim, config.embed_dim)
        else:
            if not towers.image_dim == towers.text_dim == config.embed_dim:
                raise ValueError(f"towers without a new projection must embed to embed_dim {config.embed_dim}; "
                                 f"got image {towers.image_dim}, text {towers.text_dim}")
            self.image_proj, self.text_proj = nn.Identity(), nn.Identity()
        self.max_logit_scale = float(max_logit_scale)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(config.init_logit_scale)))
        self.tokenizer = tokenizer
        self.image_transform = image_transform

    @property
    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.exp()

    def clamp_logit_scale(self) -> None:
        """Keep the scale in [1, max_logit_scale] (CLIP: 100), as CLIP does after every optimiser step."""
        with torch.no_grad():
            self.log_logit_scale.clamp_(0.0, math.log(self.max_logit_scale))

    def encode_image(self, pixels: Tensor) -> Tensor:
        return F.normalize(self.image_proj(self.towers.image_features(pixels)).float(), dim=-1)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return F.normalize(self.text_proj(self.towers.text_features(input_ids, attention_mask)).float(), dim=-1)

    def forward(self, pixels: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.encode_image(pixels), self.encode_text(input_ids, attention_mask), self.logit_scale

    def preprocess_images(self, images: list[Image.Image]) -> Tensor:
        return torch.stack([self.image_transform(im) for im in images])
