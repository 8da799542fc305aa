"""Small configurable towers: a strided CNN for images and a transformer encoder for text."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def default_channels(image_size: int, first: int = 32, widest: int = 256, final_side: int = 8) -> list[int]:
    """One stage per halving until the map is at most ``final_side`` wide, doubling the width up to ``widest``
    (224 px: 5 stages to 7 x 7; 32 px: 2 stages to 8 x 8), so the flattened map stays small."""
    channels, side = [], image_size
    while side > final_side and side % 2 == 0:
        channels.append(min(widest, first * 2 ** len(channels)))
        side //= 2
    return channels or [first]


class ConvImageTower(nn.Module):
    """Strided conv stages, then the whole (flattened) feature map through a linear layer.

    Flattening instead of global pooling keeps where things are, which relations ("left of") need.
    """

    def __init__(self, image_size: int, channels: tuple[int, ...] = (32, 64, 128), width: int = 256):
        super().__init__()
        if image_size % (2 ** len(channels)):
            raise ValueError(f"image_size {image_size} must be divisible by 2**{len(channels)} (one halving "
                             "per conv stage)")
        layers, c_in = [], 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.stages = nn.Sequential(*layers)
        side = image_size // 2 ** len(channels)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, width), nn.ReLU(inplace=True),
                                  nn.Linear(width, width))
        self.out_dim = width

    def forward(self, pixels: Tensor) -> Tensor:
        return self.head(self.stages(pixels))


class TransformerTextTower(nn.Module):
    """Token and position embeddings, pre-norm transformer layers, the [CLS] (first) token's state."""

    def __init__(self, vocab_size: int, width: int = 256, layers: int = 2, heads: int = 4, max_length: int = 32):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.token = nn.Embedding(vocab_size, width, padding_idx=0)
        self.position = nn.Parameter(torch.randn(max_length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out_dim = width

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        length = input_ids.shape[1]
        if length > self.position.shape[0]:
            raise ValueError(f"input_ids has {length} tokens; this tower takes at most {self.position.shape[0]}")
        x = self.token(input_ids) + self.position[:length]
        x = self.encoder(x, src_key_padding_mask=attention_mask == 0)
        return self.norm(x[:, 0])


class SmallTowers(nn.Module):
    """The pair of small towers behind :class:`~dcd_ext.students.dual_encoder.DualEncoder`."""

    def __init__(self, vocab_size: int, image_size: int, image_channels: tuple[int, ...] = (32, 64, 128),
                 width: int = 256, text_layers: int = 2, heads: int = 4, max_length: int = 32):
        super().__init__()
        self.image = ConvImageTower(image_size, tuple(image_channels), width)
        self.text = TransformerTextTower(vocab_size, width, text_layers, heads, max_length)
        self.image_dim, self.text_dim = self.image.out_dim, self.text.out_dim

    def image_features(self, pixels: Tensor) -> Tensor:
        return self.image(pixels)

    def text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.text(input_ids, attention_mask)
