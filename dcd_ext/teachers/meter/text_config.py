"""METER's text encoder architecture from a RoBERTa folder's ``config.json``.

The official builder takes its RoBERTa from ``RobertaModel.from_pretrained(config["tokenizer"])``,
so heads, layer-norm eps, activation and padding index come from that folder's ``config.json``
(with ``RobertaConfig``'s defaults for absent keys), not from the checkpoint. A checkpoint's tensors
fix the sizes, which are checked against the file; the head count cannot be read off any shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from ..checkpoint_io import CheckpointError

__all__ = ["ROBERTA_CONFIG_FILE", "read_roberta_config", "roberta_config_of", "text_sizes_from_roberta",
           "write_roberta_config"]

ROBERTA_CONFIG_FILE = "config.json"

# RobertaConfig attribute -> MeterConfig field
ROBERTA_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "text_hidden",
    "num_hidden_layers": "text_layers",
    "num_attention_heads": "text_heads",
    "intermediate_size": "text_intermediate",
    "max_position_embeddings": "text_max_positions",
    "type_vocab_size": "text_type_vocab_size",
    "pad_token_id": "text_pad_token_id",
    "layer_norm_eps": "text_layer_norm_eps",
    "hidden_act": "text_hidden_act",
}

# RobertaConfig attributes a checkpoint's tensors also fix, and where
SHAPE_CHECKED = {
    "vocab_size": "rows of text_transformer.embeddings.word_embeddings.weight",
    "hidden_size": "columns of text_transformer.embeddings.word_embeddings.weight",
    "num_hidden_layers": "text_transformer.encoder.layer.* blocks",
    "intermediate_size": "rows of text_transformer.encoder.layer.0.intermediate.dense.weight",
    "max_position_embeddings": "rows of text_transformer.embeddings.position_embeddings.weight",
    "type_vocab_size": "rows of text_transformer.embeddings.token_type_embeddings.weight",
}


def _complete(raw: Mapping, source: str) -> dict:
    """The RobertaConfig attributes METER uses, absent keys filled with RobertaConfig's defaults."""
    from transformers import RobertaConfig

    model_type = raw.get("model_type", "roberta")
    if model_type != "roberta":
        raise CheckpointError(f"{source} describes a {model_type!r} model, not the RoBERTa text encoder of METER")
    config = RobertaConfig.from_dict(dict(raw))
    return {name: getattr(config, name) for name in ROBERTA_FIELDS}


def read_roberta_config(folder) -> dict | None:
    """``folder/config.json`` as RoBERTa attributes (:data:`ROBERTA_FIELDS`), or None without one."""
    path = Path(folder) / ROBERTA_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable RoBERTa config ({exc})") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not a RoBERTa config (a JSON object)")
    return _complete(raw, str(path))


def text_sizes_from_roberta(roberta: Mapping, shapes: Mapping, source: str) -> dict:
    """MeterConfig text fields from RoBERTa attributes, after checking them against ``shapes`` (the
    MeterConfig text fields read off the checkpoint's tensors). Raises a CheckpointError (a ValueError)
    naming ``source`` and the field on a mismatch."""
    roberta = _complete(roberta, source)
    for name, where in SHAPE_CHECKED.items():
        expected = shapes[ROBERTA_FIELDS[name]]
        if roberta[name] != expected:
            raise CheckpointError(f"{source} does not match the checkpoint: {name} = {roberta[name]}, but the "
                                  f"checkpoint has {expected} ({where})")
    heads, hidden = roberta["num_attention_heads"], roberta["hidden_size"]
    if not isinstance(heads, int) or heads < 1 or hidden % heads:
        raise CheckpointError(f"{source}: num_attention_heads = {heads} does not divide hidden_size = {hidden}")
    return {field: roberta[name] for name, field in ROBERTA_FIELDS.items()}


def roberta_config_of(config) -> dict:
    """The RoBERTa attributes of a MeterConfig's text encoder."""
    return {name: getattr(config, field) for name, field in ROBERTA_FIELDS.items()}


def write_roberta_config(config, folder) -> Path:
    """Write the text encoder of a MeterConfig as ``folder/config.json``, as a RoBERTa folder holds it."""
    from transformers import RobertaConfig

    path = Path(folder) / ROBERTA_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    RobertaConfig(**roberta_config_of(config)).to_json_file(str(path))
    return path
