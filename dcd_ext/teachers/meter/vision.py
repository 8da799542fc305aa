"""METER's image encoder: the CLIP ``VisualTransformer`` of the official ``clip_model.py``.

conv1 (no bias) -> flatten patches -> prepend class embedding -> add positional embedding ->
ln_pre -> residual blocks -> ln_post on *every* token (transformers' CLIP applies its
post-layernorm only to the pooled token, so only the blocks are reused from transformers:
``CLIPEncoderLayer`` is exactly CLIP's ResidualAttentionBlock with quick-GELU, pre-LN, eps 1e-5).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import MeterConfig

__all__ = ["MeterVisualEncoder", "resize_position_embedding"]


def _clip_layer(config: MeterConfig) -> nn.Module:
    from transformers import CLIPVisionConfig
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    clip_config = CLIPVisionConfig(
        hidden_size=config.vision_width,
        intermediate_size=config.vision_mlp,
        num_attention_heads=config.vision_heads,
        hidden_act="quick_gelu",
        layer_norm_eps=config.vision_layer_norm_eps,
        attention_dropout=0.0,
    )
    clip_config._attn_implementation = config.attn_implementation
    return CLIPEncoderLayer(clip_config)


class MeterVisualEncoder(nn.Module):
    def __init__(self, config: MeterConfig):
        super().__init__()
        width, patch = config.vision_width, config.vision_patch_size
        self.image_size = config.image_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(config.grid_size**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=config.vision_layer_norm_eps)
        self.layers = nn.ModuleList(_clip_layer(config) for _ in range(config.vision_layers))
        self.ln_post = nn.LayerNorm(width, eps=config.vision_layer_norm_eps)
        # transformers 4.x CLIPEncoderLayer also takes a causal mask and returns a tuple.
        self._layer_kwargs = (
            {"causal_attention_mask": None}
            if self.layers and "causal_attention_mask" in inspect.signature(self.layers[0].forward).parameters
            else {}
        )

    def forward(self, pixel_values: Tensor) -> Tensor:
        """[B, 3, S, S] normalised pixels -> [B, 1 + (S/patch)^2, width]."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3 or pixel_values.shape[-2:] != (self.image_size,) * 2:
            raise ValueError(
                f"pixel_values must have shape [B, 3, {self.image_size}, {self.image_size}], "
                f"got {tuple(pixel_values.shape)}"
            )
        x = self.conv1(pixel_values.to(self.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        for layer in self.layers:
            out = layer(x, attention_mask=None, **self._layer_kwargs)
            x = out[0] if isinstance(out, tuple) else out
        return self.ln_post(x)


def resize_position_embedding(pos: Tensor, grid_after: int) -> Tensor:
    """Resize a CLIP positional embedding [1 + g^2, W] to [1 + grid_after^2, W] the way METER's
    ``adapt_position_encoding`` does (bicubic, align_corners=False, class token kept)."""
    grid_before = round((pos.shape[0] - 1) ** 0.5)
    if grid_before**2 + 1 != pos.shape[0]:
        raise ValueError(f"positional embedding with {pos.shape[0]} rows is not 1 + a square grid")
    if grid_before == grid_after:
        return pos
    width = pos.shape[1]
    grid = pos[1:].reshape(grid_before, grid_before, width).permute(2, 0, 1).unsqueeze(0)
    grid = F.interpolate(grid.float(), size=(grid_after, grid_after), mode="bicubic").to(pos.dtype)
    grid = grid.squeeze(0).permute(1, 2, 0).reshape(-1, width)
    return torch.cat([pos[:1], grid], dim=0)
