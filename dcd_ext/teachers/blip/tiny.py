"""Write a small random-init BLIP ITM teacher the way the hub ships one (Salesforce/blip-itm-base-coco)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from ...hf_folders import image_processor, save_processor_files
from ..hf_quiet import hf_progress_bars_off
from ..tokenizer_files import tiny_wordpiece_folder

__all__ = ["build_tiny_blip"]


def build_tiny_blip(out_dir, vocab_words: Iterable[str], *, image_size: int = 32, patch_size: int = 16,
                    hidden: int = 32, layers: int = 2, heads: int = 2, init_std: float = 0.02,
                    seed: int = 0) -> Path:
    """Create ``out_dir`` with config.json, model.safetensors (``BlipForImageTextRetrieval``), a WordPiece
    tokenizer built from ``vocab_words`` (plus single characters) and a preprocessor config (resize to
    ``image_size`` squared, bicubic, CLIP mean/std, as BLIP's). The weights depend only on ``seed``."""
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipProcessor

    out_dir, tokenizer = tiny_wordpiece_folder(out_dir, vocab_words, image_size, patch_size)
    config = BlipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, encoder_hidden_size=hidden,
                         intermediate_size=4 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         max_position_embeddings=64, initializer_range=init_std,
                         pad_token_id=tokenizer.pad_token_id, sep_token_id=tokenizer.sep_token_id,
                         bos_token_id=tokenizer.cls_token_id),
        vision_config=dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
                           initializer_range=init_std),
        image_text_hidden_size=hidden, initializer_range=init_std)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlipForImageTextRetrieval(config)
    processor = BlipProcessor(image_processor("blip", size={"height": image_size, "width": image_size}),
                              tokenizer)
    with hf_progress_bars_off():
        model.save_pretrained(out_dir)
    save_processor_files(processor, out_dir)
    return out_dir
