"""METER for image-text retrieval, in plain PyTorch (``METERTransformerSS.infer`` + ``rank_output``).

Text:  RoBERTa embeddings + all encoder layers (transformers' ``RobertaModel``, padding mask)
       -> cross_modal_text_transform -> + token_type_embeddings(0)
Image: CLIP visual transformer (ln_post on all tokens) -> cross_modal_image_transform
       -> + token_type_embeddings(1); the image mask is all ones
Joint: N co-attention layer pairs; each step computes both streams from the previous step's
       outputs (text layer: self-attn on text, cross-attn to image; image layer: the reverse)
Head:  [text pooler(first text token), image pooler(first image token)] (2·hidden) -> rank_output

Attribute names follow the official state-dict keys except inside the CLIP encoder (see
``checkpoint.py`` for the mapping).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from .config import MeterConfig
from .cross_layer import BertCrossLayer, Pooler
from .vision import MeterVisualEncoder

__all__ = ["MeterForRetrieval"]


def _roberta(config: MeterConfig) -> nn.Module:
    from transformers import RobertaConfig, RobertaModel

    roberta_config = RobertaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.text_hidden,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        intermediate_size=config.text_intermediate,
        max_position_embeddings=config.text_max_positions,
        type_vocab_size=config.text_type_vocab_size,
        pad_token_id=config.text_pad_token_id,
        layer_norm_eps=config.text_layer_norm_eps,
        hidden_act=config.text_hidden_act,
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
    )
    roberta_config._attn_implementation = config.attn_implementation
    return RobertaModel(roberta_config, add_pooling_layer=False)


def _skip_default_init():
    """Skip torch's and transformers' default initialisation while building (it takes ~10 s for
    METER-base on a CPU); every weight is then set by ``init_weights`` or a checkpoint."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: just pay for the default init
        return contextlib.nullcontext()
    return no_init_weights()


class MeterForRetrieval(nn.Module):
    """METER retrieval model: ``forward(input_ids, attention_mask, pixel_values) -> Tensor[B]``.

    ``encode_text``, ``encode_image`` and ``joint`` expose the three stages so that unimodal
    features can be cached and only the joint layers run per pair. ``initialize=False`` leaves the
    weights unset, for callers that load every weight right away."""

    def __init__(self, config: MeterConfig, *, initialize: bool = True):
        super().__init__()
        with _skip_default_init():
            self._build(config)
        if initialize:
            self.init_weights()

    def _build(self, config: MeterConfig) -> None:
        self.config = config
        self.visual = MeterVisualEncoder(config)
        self.text_transformer = _roberta(config)
        self.cross_modal_text_transform = nn.Linear(config.text_hidden, config.hidden)
        self.cross_modal_image_transform = nn.Linear(config.vision_width, config.hidden)
        self.token_type_embeddings = nn.Embedding(config.token_types, config.hidden)
        eager = config.attn_implementation == "eager"

        def cross_layers():
            return nn.ModuleList(
                BertCrossLayer(config.hidden, config.cross_heads, config.cross_intermediate,
                               config.cross_layer_norm_eps, config.dropout, eager)
                for _ in range(config.cross_layers)
            )

        self.cross_modal_text_layers = cross_layers()
        self.cross_modal_image_layers = cross_layers()
        self.cross_modal_text_pooler = Pooler(config.hidden)
        self.cross_modal_image_pooler = Pooler(config.hidden)
        self.rank_output = nn.Linear(2 * config.hidden, 1)

    def init_weights(self, generator: torch.Generator | None = None, std: float = 0.02) -> "MeterForRetrieval":
        """Random initialisation as in METER's ``objectives.init_weights`` (normal(0, std) linear
        and embedding weights, zero biases, unit layer norms); CLIP's class/positional embeddings
        use CLIP's width**-0.5 scale."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d)):
                    module.weight.normal_(0.0, std, generator=generator)
                    if getattr(module, "bias", None) is not None:
                        module.bias.zero_()
                elif isinstance(module, nn.LayerNorm):
                    module.weight.fill_(1.0)
                    module.bias.zero_()
            scale = self.config.vision_width**-0.5
            self.visual.class_embedding.normal_(0.0, scale, generator=generator)
            self.visual.positional_embedding.normal_(0.0, scale, generator=generator)
        return self

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """[B, T] ids and 0/1 mask -> [B, T, hidden] text-stream inputs (token type 0 added)."""
        hidden = self.text_transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        text = self.cross_modal_text_transform(hidden)
        return text + self.token_type_embeddings(torch.zeros_like(input_ids))

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """[B, 3, S, S] -> [B, 1 + (S/patch)^2, hidden] image-stream inputs (token type 1 added)."""
        image = self.cross_modal_image_transform(self.visual(pixel_values))
        types = torch.ones(image.shape[:2], dtype=torch.long, device=image.device)
        return image + self.token_type_embeddings(types)

    def joint(self, text: Tensor, text_mask: Tensor, image: Tensor, image_mask: Tensor | None = None) -> Tensor:
        """Co-attention layers, poolers and rank head: one logit per row, [B]."""
        text_keep = text_mask.bool()
        image_keep = (torch.ones(image.shape[:2], dtype=torch.bool, device=image.device)
                      if image_mask is None else image_mask.bool())
        x, y = text, image
        for text_layer, image_layer in zip(self.cross_modal_text_layers, self.cross_modal_image_layers):
            x, y = text_layer(x, y, text_keep, image_keep), image_layer(y, x, image_keep, text_keep)
        pooled = torch.cat([self.cross_modal_text_pooler(x), self.cross_modal_image_pooler(y)], dim=-1)
        return self.rank_output(pooled)[:, 0]

    def forward(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor) -> Tensor:
        return self.joint(self.encode_text(input_ids, attention_mask), attention_mask,
                          self.encode_image(pixel_values))
