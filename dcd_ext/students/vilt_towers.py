"""A ViLT teacher's single transformer, run on one modality at a time, as the two towers of a student.

ViLT embeds text (BERT embeddings, modality type 0) and image patches (modality type 1) and runs the
concatenation through one encoder. Here the same embeddings and encoder see text alone or patches alone;
the weights are shared by the two towers, as they were in the teacher. Unlike ViLT's own patch sampling
(a random subset drawn from the global RNG), every patch is used, so embeddings are deterministic.

Pooling: ``cls`` is ViLT's pooler on the first token (what a pre-trained ViLT's heads read). From random
weights it is nearly the same vector for every input (the first token barely attends to the others at
init), so a contrastive loss on it sits at log(batch) for epochs; ``mean`` (masked mean of the tokens)
learns at once and is what warming up a random-init ViLT needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


POOLINGS = ("cls", "mean")


class ViltTowers(nn.Module):
    def __init__(self, vilt_model: nn.Module, pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
        self.vilt = vilt_model  # transformers.ViltModel
        self.pooling = pooling
        self.image_dim = self.text_dim = vilt_model.config.hidden_size

    def encode(self, embeddings: Tensor, mask: Tensor | None) -> Tensor:
        additive = None
        if mask is not None:
            additive = (1.0 - mask[:, None, None, :].to(embeddings.dtype)) * torch.finfo(embeddings.dtype).min
        hidden = embeddings
        for layer in self.vilt.encoder.layer:
            hidden = layer(hidden, additive)[0]
        hidden = self.vilt.layernorm(hidden)
        if self.pooling == "mean":
            if mask is None:
                return hidden.mean(dim=1)
            weights = mask.to(hidden.dtype)[..., None]
            return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
        return self.vilt.pooler(hidden) if self.vilt.pooler is not None else hidden[:, 0]

    def text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        emb = self.vilt.embeddings
        x = emb.text_embeddings(input_ids=input_ids)
        x = x + emb.token_type_embeddings(torch.zeros_like(input_ids))
        return self.encode(x, attention_mask)

    def image_features(self, pixels: Tensor) -> Tensor:
        emb = self.vilt.embeddings
        cfg = self.vilt.config
        patches = emb.patch_embeddings(pixels)  # [B, H, h, w]
        b, c, h, w = patches.shape
        grid = cfg.image_size // cfg.patch_size
        pos = emb.position_embeddings[:, 1:, :].transpose(1, 2).reshape(1, c, grid, grid)
        pos = F.interpolate(pos, size=(h, w), mode="bilinear", align_corners=True)
        x = (patches + pos).flatten(2).transpose(1, 2)
        cls = (emb.cls_token + emb.position_embeddings[:, :1, :]).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + emb.token_type_embeddings(torch.ones(x.shape[:2], dtype=torch.int64, device=x.device))
        return self.encode(x, None)
