"""Sizes of a METER (CLIP-ViT + RoBERTa + co-attention) retrieval model."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["MeterConfig"]


@dataclass
class MeterConfig:
    # Image encoder: METER's CLIP VisualTransformer. The official code builds ``layers - 1``
    # residual blocks from a CLIP checkpoint (11 of ViT-B/16's 12); ``vision_layers`` counts the
    # blocks actually built, i.e. the ones present in a METER checkpoint.
    vision_width: int = 768
    vision_layers: int = 11
    vision_heads: int = 12
    vision_patch_size: int = 16
    vision_mlp: int = 3072
    image_size: int = 384
    vision_layer_norm_eps: float = 1e-5
    # Text encoder: RoBERTa (roberta-base by default). Sizes come from the checkpoint's tensors; heads,
    # eps, activation and padding index from the RoBERTa folder's config.json when one is given.
    vocab_size: int = 50265
    text_hidden: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_intermediate: int = 3072
    text_max_positions: int = 514
    text_type_vocab_size: int = 1
    text_pad_token_id: int = 1
    text_layer_norm_eps: float = 1e-5
    text_hidden_act: str = "gelu"
    # Co-attention ("top") layers: BertCrossLayer built from a default RobertaConfig in the official
    # code, hence layer_norm_eps 1e-12 and erf-GELU.
    hidden: int = 768
    cross_layers: int = 6
    cross_heads: int = 12
    cross_intermediate: int = 3072
    cross_layer_norm_eps: float = 1e-12
    token_types: int = 2
    # Preprocessing / regularisation.
    max_text_len: int = 40
    dropout: float = 0.1  # RoBERTa and co-attention layers, training only (official drop_rate)
    attn_implementation: str = "sdpa"

    def __post_init__(self):
        for name in ("vision_width", "text_hidden", "hidden"):
            heads = {"vision_width": self.vision_heads, "text_hidden": self.text_heads,
                     "hidden": self.cross_heads}[name]
            if heads < 1 or getattr(self, name) % heads:
                raise ValueError(f"{name}={getattr(self, name)} is not divisible by its head count {heads}")
        if self.image_size % self.vision_patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of the patch size {self.vision_patch_size}")
        if self.max_text_len + self.text_pad_token_id + 1 > self.text_max_positions:
            raise ValueError(f"max_text_len={self.max_text_len} does not fit RoBERTa's "
                             f"{self.text_max_positions} position embeddings")
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {self.attn_implementation!r}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.vision_patch_size

    def to_dict(self) -> dict:
        return asdict(self)
