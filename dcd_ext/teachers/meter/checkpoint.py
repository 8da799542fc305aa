"""The METER authors' Lightning checkpoints <-> :class:`MeterForRetrieval`.

Official ``state_dict`` keys (``METERTransformerSS``):
  vit_model.visual.{conv1.weight, class_embedding, positional_embedding, ln_pre.*, ln_post.*}
  vit_model.visual.transformer.resblocks.{i}.{attn.in_proj_weight, attn.in_proj_bias,
      attn.out_proj.*, ln_1.*, mlp.c_fc.*, mlp.c_proj.*, ln_2.*}
  text_transformer.{embeddings.*, encoder.layer.{i}.*}           (a transformers RobertaModel)
  cross_modal_{text,image}_transform.*, token_type_embeddings.weight,
  cross_modal_{text,image}_layers.{i}.*, cross_modal_{text,image}_pooler.dense.*, rank_output.*
Known keys that retrieval does not use (``itm_score``, ``mlm_score``, the RoBERTa pooler, CLIP's
unused text-side ``vit_model.positional_embedding``/``ln_final``, ``position_ids`` buffers) are
ignored; any other extra key is reported as unexpected; a missing key is an error. Sizes are read
off tensor shapes; head counts follow the official builders (CLIP: width // 64; RoBERTa: the RoBERTa
folder's ``config.json`` when one is given, see ``text_config.py``, else width // 64; the
co-attention layers: ``hyper_parameters.config.num_heads``, else hidden // 64).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint_io import CheckpointError, load_checkpoint_file
from .config import MeterConfig
from .model import MeterForRetrieval
from .text_config import ROBERTA_CONFIG_FILE, read_roberta_config, roberta_config_of, text_sizes_from_roberta
from .vision import resize_position_embedding

__all__ = [
    "LoadReport",
    "load_meter_checkpoint",
    "save_meter_checkpoint",
    "meter_config_from_state_dict",
    "official_to_internal",
    "internal_to_official",
]

_VISUAL = "vit_model.visual."
_BLOCK = re.compile(r"^vit_model\.visual\.transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_RENAMES = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_IDENTITY_PREFIXES = (
    "cross_modal_text_transform.", "cross_modal_image_transform.", "token_type_embeddings.",
    "cross_modal_text_layers.", "cross_modal_image_layers.", "cross_modal_text_pooler.",
    "cross_modal_image_pooler.", "rank_output.",
)
_IGNORED = re.compile(
    r"^(itm_score\.|mlm_score\.|text_transformer\.pooler\.|vit_model\.positional_embedding$|"
    r"vit_model\.ln_final\.|vit_model\.visual\.proj$|.*position_ids$|.*token_type_ids$)"
)


@dataclass
class LoadReport:
    """What :func:`load_meter_checkpoint` did besides a one-to-one copy."""

    path: str = ""
    ignored: list[str] = field(default_factory=list)      # known keys retrieval does not use
    unexpected: list[str] = field(default_factory=list)   # unknown keys (also warned about)
    derived: list[str] = field(default_factory=list)      # e.g. rank_output from itm_score
    resized: list[str] = field(default_factory=list)      # e.g. positional embedding 24x24 -> 18x18
    hparams: dict = field(default_factory=dict)           # hyper_parameters["config"], if present
    text_config: str = ""  # where the RoBERTa heads/eps came from: a config.json, the hparams, or shape rules


def official_to_internal(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """Rename official keys to :class:`MeterForRetrieval` keys, splitting fused ``in_proj`` q/k/v.
    Returns (internal state dict, ignored keys, unexpected keys)."""
    out: dict[str, Tensor] = {}
    ignored, unexpected = [], []
    for key, value in state.items():
        block = _BLOCK.match(key)
        if block:
            index, rest = block.groups()
            prefix = f"visual.layers.{index}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[-1]
                if value.shape[0] % 3:
                    raise CheckpointError(f"{key} has {value.shape[0]} rows, not 3 x width")
                for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = part
            elif rest in _BLOCK_RENAMES:
                out[prefix + _BLOCK_RENAMES[rest]] = value
            else:
                unexpected.append(key)
        elif _IGNORED.match(key):
            ignored.append(key)
        elif key.startswith(_VISUAL):
            rest = key[len(_VISUAL):]
            if rest in ("conv1.weight", "class_embedding", "positional_embedding") or rest.startswith(("ln_pre.", "ln_post.")):
                out["visual." + rest] = value
            else:
                unexpected.append(key)
        elif key.startswith(("text_transformer.embeddings.", "text_transformer.encoder.")) or key.startswith(_IDENTITY_PREFIXES):
            out[key] = value
        else:
            unexpected.append(key)
    return out, ignored, unexpected


def internal_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`official_to_internal` (q/k/v fused back into ``in_proj``)."""
    inverse = {v: k for k, v in _BLOCK_RENAMES.items()}
    out: dict[str, Tensor] = {}
    pending: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        if key.startswith("visual.layers."):
            index, rest = key[len("visual.layers."):].split(".", 1)
            prefix = f"{_VISUAL}transformer.resblocks.{index}."
            match = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if match:
                pending.setdefault((prefix, match.group(2)), {})[match.group(1)] = value
            else:
                out[prefix + inverse[rest]] = value
        elif key.startswith("visual."):
            out[_VISUAL + key[len("visual."):]] = value
        else:
            out[key] = value
    for (prefix, kind), parts in pending.items():
        out[f"{prefix}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    indices = {int(m.group(1)) for key in state if (m := re.match(pattern, key))}
    if indices != set(range(len(indices))):
        raise CheckpointError(f"layer indices matching {pattern!r} are not contiguous: {sorted(indices)}")
    return len(indices)


def _require(state: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in state:
        raise CheckpointError(f"missing key {key!r}: not a METER (CLIP-ViT + RoBERTa) checkpoint")
    return state[key]


# Written by save_meter_checkpoint (official checkpoints lack it): the text encoder's RoBERTa attributes.
TEXT_ENCODER_HPARAM = "text_encoder_config"


def meter_config_from_state_dict(state: Mapping[str, Tensor], hparams: Mapping | None = None, *,
                                 roberta: Mapping | None = None, roberta_source: str = "the RoBERTa config",
                                 **overrides) -> MeterConfig:
    """Architecture of an official-layout METER state dict: sizes read off its tensor shapes, the text
    encoder's other attributes from ``roberta`` (a RoBERTa ``config.json``'s contents, checked against the
    shapes; ``roberta_source`` names it in errors), else from ``hparams["text_encoder_config"]``, else
    the official shape rule (heads = width // 64, roberta-base's eps)."""
    hparams = dict(hparams or {})
    if "swin" in str(hparams.get("vit", "")).lower():
        raise CheckpointError("METER checkpoints with a Swin image encoder are not supported (CLIP-ViT only)")
    tokenizer = str(hparams.get("tokenizer", "roberta"))
    if "roberta" not in tokenizer.lower():
        raise CheckpointError(f"only RoBERTa-based METER checkpoints are supported, this one uses {tokenizer!r}")
    conv = _require(state, _VISUAL + "conv1.weight")
    pos = _require(state, _VISUAL + "positional_embedding")
    words = _require(state, "text_transformer.embeddings.word_embeddings.weight")
    text_transform = _require(state, "cross_modal_text_transform.weight")
    width, patch = conv.shape[0], conv.shape[-1]
    grid = round((pos.shape[0] - 1) ** 0.5)
    if grid * grid + 1 != pos.shape[0]:
        raise CheckpointError(f"positional embedding with {pos.shape[0]} rows is not 1 + a square grid")
    text_hidden = words.shape[1]
    hidden = text_transform.shape[0]
    sizes = dict(
        vision_width=width,
        vision_layers=_count(state, r"^vit_model\.visual\.transformer\.resblocks\.(\d+)\."),
        vision_heads=max(1, width // 64),
        vision_patch_size=patch,
        vision_mlp=_require(state, _VISUAL + "transformer.resblocks.0.mlp.c_fc.weight").shape[0],
        image_size=grid * patch,
        vocab_size=words.shape[0],
        text_hidden=text_hidden,
        text_layers=_count(state, r"^text_transformer\.encoder\.layer\.(\d+)\."),
        text_heads=max(1, text_hidden // 64),
        text_intermediate=_require(state, "text_transformer.encoder.layer.0.intermediate.dense.weight").shape[0],
        text_max_positions=_require(state, "text_transformer.embeddings.position_embeddings.weight").shape[0],
        text_type_vocab_size=_require(state, "text_transformer.embeddings.token_type_embeddings.weight").shape[0],
        hidden=hidden,
        cross_layers=_count(state, r"^cross_modal_text_layers\.(\d+)\."),
        cross_heads=int(hparams.get("num_heads", max(1, hidden // 64))),
        cross_intermediate=_require(state, "cross_modal_text_layers.0.intermediate.dense.weight").shape[0],
        token_types=_require(state, "token_type_embeddings.weight").shape[0],
        max_text_len=int(hparams.get("max_text_len", 40)),
    )
    if text_transform.shape[1] != text_hidden:
        raise CheckpointError(f"cross_modal_text_transform expects {text_transform.shape[1]}-d text features, "
                              f"the RoBERTa encoder gives {text_hidden}")
    if roberta is None and isinstance(hparams.get(TEXT_ENCODER_HPARAM), Mapping):
        roberta, roberta_source = hparams[TEXT_ENCODER_HPARAM], f"hyper_parameters.config.{TEXT_ENCODER_HPARAM}"
    if roberta is not None:
        sizes.update(text_sizes_from_roberta(roberta, sizes, roberta_source))
    sizes.update(overrides)
    return MeterConfig(**sizes)


def _unwrap(obj, path: Path) -> tuple[dict[str, Tensor], dict]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        hyper = obj.get("hyper_parameters") or {}
        hparams = hyper.get("config", hyper) if isinstance(hyper, Mapping) else {}
        state = obj["state_dict"]
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        state, hparams = obj, {}
    else:
        raise CheckpointError(f"{path} holds neither a Lightning checkpoint with 'state_dict' nor a state dict")
    return dict(state), dict(hparams) if isinstance(hparams, Mapping) else {}


def load_meter_checkpoint(path, *, roberta_dir=None, image_size: int | None = None, allow_pickle: bool = False,
                          attn_implementation: str = "sdpa", dropout: float = 0.1,
                          warn_unexpected: bool = True) -> MeterForRetrieval:
    """Load an official METER fine-tuned checkpoint (e.g. ``meter_clip16_288_roberta_flickr.ckpt``)
    into a :class:`MeterForRetrieval` in eval mode on the CPU.

    ``roberta_dir``: the RoBERTa folder the checkpoint was trained with (the official
    ``config["tokenizer"]``). Its ``config.json``, when present, gives the text encoder's heads, eps,
    activation and padding index, as the official builder's ``RobertaModel.from_pretrained`` does, and
    must agree with the checkpoint's tensor shapes (``CheckpointError``, a ValueError, naming the file
    and the field otherwise). Without one, RoBERTa's heads follow the width // 64 rule.

    ``image_size`` resizes the CLIP positional embedding (bicubic, as METER does) when it differs
    from the checkpoint's resolution. Loading is ``weights_only`` (see ``checkpoint_io``);
    ``allow_pickle=True`` opts into full unpickling for trusted files. The returned model carries a
    :class:`LoadReport` as ``model.load_report``."""
    path = Path(path)
    state, hparams = _unwrap(load_checkpoint_file(path, allow_pickle=allow_pickle), path)
    report = LoadReport(path=str(path), hparams=hparams)
    if "rank_output.weight" not in state and "itm_score.fc.weight" in state:
        # METER initialises the retrieval head from the ITM head's "match" row before fine-tuning.
        state["rank_output.weight"] = state["itm_score.fc.weight"][1:]
        state["rank_output.bias"] = state["itm_score.fc.bias"][1:]
        report.derived += ["rank_output.weight", "rank_output.bias"]
    roberta = read_roberta_config(roberta_dir) if roberta_dir is not None else None
    if roberta is not None:
        report.text_config = str(Path(roberta_dir) / ROBERTA_CONFIG_FILE)
    elif isinstance(hparams.get(TEXT_ENCODER_HPARAM), Mapping):
        report.text_config = f"hyper_parameters.config.{TEXT_ENCODER_HPARAM}"
    else:
        report.text_config = "shape rules (heads = width // 64)"
    try:
        config = meter_config_from_state_dict(state, hparams, roberta=roberta, roberta_source=report.text_config,
                                              attn_implementation=attn_implementation, dropout=dropout)
    except (TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, CheckpointError):
            raise CheckpointError(f"{path}: {exc}") from exc
        raise CheckpointError(f"{path}: inconsistent METER checkpoint ({exc})") from exc
    if image_size is not None and image_size != config.image_size:
        key = _VISUAL + "positional_embedding"
        if image_size % config.vision_patch_size:
            raise ValueError(f"image_size={image_size} is not a multiple of the patch size {config.vision_patch_size}")
        state[key] = resize_position_embedding(state[key], image_size // config.vision_patch_size)
        report.resized.append(f"{key}: {config.image_size} -> {image_size}")
        config.image_size = image_size
    internal, report.ignored, report.unexpected = official_to_internal(state)
    if report.unexpected and warn_unexpected:
        warnings.warn(f"{path}: ignoring {len(report.unexpected)} unexpected keys: {report.unexpected[:10]}",
                      stacklevel=2)

    model = MeterForRetrieval(config, initialize=False)  # every weight is loaded below (strict)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(internal))
    if missing:
        raise CheckpointError(f"{path} is missing {len(missing)} METER weights, e.g. {missing[:8]}")
    wrong = [f"{k}: {tuple(internal[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if internal[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{path} has weights of unexpected shape: {wrong[:8]}")
    model.load_state_dict({k: internal[k] for k in expected}, strict=True)
    model.load_report = report
    return model.eval()


def save_meter_checkpoint(model: MeterForRetrieval, path, *, extra_state: Mapping[str, Tensor] | None = None,
                          text_encoder_config: bool = True) -> Path:
    """Save ``model`` in the official Lightning layout (``{"state_dict", "hyper_parameters"}``) so
    that :func:`load_meter_checkpoint` (or the official code) reads it. ``text_encoder_config`` also
    stores the RoBERTa attributes (heads, eps, ...) in the hyper-parameters, so that reloading needs no
    RoBERTa ``config.json``; False writes only what official checkpoints hold."""
    from ... import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    state = internal_to_official({k: v.detach().cpu() for k, v in model.state_dict().items()})
    state.update(extra_state or {})
    hparams = {
        "hidden_size": config.hidden,
        "num_heads": config.cross_heads,
        "num_top_layer": config.cross_layers,
        "image_size": config.image_size,
        "patch_size": config.vision_patch_size,
        "max_text_len": config.max_text_len,
        "input_image_embed_size": config.vision_width,
        "input_text_embed_size": config.text_hidden,
        "tokenizer": "roberta",
        "vit": f"ViT/{config.vision_patch_size}",
        "loss_names": {"irtr": 1},
    }
    if text_encoder_config:
        hparams[TEXT_ENCODER_HPARAM] = roberta_config_of(config)
    torch.save({"state_dict": state, "hyper_parameters": {"config": hparams},
                "epoch": 0, "global_step": 0, "dcd_ext_version": __version__}, path)
    return path
