"""METER: the plain-PyTorch model and checkpoint loader against an independent re-computation of
the official forward (written here from the official code's structure, directly on the official
state-dict keys: nn.MultiheadAttention with fused in_proj for CLIP, hand-written post-LN BERT
layers with -10000 additive masks, RoBERTa padding-offset positions, 11-of-12-style block count)."""

from __future__ import annotations

import math
import os
import sys
import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dcd_ext.teachers import CheckpointError, load_teacher
from dcd_ext.teachers.meter import (
    MeterForRetrieval,
    build_tiny_meter_checkpoint,
    clip_preprocess,
    load_meter_checkpoint,
    load_meter_teacher,
)
from dcd_ext.teachers.tokenizer_files import write_byte_bpe_vocab
from teacher_fixtures import VOCAB_WORDS, random_images

torch.set_num_threads(1)

TEXTS = ["a red square left of a blue circle", "two green triangles", "a yellow circle above a red square", "zebra!"]
SIZES = [(32, 32), (40, 90), (100, 30)]
CROSS_HEADS = 2


# ---------------------------------------------------------------- independent reference forward
def _lin(sd, prefix, x):
    return F.linear(x, sd[prefix + ".weight"], sd[prefix + ".bias"])


def _ln(sd, prefix, x, eps):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps)


def _bert_attention(sd, prefix, x, context, additive_mask, heads, eps):
    b, lq, h = x.shape
    d = h // heads

    def split(t):
        return t.view(b, -1, heads, d).permute(0, 2, 1, 3)

    q, k, v = (split(_lin(sd, f"{prefix}self.{n}", t)) for n, t in (("query", x), ("key", context), ("value", context)))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d) + additive_mask
    ctx = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(b, lq, h)
    return _ln(sd, prefix + "output.LayerNorm", _lin(sd, prefix + "output.dense", ctx) + x, eps)


def _bert_ffn(sd, prefix, x, eps):
    hidden = F.gelu(_lin(sd, prefix + "intermediate.dense", x))
    return _ln(sd, prefix + "output.LayerNorm", _lin(sd, prefix + "output.dense", hidden) + x, eps)


def _extended(mask):
    return (1.0 - mask[:, None, None, :].float()) * -10000.0


def _clip_visual(sd, pixels):
    p = "vit_model.visual."
    conv = sd[p + "conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    x = F.conv2d(pixels, conv, stride=patch)
    x = x.reshape(x.shape[0], width, -1).permute(0, 2, 1)
    cls = sd[p + "class_embedding"] + torch.zeros(x.shape[0], 1, width)
    x = torch.cat([cls, x], dim=1) + sd[p + "positional_embedding"]
    x = _ln(sd, p + "ln_pre", x, 1e-5).permute(1, 0, 2)  # NLD -> LND as in CLIP
    blocks = sorted({int(k.split(".")[4]) for k in sd if k.startswith(p + "transformer.resblocks.")})
    for i in blocks:
        b = f"{p}transformer.resblocks.{i}."
        attn = torch.nn.MultiheadAttention(width, width // 64)
        attn.load_state_dict({"in_proj_weight": sd[b + "attn.in_proj_weight"], "in_proj_bias": sd[b + "attn.in_proj_bias"],
                              "out_proj.weight": sd[b + "attn.out_proj.weight"], "out_proj.bias": sd[b + "attn.out_proj.bias"]})
        h = _ln(sd, b + "ln_1", x, 1e-5)
        x = x + attn(h, h, h, need_weights=False)[0]
        h = _lin(sd, b + "mlp.c_fc", _ln(sd, b + "ln_2", x, 1e-5))
        x = x + _lin(sd, b + "mlp.c_proj", h * torch.sigmoid(1.702 * h))  # QuickGELU
    return _ln(sd, p + "ln_post", x.permute(1, 0, 2), 1e-5)


def _roberta(sd, ids, mask, pad=1, heads=None):
    p = "text_transformer."
    hidden = sd[p + "embeddings.word_embeddings.weight"].shape[1]
    heads = heads or hidden // 64
    not_pad = ids.ne(pad).long()
    positions = torch.cumsum(not_pad, dim=1) * not_pad + pad
    x = (sd[p + "embeddings.word_embeddings.weight"][ids] + sd[p + "embeddings.position_embeddings.weight"][positions]
         + sd[p + "embeddings.token_type_embeddings.weight"][0])
    x = _ln(sd, p + "embeddings.LayerNorm", x, 1e-5)
    layers = sorted({int(k.split(".")[3]) for k in sd if k.startswith(p + "encoder.layer.")})
    for i in layers:
        prefix = f"{p}encoder.layer.{i}."
        x = _bert_attention(sd, prefix + "attention.", x, x, _extended(mask), heads, 1e-5)
        x = _bert_ffn(sd, prefix, x, 1e-5)
    return x


def official_logits(sd, hparams, ids, mask, pixels, text_states=None):
    """``text_states``: the RoBERTa output to use instead of ``_roberta``'s (width // 64 heads)."""
    text = _lin(sd, "cross_modal_text_transform", _roberta(sd, ids, mask) if text_states is None else text_states)
    image = _lin(sd, "cross_modal_image_transform", _clip_visual(sd, pixels))
    image_mask = torch.ones(image.shape[:2], dtype=torch.long)
    text = text + sd["token_type_embeddings.weight"][0]
    image = image + sd["token_type_embeddings.weight"][1]
    text_ext, image_ext = _extended(mask), _extended(image_mask)
    heads = hparams["num_heads"]
    layers = sorted({int(k.split(".")[1]) for k in sd if k.startswith("cross_modal_text_layers.")})
    x, y = text, image
    for i in layers:
        def cross(prefix, a, b, a_ext, b_ext):
            a = _bert_attention(sd, prefix + "attention.", a, a, a_ext, heads, 1e-12)
            a = _bert_attention(sd, prefix + "crossattention.", a, b, b_ext, heads, 1e-12)
            return _bert_ffn(sd, prefix, a, 1e-12)

        x, y = (cross(f"cross_modal_text_layers.{i}.", x, y, text_ext, image_ext),
                cross(f"cross_modal_image_layers.{i}.", y, x, image_ext, text_ext))
    pooled = torch.cat([_lin(sd, "cross_modal_text_pooler.dense", x[:, 0]).tanh(),
                        _lin(sd, "cross_modal_image_pooler.dense", y[:, 0]).tanh()], dim=-1)
    return _lin(sd, "rank_output", pooled)[:, 0]


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def meter_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("meter")
    # widths 128 -> 2 CLIP / RoBERTa heads; init_std 0.2 so that scores clearly depend on the inputs
    ckpt = build_tiny_meter_checkpoint(root / "tiny.ckpt", root / "tokenizer", VOCAB_WORDS, image_size=32,
                                       patch_size=16, vision_width=128, vision_layers=2, text_hidden=128,
                                       text_layers=2, hidden=64, cross_layers=2, cross_heads=CROSS_HEADS,
                                       max_text_len=12, init_std=0.2, seed=3)
    return ckpt, root / "tokenizer"


@pytest.fixture(scope="module")
def official(meter_files):
    raw = torch.load(meter_files[0], weights_only=True)
    return raw["state_dict"], raw["hyper_parameters"]["config"]


@pytest.fixture(scope="module")
def teacher(meter_files):
    return load_teacher("meter", meter_files[0], tokenizer=meter_files[1], micro_batch_size=4)


def all_pairs(n_images, n_texts):
    return torch.tensor([[i, j] for i in range(n_images) for j in range(n_texts)])


def reference_scores(teacher, official, images, texts, pairs):
    sd, hparams = official
    pixels = torch.stack([clip_preprocess(images[i], teacher.image_size) for i, _ in pairs.tolist()])
    tokens = teacher.tokenizer([texts[j] for _, j in pairs.tolist()], padding="max_length", truncation=True,
                               max_length=teacher.max_text_len, return_tensors="pt")
    with torch.no_grad():
        return official_logits(sd, hparams, tokens["input_ids"], tokens["attention_mask"], pixels)


# ---------------------------------------------------------------- tests
def test_scores_equal_official_forward_recomputation(teacher, official):
    images = random_images(SIZES, seed=0)
    pairs = all_pairs(len(images), len(TEXTS))
    scores = teacher.score_pairs(images, TEXTS, pairs)
    expected = reference_scores(teacher, official, images, TEXTS, pairs)
    assert expected.std() > 0.05, "random weights too weak to tell pairs apart"
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)


def test_model_forward_and_stages(teacher, official):
    model = teacher.model
    assert isinstance(model, MeterForRetrieval) and not model.training
    cfg = model.config
    assert (cfg.vision_width, cfg.vision_layers, cfg.vision_heads, cfg.image_size) == (128, 2, 2, 32)
    assert (cfg.text_hidden, cfg.text_layers, cfg.text_heads, cfg.hidden, cfg.cross_layers, cfg.cross_heads) == (128, 2, 2, 64, 2, 2)
    assert cfg.max_text_len == 12
    images = random_images(SIZES, seed=1)
    pixels = torch.stack([clip_preprocess(im, 32) for im in images])
    tokens = teacher.tokenizer(TEXTS[:3], padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(tokens["input_ids"], tokens["attention_mask"], pixels)
        expected = official_logits(*official, tokens["input_ids"], tokens["attention_mask"], pixels)
    assert logits.shape == (3,)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_eager_attention_matches_sdpa(meter_files, teacher):
    eager = load_meter_teacher(meter_files[0], tokenizer=meter_files[1], attn_implementation="eager")
    images = random_images(SIZES, seed=2)
    pairs = all_pairs(3, 3)
    torch.testing.assert_close(eager.score_pairs(images, TEXTS, pairs), teacher.score_pairs(images, TEXTS, pairs),
                               rtol=1e-4, atol=1e-5)


def test_micro_batch_size_caching_and_rng_independence(meter_files):
    images = random_images(SIZES, seed=3)
    pairs = torch.tensor([[2, 1], [0, 0], [1, 3], [2, 1], [0, 2], [1, 0], [2, 3]])
    state = torch.get_rng_state()
    results = []
    for micro in (1, 2, 64):
        torch.manual_seed(micro)
        results.append(load_meter_teacher(meter_files[0], tokenizer=meter_files[1], micro_batch_size=micro)
                       .score_pairs(images, TEXTS, pairs))
    # float32 GEMMs block differently per batch size, so sums round differently: measured up to 3.7e-6 on
    # scores of magnitude ~0.3 with MKL on Intel AVX-512 cores (0 on the AMD machines)
    tol = dict(rtol=1e-5, atol=1e-5)
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], **tol)
    assert results[0][0] == results[0][3]
    teacher = load_meter_teacher(meter_files[0], tokenizer=meter_files[1])
    torch.set_rng_state(state)
    scored = teacher.score([images[i] for i, _ in pairs.tolist()], [TEXTS[j] for _, j in pairs.tolist()])
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(scored, results[0], **tol)


def test_unimodal_work_runs_once_per_item(teacher, monkeypatch):
    model = teacher.model
    seen = {"images": 0, "texts": 0}
    encode_image, encode_text = model.encode_image, model.encode_text

    def count_image(pixels):
        seen["images"] += pixels.shape[0]
        return encode_image(pixels)

    def count_text(ids, mask):
        seen["texts"] += ids.shape[0]
        return encode_text(ids, mask)

    monkeypatch.setattr(model, "encode_image", count_image)
    monkeypatch.setattr(model, "encode_text", count_text)
    teacher.score_pairs(random_images(SIZES, seed=4), TEXTS, all_pairs(3, 4))  # 12 pairs
    assert seen == {"images": 3, "texts": 4}


def test_clip_preprocessing_matches_hand_computed_resize_and_crop():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))  # h=40, w=60
    out = clip_preprocess(image, 32)
    # torchvision Resize(32): shorter side 40 -> 32, longer int(32 * 60 / 40) = 48; CenterCrop: left
    # round((48 - 32) / 2) = 8, top 0
    resized = np.asarray(image.resize((48, 32), Image.BICUBIC), dtype=np.float32)[:, 8:40] / 255.0
    mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
    expected = torch.from_numpy((resized - mean) / std).permute(2, 0, 1)
    assert out.shape == (3, 32, 32)
    torch.testing.assert_close(out, expected)
    grey = clip_preprocess(Image.new("L", (32, 32), 128), 32)  # converted to RGB
    torch.testing.assert_close(grey[:, 0, 0], (torch.tensor([128 / 255] * 3) - torch.tensor(mean)) / torch.tensor(std))


def _fake_lightning_modules():
    """Stand-ins for pytorch_lightning classes, only so that torch.save can pickle references."""
    names = ["pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing",
             "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    modules = {name: types.ModuleType(name) for name in names}

    class AttributeDict(dict):
        pass

    class ModelCheckpoint:
        pass

    for cls, module in ((AttributeDict, "pytorch_lightning.utilities.parsing"),
                        (ModelCheckpoint, "pytorch_lightning.callbacks.model_checkpoint")):
        cls.__module__, cls.__qualname__ = module, cls.__name__
        setattr(modules[module], cls.__name__, cls)
    return modules, AttributeDict, ModelCheckpoint


def test_official_lightning_layout_loads_safely_and_reports_keys(official, meter_files, tmp_path):
    sd, hparams = official
    state = dict(sd)
    width = sd["vit_model.visual.conv1.weight"].shape[0]
    state.update({  # keys that official checkpoints carry but retrieval does not use
        "text_transformer.embeddings.position_ids": torch.arange(14)[None],
        "vit_model.positional_embedding": torch.zeros(77, width),
        "vit_model.ln_final.weight": torch.ones(width), "vit_model.ln_final.bias": torch.zeros(width),
        "mystery_head.weight": torch.zeros(3),
    })
    modules, AttributeDict, ModelCheckpoint = _fake_lightning_modules()
    sys.modules.update(modules)
    try:
        torch.save({"state_dict": state, "hyper_parameters": AttributeDict(config=hparams),
                    "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5), "best_model_path": "x"}},
                    "optimizer_states": [{"state": {}, "param_groups": [{"lr": 5e-6}]}],
                    "epoch": 9, "global_step": 100, "pytorch-lightning_version": "1.3.2"}, tmp_path / "official.ckpt")
    finally:
        for name in modules:
            del sys.modules[name]
    with pytest.warns(UserWarning, match="mystery_head.weight"):
        model = load_meter_checkpoint(tmp_path / "official.ckpt")
    report = model.load_report
    assert report.unexpected == ["mystery_head.weight"]
    assert {"itm_score.fc.weight", "text_transformer.pooler.dense.weight", "vit_model.ln_final.weight",
            "text_transformer.embeddings.position_ids", "vit_model.positional_embedding"} <= set(report.ignored)
    assert report.hparams["num_heads"] == CROSS_HEADS
    reference = load_meter_checkpoint(meter_files[0])
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_rank_head_derived_from_itm_head_and_missing_keys_are_errors(official, tmp_path):
    sd, hparams = official
    pretrained = {k: v for k, v in sd.items() if not k.startswith("rank_output")}
    torch.save({"state_dict": pretrained, "hyper_parameters": {"config": hparams}}, tmp_path / "pretrained.ckpt")
    model = load_meter_checkpoint(tmp_path / "pretrained.ckpt")
    assert model.load_report.derived == ["rank_output.weight", "rank_output.bias"]
    assert torch.equal(model.rank_output.weight, sd["itm_score.fc.weight"][1:])
    broken = {k: v for k, v in pretrained.items() if not k.startswith("itm_score")}
    broken.pop("cross_modal_image_layers.1.output.dense.weight")
    torch.save({"state_dict": broken, "hyper_parameters": {"config": hparams}}, tmp_path / "broken.ckpt")
    with pytest.raises(CheckpointError, match=r"broken\.ckpt is missing .*cross_modal_image_layers\.1\.output\.dense\.weight"):
        load_meter_checkpoint(tmp_path / "broken.ckpt")
    torch.save({"state_dict": {"foo": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a METER"):
        load_meter_checkpoint(tmp_path / "other.ckpt")


def test_resolution_change_resizes_position_embedding(official, meter_files):
    sd, _ = official
    model = load_meter_checkpoint(meter_files[0], image_size=48)
    pos = sd["vit_model.visual.positional_embedding"]  # 1 + 2x2 rows
    grid = pos[1:].reshape(2, 2, -1).permute(2, 0, 1)[None]
    expected = torch.cat([pos[:1], F.interpolate(grid, size=(3, 3), mode="bicubic")[0].permute(1, 2, 0).reshape(9, -1)])
    torch.testing.assert_close(model.visual.positional_embedding.detach(), expected)
    assert model.config.image_size == 48 and model.load_report.resized
    teacher = load_meter_teacher(meter_files[0], tokenizer=meter_files[1], image_size=48)
    assert teacher.score(random_images([(60, 80)]), ["a red square"]).shape == (1,)


def test_unsafe_corrupt_and_truncated_checkpoints(meter_files, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"state_dict": {}, "payload": Exploit()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match=r"evil\.ckpt .*allow-list.*system"):
        load_meter_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()
    data = meter_files[0].read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt is corrupt or truncated"):
        load_meter_checkpoint(tmp_path / "truncated.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"garbage\.ckpt"):
        load_meter_checkpoint(tmp_path / "garbage.ckpt")
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_meter_checkpoint(tmp_path / "nope.ckpt")


def test_tokenizer_errors(meter_files, tmp_path):
    ckpt, tokenizer = meter_files
    with pytest.raises(ValueError, match="tokenizer="):
        load_teacher("meter", ckpt)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no RoBERTa tokenizer files in .*empty"):
        load_teacher("meter", ckpt, tokenizer=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing-tokenizer"):
        load_teacher("meter", ckpt, tokenizer=tmp_path / "missing-tokenizer")
    write_byte_bpe_vocab(tmp_path / "big", [f"word{i}" for i in range(300)])
    with pytest.raises(CheckpointError, match="wrong tokenizer"):
        load_teacher("meter", ckpt, tokenizer=tmp_path / "big")


def test_save_reload_round_trip_in_official_layout(teacher, tmp_path):
    out = teacher.save(tmp_path / "saved")
    saved = torch.load(out / "meter.ckpt", weights_only=True)["state_dict"]
    assert "vit_model.visual.transformer.resblocks.0.attn.in_proj_weight" in saved
    again = load_teacher("meter", out)  # tokenizer files saved next to meter.ckpt
    images = random_images(SIZES, seed=5)
    pairs = all_pairs(3, 2)
    torch.testing.assert_close(again.score_pairs(images, TEXTS, pairs), teacher.score_pairs(images, TEXTS, pairs))


def test_bf16_autocast_is_close(meter_files, teacher):
    fast = load_meter_teacher(meter_files[0], tokenizer=meter_files[1], bf16=True)
    images = random_images(SIZES, seed=6)
    pairs = all_pairs(3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = fast.score_pairs(images, TEXTS, pairs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, teacher.score_pairs(images, TEXTS, pairs), rtol=0.1, atol=0.1)
