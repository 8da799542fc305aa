"""Cross-encoder teachers at full size (random init): milliseconds per (image, text) pair on this machine.

- ViLT-B/32 at 384 (transformers' ViltForImageAndTextRetrieval, 12 layers x 768)
- METER-base at 384 (CLIP ViT-B/16 with METER's 11 blocks, RoBERTa-base, 6 co-attention layers per stream)

``score_pairs``: the full call on an all-pairs grid (each image and text encoded once, amortised);
``joint``: only the per-pair layers on already-encoded items, the cost that grows with the number of
pairs. ``extra_info["ms_per_pair"]`` holds the mean time divided by the pair count. Under
``--benchmark-disable`` one image and one text are scored once (same full-size models).
"""

from __future__ import annotations

import pytest
import torch

from dcd_ext.teachers.base import _pad

CAPTION = "a man in a red jacket rides a bicycle past a row of parked cars on a wet city street"


def _vilt_teacher(tmp_path):
    from transformers import ViltConfig, ViltForImageAndTextRetrieval

    from dcd_ext.teachers.tokenizer_files import load_bert_tokenizer, write_wordpiece_vocab
    from dcd_ext.teachers.vilt import ViltTeacher, vilt_image_processor

    write_wordpiece_vocab(tmp_path, CAPTION.split())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ViltForImageAndTextRetrieval(ViltConfig())  # ViLT-B/32: 768 x 12, 384 px, patch 32, 40 tokens
    return ViltTeacher(model, load_bert_tokenizer(tmp_path), vilt_image_processor(384, 32), micro_batch_size=16)


def _meter_teacher(tmp_path):
    from dcd_ext.teachers.meter import MeterConfig, MeterForRetrieval, MeterTeacher
    from dcd_ext.teachers.tokenizer_files import load_roberta_tokenizer, write_byte_bpe_vocab

    write_byte_bpe_vocab(tmp_path, CAPTION.split())
    model = MeterForRetrieval(MeterConfig(image_size=384), initialize=False)
    model.init_weights(torch.Generator().manual_seed(0))
    return MeterTeacher(model, load_roberta_tokenizer(tmp_path), micro_batch_size=16)


BUILDERS = {"vilt": _vilt_teacher, "meter": _meter_teacher}


@pytest.fixture(scope="module", params=list(BUILDERS))
def teacher(request, tmp_path_factory):
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


def _inputs(full: bool):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    n_images, n_texts = (2, 4) if full else (1, 1)
    images = [Image.fromarray((torch.rand(480, 640, 3, generator=g) * 255).byte().numpy()) for _ in range(n_images)]
    words = CAPTION.split()
    texts = [" ".join(words[i:] + words[:i]) for i in range(n_texts)]
    pairs = torch.tensor([[i, j] for i in range(n_images) for j in range(n_texts)])
    return images, texts, pairs


def _time(benchmark, fn, full: bool):
    return benchmark.pedantic(fn, rounds=2 if full else 1, iterations=1, warmup_rounds=1 if full else 0)


@pytest.mark.parametrize("stage", ["score_pairs", "joint"])
def test_teacher_ms_per_pair(benchmark, full_sizes, teacher, stage):
    benchmark.group = "teachers"
    images, texts, pairs = _inputs(full_sizes)
    if stage == "score_pairs":
        result = _time(benchmark, lambda: teacher.score_pairs(images, texts, pairs), full_sizes)
    else:
        with torch.no_grad():
            image_items = teacher._encode_images(images)
            text_items = teacher._encode_texts(texts)
            image_feats, image_mask = _pad([image_items[i] for i in pairs[:, 0].tolist()])
            text_feats, text_mask = _pad([text_items[j] for j in pairs[:, 1].tolist()])

        def joint():
            with torch.no_grad():
                return teacher._joint_logits(image_feats, image_mask, text_feats, text_mask)

        result = _time(benchmark, joint, full_sizes)
    assert result.shape == (len(pairs),) and torch.isfinite(result).all()
    benchmark.extra_info.update(teacher=teacher.kind, stage=stage, pairs=len(pairs),
                                images=len(images), texts=len(texts))
    if benchmark.stats is not None:
        benchmark.extra_info["ms_per_pair"] = 1000 * benchmark.stats.stats.mean / len(pairs)
