"""Students that start as a pretrained transformers CLIP or SigLIP folder: before training they embed exactly
as the model's own forward on its processor's output; they train only the model's own parameters and scale,
and save back as a folder transformers loads."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from dcd_ext.students import DualEncoder, is_student_folder, load_student, save_student
from dcd_ext.students.factory import student_folder_kind
from dcd_ext.students.tiny_pretrained import build_tiny_clip, build_tiny_siglip
from teacher_fixtures import VOCAB_WORDS, random_images

torch.set_num_threads(1)

TEXTS = ["a red square left of a blue circle", "two green triangles", "zebra", "a yellow circle above a red square"]
SIZES = [(32, 32), (40, 90), (100, 30), (64, 48)]  # CLIP crops, SigLIP squashes: both must match


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip"), VOCAB_WORDS, projection_dim=16, seed=1)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return build_tiny_siglip(tmp_path_factory.mktemp("siglip"), seed=2)


def reference(folder, kind, images, texts):
    """transformers' own model and processor, loaded independently of the student, on its own inputs."""
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    # CLIP: pad to the longest text; SigLIP: pad to its positions, as its model card says
    padding = dict(padding=True) if kind == "clip" else dict(padding="max_length")
    inputs = processor(images=images, text=texts, return_tensors="pt", **padding)
    with torch.no_grad():
        out = model(**inputs)
    return model, out


def student_embeddings(student, images, texts):
    with torch.no_grad():
        return (student.encode_image(student.preprocess_images(images)),
                student.encode_text(*student.tokenizer(texts)))


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_student_embeds_exactly_as_the_models_own_forward(kind, clip_dir, siglip_dir):
    folder = clip_dir if kind == "clip" else siglip_dir
    images = random_images(SIZES, seed=3)
    student = load_student(str(folder))
    assert isinstance(student, DualEncoder) and student.config.kind == kind
    model, out = reference(folder, kind, images, TEXTS)
    image_emb, text_emb = student_embeddings(student, images, TEXTS)
    # the embeddings tell the inputs apart (random weights strong enough for the check to mean something)
    assert torch.cdist(out.image_embeds, out.image_embeds).max() > 0.05
    assert torch.cdist(out.text_embeds, out.text_embeds).max() > 0.05
    torch.testing.assert_close(image_emb, out.image_embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(text_emb, out.text_embeds, rtol=0, atol=1e-6)
    # its own logit scale, and its similarities are the model's logits divided by that scale
    torch.testing.assert_close(student.logit_scale, model.logit_scale.exp().reshape(()))
    torch.testing.assert_close(student.logit_scale * image_emb @ text_emb.T,
                               out.logits_per_image - (model.logit_bias if kind == "siglip" else 0),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_no_new_projection_and_only_the_scale_of_the_student_is_trained(kind, clip_dir, siglip_dir):
    student = load_student(str(clip_dir if kind == "clip" else siglip_dir))
    own = {n for n, _ in student.named_parameters()}
    assert {n for n in own if not n.startswith("towers.model.")} == {"log_logit_scale"}
    frozen = {n for n, p in student.named_parameters() if not p.requires_grad}
    assert frozen == ({"towers.model.logit_scale"} | ({"towers.model.logit_bias"} if kind == "siglip" else set()))
    assert isinstance(student.image_proj, torch.nn.Identity) and isinstance(student.text_proj, torch.nn.Identity)
    # every trainable parameter receives a gradient from an InfoNCE step (nothing unused, as DDP needs)
    images = random_images(SIZES, seed=4)
    student.train()
    img, txt = (student.encode_image(student.preprocess_images(images)), student.encode_text(*student.tokenizer(TEXTS)))
    logits = student.logit_scale * img @ txt.T
    target = torch.arange(len(TEXTS))
    (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)).backward()
    missing = [n for n, p in student.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_siglip_scale_above_clip_cap_is_kept_and_bias_is_saved_unchanged(siglip_dir, tmp_path):
    from transformers import SiglipModel

    folder = tmp_path / "siglip_large_scale"
    model = SiglipModel.from_pretrained(siglip_dir)
    with torch.no_grad():
        model.logit_scale.fill_(torch.log(torch.tensor(117.0)))  # a released SigLIP's learnt scale
        model.logit_bias.fill_(-12.5)
    model.save_pretrained(folder)
    for name in ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((siglip_dir / name).read_bytes())
    student = load_student(str(folder))
    student.clamp_logit_scale()  # what every optimiser step does: CLIP's cap of 100 must not cut SigLIP's 117
    assert student.logit_scale.item() == pytest.approx(117.0, rel=1e-5)
    with torch.no_grad():
        student.log_logit_scale.fill_(torch.log(torch.tensor(90.0)))
    save_student(student, str(tmp_path / "saved"))
    saved = SiglipModel.from_pretrained(tmp_path / "saved")
    assert saved.logit_scale.exp().item() == pytest.approx(90.0, rel=1e-5)
    assert saved.logit_bias.item() == -12.5


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_trained_student_saves_as_a_folder_transformers_and_load_student_read(kind, clip_dir, siglip_dir, tmp_path):
    folder = clip_dir if kind == "clip" else siglip_dir
    student = load_student(str(folder)).train()
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    images = random_images(SIZES, seed=5)
    for _ in range(2):
        img = student.encode_image(student.preprocess_images(images))
        txt = student.encode_text(*student.tokenizer(TEXTS))
        logits = student.logit_scale * img @ txt.T
        F.cross_entropy(logits, torch.arange(len(TEXTS))).backward()
        optimizer.step()
        optimizer.zero_grad()
    student.eval()
    out = tmp_path / "student"
    save_student(student, str(out))
    assert student_folder_kind(str(out)) == kind and is_student_folder(str(out))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["model_type"] == kind
    trained = student_embeddings(student, images, TEXTS)
    before = student_embeddings(load_student(str(folder)), images, TEXTS)
    assert (trained[0] - before[0]).abs().max() > 1e-3, "training did not change the model"
    reloaded = load_student(str(out))
    for got, want in zip(student_embeddings(reloaded, images, TEXTS), trained):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(reloaded.logit_scale, student.logit_scale)
    # transformers itself reads the saved folder as the trained model, with the trained scale
    model, hf = reference(out, kind, images, TEXTS)
    torch.testing.assert_close(hf.image_embeds, trained[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(hf.text_embeds, trained[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(model.logit_scale.exp().reshape(()), student.logit_scale.detach())


def test_other_folders_are_not_students(tmp_path, tiny_vilt_dir):
    assert student_folder_kind(tiny_vilt_dir) is None and not is_student_folder(tiny_vilt_dir)
    with pytest.raises(ValueError, match="holds a transformers 'vilt' model"):
        load_student(tiny_vilt_dir)
    broken = tmp_path / "clip_without_processor"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        load_student(str(broken))
