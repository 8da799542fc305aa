"""open_clip students: before training they embed exactly as open_clip's own encode_image / encode_text on its
own transform and tokenizer; saved as an open_clip local-dir folder; a clear error when open_clip is missing."""

from __future__ import annotations

import builtins
import json

import pytest
import torch
import torch.nn.functional as F

from dcd_ext.students import load_student, save_student
from dcd_ext.students.factory import student_folder_kind
from teacher_fixtures import random_images

torch.set_num_threads(1)

TEXTS = ["a red square left of a blue circle", "two green triangles", "zebra", "a yellow circle above a red square"]
SIZES = [(32, 32), (40, 90), (100, 30)]


def test_missing_open_clip_names_the_extra(monkeypatch):
    from dcd_ext.students import open_clip_student

    real_import = builtins.__import__

    def no_open_clip(name, *args, **kwargs):
        if name == "open_clip" or name.startswith("open_clip."):
            raise ImportError("No module named 'open_clip'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_open_clip)
    with pytest.raises(ImportError, match=r'pip install "dcd_ext\[open_clip\]" \(open-clip-torch==3.3.0\)'):
        open_clip_student.build_open_clip_student("ViT-B-32", "weights.pt")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("open_clip")
    from dcd_ext.students.tiny_pretrained import build_tiny_open_clip

    return build_tiny_open_clip(tmp_path_factory.mktemp("open_clip"), seed=3)


def open_clip_reference(name, weights, images, texts):
    """open_clip's own model, transform and tokenizer, built without dcd_ext."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    with torch.no_grad():
        image = F.normalize(model.encode_image(torch.stack([preprocess(im) for im in images])), dim=-1)
        text = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
    return model, image, text


def embed(student, images, texts):
    with torch.no_grad():
        return student.encode_image(student.preprocess_images(images)), student.encode_text(*student.tokenizer(texts))


def test_student_embeds_exactly_as_open_clip(tiny):
    from dcd_ext.students.open_clip_student import build_open_clip_student

    config, weights = tiny
    images = random_images(SIZES, seed=4)
    student = build_open_clip_student(str(config), str(weights))
    assert student.config.kind == "open_clip" and student.config.embed_dim == 16
    model, ref_image, ref_text = open_clip_reference(config.stem, str(weights), images, TEXTS)
    assert torch.cdist(ref_image, ref_image).max() > 0.05 and torch.cdist(ref_text, ref_text).max() > 0.05
    image, text = embed(student, images, TEXTS)
    torch.testing.assert_close(image, ref_image, rtol=0, atol=1e-6)
    torch.testing.assert_close(text, ref_text, rtol=0, atol=1e-6)
    torch.testing.assert_close(student.logit_scale, model.logit_scale.exp().reshape(()))
    assert {n for n, _ in student.named_parameters() if not n.startswith("towers.model.")} == {"log_logit_scale"}
    assert [n for n, p in student.named_parameters() if not p.requires_grad] == ["towers.model.logit_scale"]


def test_saved_student_is_an_open_clip_local_dir(tiny, tmp_path):
    from dcd_ext.students.open_clip_student import build_open_clip_student

    config, weights = tiny
    images = random_images(SIZES, seed=5)
    student = build_open_clip_student(str(config), str(weights)).train()
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    img = student.encode_image(student.preprocess_images(images))
    txt = student.encode_text(*student.tokenizer(TEXTS[:3]))
    F.cross_entropy(student.logit_scale * img @ txt.T, torch.arange(3)).backward()
    optimizer.step()
    student.eval()
    out = tmp_path / "student"
    save_student(student, str(out))
    assert student_folder_kind(str(out)) == "open_clip"
    assert json.loads((out / "open_clip_config.json").read_text())["model_cfg"]["embed_dim"] == 16
    trained = embed(student, images, TEXTS)
    assert (trained[0] - embed(build_open_clip_student(str(config), str(weights)), images, TEXTS)[0]).abs().max() > 1e-3
    for got, want in zip(embed(load_student(str(out)), images, TEXTS), trained):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # open_clip itself loads the folder as the trained model, with the trained scale
    model, ref_image, ref_text = open_clip_reference(f"local-dir:{out}", None, images, TEXTS)
    torch.testing.assert_close(ref_image, trained[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(ref_text, trained[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(model.logit_scale.exp().reshape(()), student.logit_scale.detach())


def test_open_clip_spec_errors(tiny, tmp_path):
    from dcd_ext.students.open_clip_student import build_open_clip_student

    config, weights = tiny
    with pytest.raises(ValueError, match="needs its checkpoint file"):
        build_open_clip_student(str(config), None)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        build_open_clip_student(str(config), str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="the hub is not used"):
        build_open_clip_student("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None)
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        build_open_clip_student("No-Such-Arch", str(weights))
