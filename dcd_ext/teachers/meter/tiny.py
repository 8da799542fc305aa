"""Write a small random-init METER checkpoint (official Lightning layout) and its RoBERTa folder."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from ..tokenizer_files import load_roberta_tokenizer, write_byte_bpe_vocab
from .checkpoint import save_meter_checkpoint
from .config import MeterConfig
from .model import MeterForRetrieval
from .text_config import write_roberta_config

__all__ = ["build_tiny_meter_checkpoint"]


def build_tiny_meter_checkpoint(path, tokenizer_dir, vocab_words: Iterable[str] = ("a photo of a thing",), *,
                                image_size: int = 32, patch_size: int = 16, vision_width: int = 64,
                                vision_layers: int = 2, text_hidden: int = 64, text_layers: int = 2,
                                text_heads: int | None = None, hidden: int = 64, cross_layers: int = 2,
                                cross_heads: int = 2, max_text_len: int = 16, init_std: float = 0.02,
                                seed: int = 0) -> Path:
    """Write a random-init METER checkpoint to ``path`` and, to ``tokenizer_dir``, a RoBERTa folder: a
    byte-level BPE tokenizer learnt from ``vocab_words`` and the text encoder's ``config.json``.
    CLIP heads follow the official width // 64 rule (so ``vision_width`` must be a multiple of 64);
    RoBERTa has ``text_heads`` heads (default text_hidden // 64), recorded only in that config.json as
    for official checkpoints; the co-attention layers use ``cross_heads``, stored as
    ``hyper_parameters.config.num_heads`` like the official checkpoints.

    Like official irtr checkpoints it also holds an ``itm_score`` head and a RoBERTa pooler that
    retrieval ignores. The weights depend only on ``seed`` (the global RNG is left untouched)."""
    if vision_width % 64:
        raise ValueError(f"vision_width={vision_width} must be a multiple of 64 (CLIP's head size)")
    if text_heads is None:
        if text_hidden % 64:
            raise ValueError(f"text_hidden={text_hidden} is not a multiple of 64: pass text_heads")
        text_heads = text_hidden // 64
    write_byte_bpe_vocab(tokenizer_dir, vocab_words)
    tokenizer = load_roberta_tokenizer(tokenizer_dir)
    config = MeterConfig(
        vision_width=vision_width, vision_layers=vision_layers, vision_heads=vision_width // 64,
        vision_patch_size=patch_size, vision_mlp=4 * vision_width, image_size=image_size,
        vocab_size=len(tokenizer), text_hidden=text_hidden, text_layers=text_layers,
        text_heads=text_heads, text_intermediate=4 * text_hidden,
        text_max_positions=max_text_len + 2, hidden=hidden, cross_layers=cross_layers,
        cross_heads=cross_heads, cross_intermediate=4 * hidden, max_text_len=max_text_len,
    )
    generator = torch.Generator().manual_seed(seed)
    model = MeterForRetrieval(config, initialize=False).init_weights(generator, std=init_std)
    extra = {
        "itm_score.fc.weight": torch.randn(2, 2 * hidden, generator=generator) * 0.02,
        "itm_score.fc.bias": torch.zeros(2),
        "text_transformer.pooler.dense.weight": torch.randn(text_hidden, text_hidden, generator=generator) * 0.02,
        "text_transformer.pooler.dense.bias": torch.zeros(text_hidden),
    }
    write_roberta_config(config, tokenizer_dir)
    return save_meter_checkpoint(model, path, extra_state=extra, text_encoder_config=False)
