"""METER's text encoder read like the official builder: heads, eps and activation from the RoBERTa
folder's config.json, checked against the checkpoint's shapes; the width // 64 rule only without one.

The checkpoint has a 32-wide RoBERTa with 4 heads, which the width // 64 rule would read as 1 head."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from dcd_ext.students import build_meter_student
from dcd_ext.teachers import load_teacher
from dcd_ext.teachers.meter import build_tiny_meter_checkpoint, clip_preprocess, load_meter_checkpoint
from teacher_fixtures import VOCAB_WORDS, random_images
from test_teachers_meter import TEXTS, _roberta, official_logits

torch.set_num_threads(1)

HEADS = 4
# non-default values, so that the test sees them taken from config.json
EPS, ACT = 1e-6, "gelu_new"


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    """(checkpoint, RoBERTa folder with config.json, official state dict, hparams)."""
    root = tmp_path_factory.mktemp("meter_narrow")
    ckpt = build_tiny_meter_checkpoint(root / "narrow.ckpt", root / "roberta", VOCAB_WORDS, image_size=32,
                                       patch_size=16, vision_width=64, vision_layers=1, text_hidden=32,
                                       text_layers=2, text_heads=HEADS, hidden=32, cross_layers=1, cross_heads=2,
                                       max_text_len=12, init_std=0.3, seed=7)
    config_path = root / "roberta" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(layer_norm_eps=EPS, hidden_act=ACT)
    config_path.write_text(json.dumps(config))
    raw = torch.load(ckpt, weights_only=True)
    return ckpt, root / "roberta", raw["state_dict"], raw["hyper_parameters"]["config"]


def _inputs(teacher, n_images=3):
    images = random_images([(32, 32), (40, 90), (100, 30)][:n_images], seed=11)
    pairs = torch.tensor([[i, j] for i in range(len(images)) for j in range(len(TEXTS))])
    pixels = torch.stack([clip_preprocess(images[i], teacher.image_size) for i, _ in pairs.tolist()])
    tokens = teacher.tokenize([TEXTS[j] for _, j in pairs.tolist()])
    return images, pairs, pixels, tokens["input_ids"], tokens["attention_mask"]


def _transformers_roberta(sd, folder, **changes):
    """transformers' RobertaModel built from folder/config.json (plus ``changes``) with the checkpoint's
    text weights."""
    from transformers import RobertaConfig, RobertaModel

    config = RobertaConfig.from_pretrained(str(folder), local_files_only=True, **changes)
    model = RobertaModel(config, add_pooling_layer=False)
    prefix = "text_transformer."
    weights = {k[len(prefix):]: v for k, v in sd.items()
               if k.startswith(prefix) and not k.startswith(prefix + "pooler.")}
    model.load_state_dict(weights, strict=True)
    return model.eval()


def _logits_with(sd, hparams, roberta, pixels, ids, mask):
    with torch.no_grad():
        return official_logits(sd, hparams, ids, mask, pixels,
                               text_states=roberta(input_ids=ids, attention_mask=mask).last_hidden_state)


def test_heads_eps_and_activation_come_from_config_json(narrow):
    ckpt, folder, sd, hparams = narrow
    teacher = load_teacher("meter", ckpt, tokenizer=folder)
    cfg = teacher.model.config
    assert (cfg.text_hidden, cfg.text_heads, cfg.text_layer_norm_eps, cfg.text_hidden_act) == (32, HEADS, EPS, ACT)
    assert teacher.model.load_report.text_config == str(folder / "config.json")

    images, pairs, pixels, ids, mask = _inputs(teacher)
    scores = teacher.score_pairs(images, TEXTS, pairs)
    expected = _logits_with(sd, hparams, _transformers_roberta(sd, folder), pixels, ids, mask)
    one_head = _logits_with(sd, hparams, _transformers_roberta(sd, folder, num_attention_heads=1), pixels, ids, mask)
    assert expected.std() > 0.05, "random weights too weak to tell pairs apart"
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
    assert (expected - one_head).abs().max() > 0.1, "4 and 1 heads should give different logits"


def test_without_config_json_the_width_rule_applies(narrow, tmp_path):
    ckpt, folder, sd, hparams = narrow
    bare = tmp_path / "tokenizer_only"
    shutil.copytree(folder, bare)
    (bare / "config.json").unlink()
    teacher = load_teacher("meter", ckpt, tokenizer=bare)
    assert teacher.model.config.text_heads == 1  # max(1, 32 // 64)
    assert teacher.model.load_report.text_config.startswith("shape rules")

    images, pairs, pixels, ids, mask = _inputs(teacher, n_images=2)
    with torch.no_grad():  # hand-written RoBERTa: 1 head, roberta-base's eps 1e-5 and erf-GELU
        expected = official_logits(sd, hparams, ids, mask, pixels, text_states=_roberta(sd, ids, mask, heads=1))
    right = _logits_with(sd, hparams, _transformers_roberta(sd, folder), pixels, ids, mask)
    scores = teacher.score_pairs(images, TEXTS, pairs)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
    assert (scores - right).abs().max() > 0.1


@pytest.mark.parametrize("field, value, found", [
    ("hidden_size", 64, 32), ("vocab_size", 7, None), ("num_hidden_layers", 3, 2),
    ("intermediate_size", 64, 128), ("max_position_embeddings", 40, 14), ("type_vocab_size", 2, 1),
])
def test_config_json_that_contradicts_the_checkpoint_is_an_error(narrow, tmp_path, field, value, found):
    ckpt, folder, _, _ = narrow
    wrong = tmp_path / "wrong_roberta"
    shutil.copytree(folder, wrong)
    config = json.loads((wrong / "config.json").read_text())
    found = config[field] if found is None else found
    assert config[field] == found != value
    config[field] = value
    (wrong / "config.json").write_text(json.dumps(config))
    pattern = f"{re.escape(str(wrong / 'config.json'))} does not match the checkpoint: {field} = {value}, " \
              f"but the checkpoint has {found}"
    with pytest.raises(ValueError, match=pattern):
        load_teacher("meter", ckpt, tokenizer=wrong)


def test_heads_must_divide_the_width_and_the_file_must_describe_roberta(narrow, tmp_path):
    ckpt, folder, _, _ = narrow
    for name, change, message in (("five_heads", {"num_attention_heads": 5}, "num_attention_heads = 5 does not divide"),
                                  ("vilt", {"model_type": "vilt"}, "describes a 'vilt' model")):
        other = tmp_path / name
        shutil.copytree(folder, other)
        config = json.loads((other / "config.json").read_text())
        config.update(change)
        (other / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match=f"{re.escape(str(other / 'config.json'))}.*{message}"):
            load_meter_checkpoint(ckpt, roberta_dir=other)


def test_saved_teacher_keeps_its_text_encoder_without_config_json(narrow, tmp_path):
    ckpt, folder, _, _ = narrow
    teacher = load_teacher("meter", ckpt, tokenizer=folder)
    out = teacher.save(tmp_path / "saved")
    assert not (out / "config.json").exists()  # the folder must still read as a METER teacher
    again = load_teacher("meter", out)
    assert again.model.load_report.text_config == "hyper_parameters.config.text_encoder_config"
    assert again.model.config == teacher.model.config
    images, pairs, *_ = _inputs(teacher, n_images=2)
    torch.testing.assert_close(again.score_pairs(images, TEXTS, pairs), teacher.score_pairs(images, TEXTS, pairs))


def test_meter_student_towers_use_the_config_json(narrow):
    ckpt, folder, _, _ = narrow
    student = build_meter_student(str(ckpt), str(folder), embed_dim=8)
    roberta = student.towers.text_transformer.config
    assert (roberta.num_attention_heads, roberta.layer_norm_eps, roberta.hidden_act) == (HEADS, EPS, ACT)
