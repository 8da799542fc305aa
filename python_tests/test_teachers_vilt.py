"""ViLT teacher: scores equal transformers' own ViltForImageAndTextRetrieval forward."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from dcd_ext.teachers import CheckpointError, load_teacher
from dcd_ext.teachers.vilt import build_tiny_vilt, load_vilt_teacher, vilt_image_processor
from teacher_fixtures import VOCAB_WORDS, random_images

torch.set_num_threads(1)

TEXTS = ["a red square left of a blue circle", "two green triangles", "a yellow circle above a red square", "zebra"]
SIZES = [(32, 32), (40, 90), (100, 30)]  # mixed sizes and aspect ratios


@pytest.fixture(scope="module")
def vilt_dir(tmp_path_factory):
    # init_std 0.2 so that random weights give scores that clearly depend on image and text
    return build_tiny_vilt(tmp_path_factory.mktemp("vilt"), VOCAB_WORDS, image_size=32, patch_size=16,
                           hidden=32, layers=2, heads=2, max_text_len=12, init_std=0.2, seed=1)


@pytest.fixture(scope="module")
def teacher(vilt_dir):
    return load_teacher("vilt", vilt_dir, micro_batch_size=4)


def hf_single_pair(teacher, image, text) -> float:
    """transformers' own processor + tokenizer + forward on one pair, RNG seeded as the teacher does."""
    pixels = teacher.image_processor(image.convert("RGB"), return_tensors="pt")
    tokens = teacher.tokenizer(text, padding="max_length", truncation=True, max_length=teacher.max_text_len,
                               return_tensors="pt")
    torch.manual_seed(teacher.patch_seed)
    with torch.no_grad():
        out = teacher.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                            token_type_ids=tokens["token_type_ids"], pixel_values=pixels["pixel_values"],
                            pixel_mask=pixels["pixel_mask"])
    return float(out.logits[0, 0])


def all_pairs(n_images, n_texts):
    return torch.tensor([[i, j] for i in range(n_images) for j in range(n_texts)])


def test_score_pairs_equals_transformers_single_pair_forward(teacher):
    images = random_images(SIZES, seed=0)
    pairs = all_pairs(len(images), len(TEXTS))
    scores = teacher.score_pairs(images, TEXTS, pairs)
    expected = torch.tensor([hf_single_pair(teacher, images[i], TEXTS[j]) for i, j in pairs.tolist()])
    assert scores.dtype == torch.float32 and scores.shape == (len(pairs),)
    assert expected.std() > 0.05, "random weights too weak to tell pairs apart"
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)


def test_mixed_sizes_equal_transformers_padded_batch_with_pixel_masks(teacher):
    images = random_images(SIZES, seed=1)
    texts = TEXTS[: len(images)]
    batch = teacher.image_processor([im.convert("RGB") for im in images], return_tensors="pt")
    assert batch["pixel_mask"].float().mean() < 1, "sizes should differ so that padding is needed"
    tokens = teacher.tokenizer(texts, padding="max_length", truncation=True, max_length=teacher.max_text_len,
                               return_tensors="pt")
    with torch.no_grad():
        expected = teacher.model(**tokens, pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"]).logits[:, 0]
    torch.testing.assert_close(teacher.score(images, texts), expected, rtol=1e-4, atol=1e-5)


def test_micro_batch_size_and_caching_do_not_change_scores(vilt_dir):
    images = random_images(SIZES, seed=2)
    pairs = torch.tensor([[2, 1], [0, 0], [1, 3], [2, 1], [0, 2], [1, 0], [2, 3]])
    results = [load_vilt_teacher(vilt_dir, micro_batch_size=m).score_pairs(images, TEXTS, pairs) for m in (1, 3, 64)]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-5, atol=1e-6)
    # score() on the expanded pair list agrees, and repeated pairs get identical scores
    expanded = load_vilt_teacher(vilt_dir).score([images[i] for i, _ in pairs.tolist()], [TEXTS[j] for _, j in pairs.tolist()])
    torch.testing.assert_close(expanded, results[0], rtol=1e-5, atol=1e-6)
    assert results[0][0] == results[0][3]


def test_each_image_and_text_is_encoded_once(teacher, monkeypatch):
    calls = {"images": 0, "texts": 0}
    encode_images, encode_texts = teacher._encode_images, teacher._encode_texts

    def count_images(items):
        calls["images"] += len(items)
        return encode_images(items)

    def count_texts(items):
        calls["texts"] += len(items)
        return encode_texts(items)

    monkeypatch.setattr(teacher, "_encode_images", count_images)
    monkeypatch.setattr(teacher, "_encode_texts", count_texts)
    images = random_images(SIZES, seed=3)
    teacher.score_pairs(images, TEXTS, all_pairs(2, 3))  # uses images 0-1 and texts 0-2 only
    assert calls == {"images": 2, "texts": 3}


def test_patch_sampling_is_deterministic_and_leaves_global_rng_alone(tmp_path):
    # max_image_length=3 makes ViLT sample 3 of an image's 4 patches with torch.multinomial
    path = build_tiny_vilt(tmp_path / "sampled", VOCAB_WORDS, image_size=32, patch_size=16, hidden=32,
                           layers=1, heads=2, max_text_len=12, max_image_length=3, init_std=0.2)
    images = random_images([(32, 32), (32, 64)], seed=4)
    pairs = all_pairs(2, 2)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = load_vilt_teacher(path, micro_batch_size=1).score_pairs(images, TEXTS, pairs)
    assert torch.equal(torch.get_rng_state(), state), "scoring must not advance the global RNG"
    torch.manual_seed(999)
    second = load_vilt_teacher(path, micro_batch_size=4).score_pairs(images, TEXTS, pairs)
    torch.testing.assert_close(first, second, rtol=1e-5, atol=1e-6)
    teacher = load_vilt_teacher(path)
    expected = torch.tensor([hf_single_pair(teacher, images[i], TEXTS[j]) for i, j in pairs.tolist()])
    torch.testing.assert_close(first, expected, rtol=1e-4, atol=1e-5)
    # another seed picks other patches: the seed really drives the sampling
    reseeded = load_vilt_teacher(path, patch_seed=7).score_pairs(images, TEXTS, pairs)
    assert not torch.allclose(reseeded, first)


def test_official_preprocessing_sizes():
    processor = vilt_image_processor()  # ViLT's defaults: shorter side 384, divisor 32, mean = std = 0.5
    white = random_images([(480, 640)])[0].point(lambda _: 255)
    out = processor(white, return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 384, 512)
    assert torch.allclose(out["pixel_values"], torch.ones(1))  # (1 - 0.5) / 0.5
    # a very wide image: longer side capped at int(1333 / 800 * 384) = 639, then floored to /32
    wide = processor(random_images([(100, 1000)])[0], return_tensors="pt")["pixel_values"]
    scale = 639 / 3840
    assert wide.shape[-2:] == (int(384 * scale + 0.5) // 32 * 32, int(3840 * scale + 0.5) // 32 * 32)


def test_saved_preprocessor_config_and_official_style_config(vilt_dir, tmp_path):
    saved = json.loads((vilt_dir / "preprocessor_config.json").read_text())
    assert saved["size"]["shortest_edge"] == 32 and saved["size_divisor"] == 16
    assert saved["image_mean"] == [0.5] * 3 and saved["image_std"] == [0.5] * 3
    # dandelin/vilt-b32-finetuned-coco's older format: "size": 384 (an int)
    copy = tmp_path / "official_style"
    shutil.copytree(vilt_dir, copy)
    (copy / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_resize": True, "feature_extractor_type": "ViltFeatureExtractor",
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3, "size": 64, "size_divisor": 32}))
    teacher = load_vilt_teacher(copy)
    image = random_images([(100, 150)])[0]
    pixel_values, _ = teacher.preprocess_image(image)
    assert pixel_values.shape[-2:] == (64, 96)  # 64 x 96 (longer side cap int(1333/800*64) = 106)
    overridden = load_vilt_teacher(copy, image_size=96, size_divisor=32)
    assert overridden.preprocess_image(image)[0].shape[-2:] == (96, 128)  # 96 x 144 -> floored to /32


def test_save_and_reload_round_trip(teacher, tmp_path):
    images = random_images(SIZES, seed=5)
    pairs = all_pairs(3, 2)
    teacher.save(tmp_path / "saved")
    again = load_teacher("vilt", tmp_path / "saved")
    torch.testing.assert_close(again.score_pairs(images, TEXTS, pairs), teacher.score_pairs(images, TEXTS, pairs))


def test_bf16_autocast_is_close(vilt_dir):
    images = random_images(SIZES, seed=6)
    pairs = all_pairs(3, 2)
    exact = load_vilt_teacher(vilt_dir).score_pairs(images, TEXTS, pairs)
    fast = load_vilt_teacher(vilt_dir, bf16=True).score_pairs(images, TEXTS, pairs)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, exact, rtol=0.05, atol=0.05)


def test_empty_pairs(teacher):
    assert teacher.score_pairs(random_images([(32, 32)]), ["a"], torch.zeros(0, 2, dtype=torch.long)).shape == (0,)


def test_bad_paths_give_clear_errors(vilt_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_teacher("vilt", tmp_path / "does-not-exist")
    with pytest.raises(NotADirectoryError, match="config.json"):
        load_teacher("vilt", vilt_dir / "config.json")
    no_config = tmp_path / "no_config"
    shutil.copytree(vilt_dir, no_config)
    (no_config / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_teacher("vilt", no_config)
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(vilt_dir, no_tokenizer)
    for name in ("vocab.txt", "tokenizer.json"):
        (no_tokenizer / name).unlink()
    with pytest.raises(FileNotFoundError, match="no BERT tokenizer files in .*no_tokenizer"):
        load_teacher("vilt", no_tokenizer)
    truncated = tmp_path / "truncated"
    shutil.copytree(vilt_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot load ViLT weights from .*truncated"):
        load_teacher("vilt", truncated)


def test_wrong_kind_and_bad_inputs(teacher, vilt_dir):
    with pytest.raises(ValueError, match="unknown teacher kind 'clip'"):
        load_teacher("clip", vilt_dir)
    images = random_images([(32, 32)])
    with pytest.raises(TypeError, match=r"images\[0\] must be a PIL.Image.Image"):
        teacher.score([torch.zeros(3, 32, 32)], ["a"])
    with pytest.raises(TypeError, match=r"texts\[0\] must be a str"):
        teacher.score(images, [3])
    with pytest.raises(ValueError, match="same length"):
        teacher.score(images, ["a", "b"])
    with pytest.raises(IndexError, match="image indices"):
        teacher.score_pairs(images, ["a"], torch.tensor([[1, 0]]))
    with pytest.raises(ValueError, match=r"shape \[P, 2\]"):
        teacher.score_pairs(images, ["a"], torch.tensor([0, 0, 0]))
    with pytest.raises(TypeError, match="integer"):
        teacher.score_pairs(images, ["a"], torch.tensor([[0.0, 0.0]]))
