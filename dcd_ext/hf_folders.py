"""Hugging Face model folders as the hub ships them, shared by the students and teachers that read or
write one (CLIP, SigLIP, BLIP): the folder's ``model_type``, the processor files, the image-processor
backend. Imports nothing from the package, so either side may use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

IMAGE_PROCESSORS = {"clip": "CLIPImageProcessor", "siglip": "SiglipImageProcessor", "blip": "BlipImageProcessor"}


def folder_model_type(folder: str | os.PathLike) -> str | None:
    """``model_type`` of a Hugging Face folder's config.json (None when there is none, or no such key)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    value = config.get("model_type") if isinstance(config, dict) else None
    return value if isinstance(value, str) else None


def image_processor(kind: str, **kwargs):
    """The image processor class of ``kind`` with the backend transformers itself picks when it loads a
    folder (torchvision when installed, else PIL), built with ``kwargs``."""
    import transformers
    from transformers.utils import is_torchvision_available

    name = IMAGE_PROCESSORS[kind]
    return getattr(transformers, name if is_torchvision_available() else name + "Pil")(**kwargs)


def save_processor_files(processor, out_dir: str | os.PathLike) -> None:
    """A processor as hub folders ship it: ``preprocessor_config.json`` and the tokenizer's own files
    (``tokenizer.json``, ``tokenizer_config.json``, and what its class writes besides: ``vocab.txt`` for
    BERT; a CLIP tokenizer also gets ``vocab.json`` + ``merges.txt``)."""
    processor.image_processor.save_pretrained(out_dir)
    tokenizer = processor.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # the fast backend keeps the padding/truncation of its last call; transformers sets both on every
        # call, and a hub tokenizer.json carries neither
        backend.no_padding()
        backend.no_truncation()
    tokenizer.save_pretrained(out_dir)
    if backend is not None and type(tokenizer).__name__ == "CLIPTokenizer":
        backend.model.save(str(out_dir))  # vocab.json + merges.txt, as CLIP folders ship them
