"""BLIP teacher: scores equal the ITM logit difference of transformers' own BlipForImageTextRetrieval forward on
its processor's output; each image's vision transformer runs once per call."""

from __future__ import annotations

import json

import pytest
import torch

from dcd_ext.cli import teacher_kind
from dcd_ext.teachers import CheckpointError, load_teacher
from dcd_ext.teachers.blip import BlipTeacher, build_tiny_blip, load_blip_teacher
from teacher_fixtures import VOCAB_WORDS, random_images

torch.set_num_threads(1)

TEXTS = ["a red square left of a blue circle", "two green triangles", "a yellow circle above a red square", "zebra"]
SIZES = [(32, 32), (40, 90), (100, 30)]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    # init_std 0.2 so that random weights give scores that clearly depend on image and text
    return build_tiny_blip(tmp_path_factory.mktemp("blip"), VOCAB_WORDS, init_std=0.2, seed=1)


@pytest.fixture(scope="module")
def teacher(blip_dir):
    return load_teacher("blip", blip_dir, micro_batch_size=4)


def all_pairs(n_images, n_texts):
    return torch.tensor([[i, j] for i in range(n_images) for j in range(n_texts)])


def hf_itm(folder, image, text) -> torch.Tensor:
    """transformers' own processor + model (loaded independently of the teacher) on one pair: itm [2]."""
    from transformers import AutoProcessor, BlipForImageTextRetrieval

    processor = AutoProcessor.from_pretrained(folder)
    model = BlipForImageTextRetrieval.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(**processor(images=image, text=text, return_tensors="pt"), use_itm_head=True).itm_score[0]


def test_score_pairs_equals_transformers_itm_forward_for_every_pair(teacher, blip_dir):
    images = random_images(SIZES, seed=0)
    pairs = all_pairs(len(images), len(TEXTS))
    scores = teacher.score_pairs(images, TEXTS, pairs)
    itm = torch.stack([hf_itm(blip_dir, images[i], TEXTS[j]) for i, j in pairs.tolist()])
    expected = itm[:, 1] - itm[:, 0]
    assert isinstance(teacher, BlipTeacher) and scores.dtype == torch.float32 and scores.shape == (len(pairs),)
    assert expected.std() > 0.05, "random weights too weak to tell pairs apart"
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    # a proper logit: its sigmoid is BLIP's match probability, so it ranks pairs as that probability does
    torch.testing.assert_close(torch.sigmoid(scores), itm.softmax(dim=1)[:, 1], rtol=1e-5, atol=1e-6)


def test_each_image_is_encoded_once_and_micro_batches_do_not_matter(blip_dir):
    images = random_images(SIZES, seed=1)
    pairs = torch.tensor([[2, 1], [0, 0], [1, 3], [2, 1], [0, 2], [1, 0], [2, 3]])
    results = []
    for micro in (1, 3, 64):
        teacher = load_blip_teacher(blip_dir, micro_batch_size=micro)
        seen = []
        teacher.model.vision_model.register_forward_hook(lambda m, args, out: seen.append(out.last_hidden_state.shape[0]))
        joint = []
        teacher.model.text_encoder.register_forward_hook(lambda m, args, kwargs, out: joint.append(1), with_kwargs=True)
        results.append(teacher.score_pairs(images, TEXTS, pairs))
        assert sum(seen) == 3, f"micro_batch_size {micro}: {sum(seen)} image encodings for 3 images"
        assert len(joint) == -(-len(pairs) // micro)
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-5, atol=1e-6)
    expanded = load_blip_teacher(blip_dir).score([images[i] for i, _ in pairs.tolist()],
                                                 [TEXTS[j] for _, j in pairs.tolist()])
    torch.testing.assert_close(expanded, results[0], rtol=1e-5, atol=1e-6)


def test_save_reload_and_detection(teacher, blip_dir, tmp_path):
    out = teacher.save(tmp_path / "saved")
    assert teacher_kind(str(blip_dir)) == "blip" and teacher_kind(str(out)) == "blip"
    images = random_images(SIZES[:2], seed=2)
    pairs = all_pairs(2, 2)
    torch.testing.assert_close(load_teacher("blip", out).score_pairs(images, TEXTS[:2], pairs),
                               teacher.score_pairs(images, TEXTS[:2], pairs))


def test_load_errors(blip_dir, tmp_path, tiny_vilt_dir):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_blip_teacher(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((blip_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no model weights"):
        load_blip_teacher(empty)
    with pytest.raises(ValueError, match="not BLIP"):
        load_blip_teacher(tiny_vilt_dir)
    other = tmp_path / "clip_like"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ValueError, match="model_type 'clip'; a teacher folder is ViLT or BLIP"):
        teacher_kind(str(other))
    with pytest.raises(ValueError, match="max_text_len"):
        load_blip_teacher(blip_dir, max_text_len=10_000)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((blip_dir / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    for name in ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (broken / name).write_bytes((blip_dir / name).read_bytes())
    with pytest.raises(CheckpointError, match="cannot load BLIP weights"):
        load_blip_teacher(broken)
