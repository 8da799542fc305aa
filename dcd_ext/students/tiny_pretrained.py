"""Tiny random-init pretrained dual encoders, written the way the hub ships them (tests and examples).

- :func:`build_tiny_clip`: a transformers ``CLIPModel`` folder (config.json, model.safetensors,
  preprocessor_config.json, tokenizer files of a CLIP BPE tokenizer), as openai/clip-vit-base-patch32.
- :func:`build_tiny_siglip`: a transformers ``SiglipModel`` folder with a Gemma ``tokenizer.json``, as
  google/siglip2-base-patch16-224 (model_type ``siglip``; SigLIP 1 folders ship a sentencepiece
  ``spiece.model`` instead, which transformers reads only with the sentencepiece package).
- :func:`build_tiny_open_clip`: an open_clip model configuration (a JSON file in open_clip's
  ``model_configs`` format) and a state-dict checkpoint, as open_clip's ``--pretrained`` files.

The weights depend only on ``seed``; the global RNG is left untouched.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from ..hf_folders import image_processor, save_processor_files
from ..teachers.hf_quiet import hf_progress_bars_off
from ..teachers.tokenizer_files import clip_bpe_tokenizer, gemma_char_tokenizer

__all__ = ["build_tiny_clip", "build_tiny_open_clip", "build_tiny_siglip"]


def _save(model, processor, out_dir: Path) -> Path:
    with hf_progress_bars_off():
        model.save_pretrained(out_dir)
    save_processor_files(processor, out_dir)
    return out_dir


def build_tiny_clip(out_dir, vocab_words: Iterable[str], *, image_size: int = 32, patch_size: int = 16,
                    hidden: int = 32, layers: int = 2, heads: int = 2, projection_dim: int = 16,
                    init_std: float = 0.02, seed: int = 0) -> Path:
    """Create ``out_dir`` holding a random-init CLIP: resize the shorter side to ``image_size`` and
    centre-crop it (CLIP's preprocessing), 77 text positions, a BPE vocabulary in which every word of
    ``vocab_words`` is one token."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = clip_bpe_tokenizer(vocab_words)
    common = dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, initializer_range=init_std)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=77,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **common),
        vision_config=dict(image_size=image_size, patch_size=patch_size, **common),
        projection_dim=projection_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    processor = CLIPProcessor(image_processor=image_processor(
        "clip", size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer)
    return _save(model, processor, out_dir)


def build_tiny_siglip(out_dir, *, image_size: int = 32, patch_size: int = 16, hidden: int = 32, layers: int = 2,
                      heads: int = 2, max_text_len: int = 64, seed: int = 0) -> Path:
    """Create ``out_dir`` holding a random-init SigLIP: resize to ``image_size`` squared, mean = std = 0.5,
    a character-level Gemma tokenizer, texts padded to ``max_text_len`` (the model's positions)."""
    from transformers import SiglipConfig, SiglipModel, SiglipProcessor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = gemma_char_tokenizer(model_max_length=max_text_len)
    common = dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                  num_attention_heads=heads)
    config = SiglipConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=max_text_len,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **common),
        vision_config=dict(image_size=image_size, patch_size=patch_size, **common),
        initializer_factor=1.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SiglipModel(config)
        with torch.no_grad():  # SigLIP's own initial values: log 10 and -10, as in the paper
            model.logit_scale.fill_(torch.log(torch.tensor(10.0)))
            model.logit_bias.fill_(-10.0)
    processor = SiglipProcessor(image_processor=image_processor(
        "siglip", size={"height": image_size, "width": image_size}), tokenizer=tokenizer)
    return _save(model, processor, out_dir)


def tiny_open_clip_config(image_size: int = 32, patch_size: int = 16, width: int = 32, layers: int = 2,
                          heads: int = 2, embed_dim: int = 16, context_length: int = 77) -> dict:
    """An open_clip model configuration (the ``model_configs/*.json`` format) of a tiny ViT CLIP with
    open_clip's own BPE tokenizer (vocabulary 49408)."""
    return {"embed_dim": embed_dim,
            "vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "patch_size": patch_size,
                           "head_width": width // heads},
            "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": width, "heads": heads,
                         "layers": layers}}


def build_tiny_open_clip(out_dir, name: str = "tiny-vit-dcd", *, seed: int = 0, **config) -> tuple[Path, Path]:
    """Write ``out_dir/<name>.json`` (the model configuration) and ``out_dir/<name>.pt`` (the model's state
    dict, as open_clip checkpoints are saved); returns (config file, checkpoint file)."""
    from .open_clip_student import import_open_clip

    open_clip = import_open_clip()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path, weights_path = out_dir / f"{name}.json", out_dir / f"{name}.pt"
    config_path.write_text(json.dumps(tiny_open_clip_config(**config), indent=1))
    open_clip.add_model_config(config_path)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns that a model without pretrained weights is random: it is meant to be
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(name, pretrained=None)
    finally:
        root.setLevel(level)
    torch.save(model.state_dict(), weights_path)
    return config_path, weights_path
