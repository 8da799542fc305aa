"""A METER teacher's unimodal encoders as the two towers of a student.

METER encodes the image with CLIP's visual transformer and the text with RoBERTa before its co-attention
layers; those two encoders, taken alone, are a dual encoder. Each tower returns its first token's final
state: CLIP's class token (after ``ln_post``) and RoBERTa's ``<s>``.
"""

from __future__ import annotations

from torch import Tensor, nn


class MeterTowers(nn.Module):
    def __init__(self, visual: nn.Module, text_transformer: nn.Module, image_size: int):
        super().__init__()
        self.visual = visual  # dcd_ext.teachers.meter.vision.MeterVisualEncoder
        self.text_transformer = text_transformer  # transformers.RobertaModel
        self.image_size = image_size
        self.image_dim = visual.ln_post.normalized_shape[0]
        self.text_dim = text_transformer.config.hidden_size

    @classmethod
    def from_meter(cls, model: nn.Module) -> "MeterTowers":
        """The towers of a ``MeterForRetrieval`` (shared, not copied)."""
        return cls(model.visual, model.text_transformer, model.config.image_size)

    @classmethod
    def from_checkpoint(cls, path: str, roberta_dir: str | None = None) -> "MeterTowers":
        """``roberta_dir``: the RoBERTa folder whose config.json gives the text encoder's heads (see
        ``load_meter_checkpoint``)."""
        from ..teachers.meter import load_meter_checkpoint
        return cls.from_meter(load_meter_checkpoint(path, roberta_dir=roberta_dir))

    @classmethod
    def from_config(cls, backbone: dict) -> "MeterTowers":
        """Towers with unset weights of the given METER sizes (a saved student's weights are loaded next)."""
        from ..teachers.meter import MeterConfig, MeterForRetrieval
        return cls.from_meter(MeterForRetrieval(MeterConfig(**backbone), initialize=False))

    def image_features(self, pixels: Tensor) -> Tensor:
        return self.visual(pixels)[:, 0]

    def text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.text_transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
