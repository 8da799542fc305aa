"""Dual-encoder students: small towers, towers taken from ViLT and METER teachers, save and load."""

from __future__ import annotations

import math
import os

import pytest
import torch

from dcd_ext.data import make_synthetic_split, vocabulary
from dcd_ext.students import (StudentConfig, WordTokenizer, build_meter_student, build_small_student,
                              build_vilt_student, build_vocab, load_student, save_student)


@pytest.fixture(scope="module")
def scenes():
    return make_synthetic_split("students", 6, seed=0)


def test_word_tokenizer_vocab_ids_and_padding():
    vocab = build_vocab(["a red circle", "a blue circle", "Red, red!"])
    assert vocab == ["[PAD]", "[UNK]", "[CLS]", "red", "a", "circle", "blue"]
    tok = WordTokenizer(vocab, max_length=4)
    ids, mask = tok(["a red circle left", "blue"])
    assert ids.tolist() == [[2, 4, 3, 5], [2, 6, 0, 0]]  # [CLS] first, truncated to 4, padded with 0
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert tok(["purple"])[0].tolist() == [[2, 1]]  # unknown word
    with pytest.raises(ValueError, match="must start with"):
        WordTokenizer(["a", "b", "c"])


def test_small_student_embeds_unit_vectors_with_a_learnable_scale(scenes):
    torch.manual_seed(0)
    student = build_small_student(scenes.captions, width=32, embed_dim=16, image_channels=[8, 8, 16], text_layers=1)
    pixels = student.preprocess_images(scenes.images[:4])
    ids, mask = student.tokenizer(scenes.captions[:4])
    img, txt, scale = student(pixels, ids, mask)
    assert img.shape == (4, 16) and txt.shape == (4, 16) and img.dtype == torch.float32
    torch.testing.assert_close(img.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(txt.norm(dim=1), torch.ones(4))
    assert math.isclose(scale.item(), 1 / 0.07, rel_tol=1e-6)
    (img @ txt.T * scale).sum().backward()
    assert student.log_logit_scale.grad is not None
    with torch.no_grad():
        student.log_logit_scale.fill_(10.0)
    student.clamp_logit_scale()
    assert math.isclose(student.logit_scale.item(), 100.0, rel_tol=1e-6)


def test_text_tower_is_order_sensitive_and_ignores_padding(scenes):
    torch.manual_seed(0)
    student = build_small_student(scenes.captions, width=32, embed_dim=16, image_channels=[8, 8, 16]).eval()
    ids, mask = student.tokenizer(["a red circle left of a blue square", "a blue circle left of a red square"])
    txt = student.encode_text(ids, mask)
    assert not torch.allclose(txt[0], txt[1])
    short_ids, short_mask = student.tokenizer(["a red circle"])
    padded = torch.cat([short_ids, torch.zeros(1, 5, dtype=torch.int64)], dim=1)
    padded_mask = torch.cat([short_mask, torch.zeros(1, 5, dtype=torch.int64)], dim=1)
    torch.testing.assert_close(student.encode_text(short_ids, short_mask), student.encode_text(padded, padded_mask))


def test_small_student_save_and_load_round_trip(tmp_path, scenes):
    torch.manual_seed(0)
    student = build_small_student(scenes.captions, width=32, embed_dim=16, image_channels=[8, 8, 16]).eval()
    save_student(student, str(tmp_path / "s"))
    again = load_student(str(tmp_path / "s"))
    assert again.config == student.config
    pixels = student.preprocess_images(scenes.images)
    ids, mask = student.tokenizer(scenes.captions)
    torch.testing.assert_close(again.encode_image(pixels), student.encode_image(pixels), rtol=0, atol=0)
    torch.testing.assert_close(again.encode_text(ids, mask), student.encode_text(ids, mask), rtol=0, atol=0)


def test_student_config_and_tower_errors(tmp_path, scenes):
    with pytest.raises(ValueError, match="unknown keys"):
        StudentConfig.from_dict({"kind": "small", "colour": "red"})
    with pytest.raises(ValueError, match="divisible by 2\\*\\*3"):
        build_small_student(scenes.captions, image_size=36)
    with pytest.raises(ValueError, match="captions"):
        build_small_student([])
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_student(str(tmp_path))
    student = build_small_student(scenes.captions, width=32, embed_dim=8, image_channels=[8, 8, 8], max_length=4)
    with pytest.raises(ValueError, match="at most 4"):
        student.towers.text(torch.ones(1, 6, dtype=torch.int64), torch.ones(1, 6, dtype=torch.int64))


# ---- towers taken from teachers ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_vilt_dir(tmp_path_factory):
    from dcd_ext.teachers.vilt import build_tiny_vilt
    out = tmp_path_factory.mktemp("vilt")
    build_tiny_vilt(out, vocabulary(), image_size=32, patch_size=8, hidden=32, layers=2, heads=2,
                    max_text_len=16, seed=0)
    return str(out)


def test_vilt_student_runs_the_teacher_transformer_on_one_modality(tiny_vilt_dir, scenes):
    """Reference: transformers' own ViltModel forward with the other modality given zero tokens."""
    student = build_vilt_student(tiny_vilt_dir, embed_dim=16).eval()
    vilt = student.towers.vilt
    assert student.config.image_size == 32 and student.config.max_length == 16
    ids, mask = student.tokenizer(scenes.captions[:3])
    pixels = student.preprocess_images(scenes.images[:3])
    none = torch.zeros(3, 0, dtype=torch.int64)
    with torch.no_grad():
        ref_text = vilt(input_ids=ids, attention_mask=mask, image_embeds=torch.zeros(3, 0, 32),
                        pixel_mask=none).pooler_output
        # ViLT shuffles its patches (global RNG); the pooled [CLS] state does not depend on their order
        ref_image = vilt(input_ids=none, attention_mask=none, pixel_values=pixels,
                         pixel_mask=torch.ones(3, 32, 32, dtype=torch.int64)).pooler_output
        torch.testing.assert_close(student.towers.text_features(ids, mask), ref_text)
        torch.testing.assert_close(student.towers.image_features(pixels), ref_image, rtol=1e-5, atol=1e-6)


def test_vilt_student_starts_from_the_teacher_weights_and_reloads(tiny_vilt_dir, tmp_path, scenes):
    from transformers import ViltForImageAndTextRetrieval
    teacher = ViltForImageAndTextRetrieval.from_pretrained(tiny_vilt_dir)
    student = build_vilt_student(tiny_vilt_dir, embed_dim=16).eval()
    for name, param in teacher.vilt.state_dict().items():
        torch.testing.assert_close(student.towers.vilt.state_dict()[name], param, rtol=0, atol=0)
    save_student(student, str(tmp_path / "v"))
    assert os.path.isfile(tmp_path / "v" / "tokenizer_config.json")  # the teacher tokenizer travels along
    again = load_student(str(tmp_path / "v"))
    ids, mask = again.tokenizer(scenes.captions)
    torch.testing.assert_close(ids, student.tokenizer(scenes.captions)[0])
    pixels = student.preprocess_images(scenes.images)
    torch.testing.assert_close(again.encode_image(pixels), student.encode_image(pixels))
    torch.testing.assert_close(again.encode_text(ids, mask), student.encode_text(ids, mask))


def test_meter_student_uses_the_teacher_unimodal_encoders(tmp_path, scenes):
    from dcd_ext.teachers.meter import build_tiny_meter_checkpoint, clip_preprocess, load_meter_checkpoint
    ckpt = tmp_path / "meter.ckpt"
    build_tiny_meter_checkpoint(ckpt, tmp_path / "tok", vocabulary(), image_size=32, patch_size=16, seed=0)
    student = build_meter_student(str(ckpt), str(tmp_path / "tok"), embed_dim=16).eval()
    meter = load_meter_checkpoint(ckpt)
    ids, mask = student.tokenizer(scenes.captions[:3])
    pixels = student.preprocess_images(scenes.images[:3])
    torch.testing.assert_close(pixels[0], clip_preprocess(scenes.images[0], 32))
    with torch.no_grad():
        # METER's own first stage; its token-type-0 text embedding is what the co-attention layers see
        hidden = meter.text_transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(student.towers.text_features(ids, mask), hidden[:, 0])
        torch.testing.assert_close(student.towers.image_features(pixels), meter.visual(pixels)[:, 0])
    save_student(student, str(tmp_path / "m"))
    again = load_student(str(tmp_path / "m"))
    with torch.no_grad():
        torch.testing.assert_close(again.encode_text(ids, mask), student.encode_text(ids, mask))
        torch.testing.assert_close(again.encode_image(pixels), student.encode_image(pixels))


def test_default_channels_keep_the_flattened_map_small():
    from dcd_ext.students.small_towers import ConvImageTower, default_channels
    assert default_channels(224) == [32, 64, 128, 256, 256]  # 7 x 7 at the end
    assert default_channels(32) == [32, 64]  # 8 x 8
    tower = ConvImageTower(224, tuple(default_channels(224)), width=64)
    assert tower(torch.zeros(1, 3, 224, 224)).shape == (1, 64)
    assert tower.head[1].in_features == 256 * 7 * 7
