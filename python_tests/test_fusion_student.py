"""Shallow cross-encoder (fusion) students of METER and ViLT teachers: scores against the teachers' own
networks, frozen parts, caching, save and load."""

from __future__ import annotations

import copy

import pytest
import torch

from dcd_ext.students import build_fusion_student, load_student, save_student
from dcd_ext.students.fusion import default_fusion_layers, is_fusion_folder
from dcd_ext.teachers import load_teacher
from teacher_fixtures import VOCAB_WORDS, random_images, shape_dataset


@pytest.fixture(scope="module")
def meter_teacher(tmp_path_factory):
    from dcd_ext.teachers.meter import build_tiny_meter_checkpoint
    root = tmp_path_factory.mktemp("meter")
    ckpt = build_tiny_meter_checkpoint(root / "meter.ckpt", root / "roberta", VOCAB_WORDS, image_size=32,
                                       cross_layers=3, init_std=0.1, seed=0)
    return load_teacher("meter", ckpt, tokenizer=root / "roberta", micro_batch_size=5)


@pytest.fixture(scope="module")
def vilt_teacher(tmp_path_factory):
    from dcd_ext.teachers.vilt import build_tiny_vilt
    root = tmp_path_factory.mktemp("vilt")
    build_tiny_vilt(root, VOCAB_WORDS, image_size=32, patch_size=8, hidden=32, layers=3, heads=2, init_std=0.2,
                    seed=1)
    return load_teacher("vilt", root, micro_batch_size=5)


@pytest.fixture(scope="module")
def data():
    images, captions, _ = shape_dataset(4, size=32, seed=0)
    images += random_images([(24, 40), (40, 24)], seed=1)  # other sizes (ViLT keeps the aspect ratio)
    captions += ["two red circles", "a blue square above a green triangle"]
    pairs = torch.tensor([(i, j) for i in range(6) for j in range(6)])
    return images, captions, pairs


def teacher_fixture(request, kind):
    return request.getfixturevalue(f"{kind}_teacher")


def test_default_layers_are_the_authors_for_six_and_half_otherwise():
    assert default_fusion_layers(6) == (0, 3, 5)
    assert default_fusion_layers(12) == (0, 2, 4, 7, 9, 11)
    assert default_fusion_layers(2) == (0,) and default_fusion_layers(1) == (0,)
    assert default_fusion_layers(3) == (0, 2) and default_fusion_layers(4) == (0, 3)


@pytest.mark.parametrize("kind", ["meter", "vilt"])
def test_every_layer_kept_scores_exactly_as_the_teacher(kind, request, data):
    teacher = teacher_fixture(request, kind)
    images, captions, pairs = data
    expected = teacher.score_pairs(images, captions, pairs)
    assert expected.std() > 1e-2  # the weights give distinct scores, so equality means something
    student = build_fusion_student(teacher, [0, 1, 2])
    torch.testing.assert_close(student.score_pairs(images, captions, pairs), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(student.score(images[:3], captions[2:5]), teacher.score(images[:3], captions[2:5]),
                               rtol=1e-5, atol=1e-5)


def meter_reference(teacher, layers, images, texts, pairs):
    """METER's stages called by hand on the teacher's own modules, with only ``layers`` of its co-attention."""
    m = teacher.model
    enc = teacher.tokenize(texts)
    with torch.no_grad():
        text = m.encode_text(enc["input_ids"], enc["attention_mask"])[pairs[:, 1]]
        image = m.encode_image(teacher.preprocess_images(images))[pairs[:, 0]]
        text_keep = enc["attention_mask"][pairs[:, 1]].bool()
        image_keep = torch.ones(image.shape[:2], dtype=torch.bool)
        x, y = text, image
        for i in layers:
            x, y = (m.cross_modal_text_layers[i](x, y, text_keep, image_keep),
                    m.cross_modal_image_layers[i](y, x, image_keep, text_keep))
        pooled = torch.cat([m.cross_modal_text_pooler(x), m.cross_modal_image_pooler(y)], dim=-1)
        return m.rank_output(pooled)[:, 0]


def vilt_reference(teacher, layers, images, texts, pairs):
    """transformers' ViltForImageAndTextRetrieval with ``layers`` of the teacher's encoder, as a teacher."""
    from transformers import ViltForImageAndTextRetrieval
    from dcd_ext.teachers.vilt import ViltTeacher

    config = copy.deepcopy(teacher.model.config)
    config.num_hidden_layers = len(layers)
    small = ViltForImageAndTextRetrieval(config).eval()
    state = {}
    for key, value in teacher.model.state_dict().items():
        if key.startswith("vilt.encoder.layer."):
            index, rest = key[len("vilt.encoder.layer."):].split(".", 1)
            if int(index) in layers:
                state[f"vilt.encoder.layer.{layers.index(int(index))}.{rest}"] = value
        else:
            state[key] = value
    small.load_state_dict(state, strict=True)
    return ViltTeacher(small, teacher.tokenizer, teacher.image_processor).score_pairs(images, texts, pairs)


@pytest.mark.parametrize("kind,layers", [("meter", [0, 2]), ("meter", [1]), ("vilt", [0, 2]), ("vilt", [2])])
def test_a_subset_of_layers_is_the_teacher_network_with_those_layers(kind, layers, request, data):
    teacher = teacher_fixture(request, kind)
    images, captions, pairs = data
    student = build_fusion_student(teacher, layers)
    reference = (meter_reference if kind == "meter" else vilt_reference)(teacher, layers, images, captions, pairs)
    got = student.score_pairs(images, captions, pairs)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    assert (got - teacher.score_pairs(images, captions, pairs)).abs().max() > 1e-3  # another network
    # cheaper per pair: the student's joint pass runs len(layers) layers, the teacher's all 3
    calls = []
    hooks = [layer.register_forward_hook(lambda *a: calls.append(1)) for layer in
             (student.cross_modal_text_layers if kind == "meter" else student.layers)]
    student.score_pairs(images, captions, pairs[:5])
    assert len(calls) == len(layers)
    for hook in hooks:
        hook.remove()


@pytest.mark.parametrize("kind", ["meter", "vilt"])
def test_only_the_copied_layers_poolers_and_head_train(kind, request, data):
    teacher = teacher_fixture(request, kind)
    images, captions, pairs = data
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    student = build_fusion_student(teacher, [0, 2]).train()
    names = {name.split(".")[0] for name, _ in student.named_parameters()}
    if kind == "meter":
        assert names == {"cross_modal_text_layers", "cross_modal_image_layers", "cross_modal_text_pooler",
                         "cross_modal_image_pooler", "rank_output"}
    else:
        assert names == {"layers", "layernorm", "pooler", "rank_output"}
    teacher_storage = {p.data_ptr() for p in teacher.model.parameters()}
    assert not teacher_storage & {p.data_ptr() for p in student.parameters()}  # copies, not the teacher's
    assert set(student.state_dict()) == {n for n, _ in student.named_parameters()} | \
        {n for n, _ in student.named_buffers()}
    for p in teacher.model.parameters():
        p.grad = None
    logits = student.pair_logits(images, captions, pairs)
    assert logits.requires_grad
    (logits * torch.linspace(-1, 1, logits.numel())).sum().backward()
    assert all(p.grad is None for p in teacher.model.parameters())  # frozen encoders: no gradient at all
    grads = {name: p.grad for name, p in student.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    torch.optim.SGD(student.parameters(), lr=1.0).step()
    for key, value in teacher.model.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)  # training the student leaves the teacher be


def test_per_item_work_runs_once_per_image_and_text(meter_teacher, data, monkeypatch):
    images, captions, pairs = data
    student = build_fusion_student(meter_teacher, [1])
    seen = {"images": 0, "texts": 0}
    real_images, real_texts = meter_teacher._encode_images, meter_teacher._encode_texts
    monkeypatch.setattr(meter_teacher, "_encode_images",
                        lambda xs: seen.__setitem__("images", seen["images"] + len(xs)) or real_images(xs))
    monkeypatch.setattr(meter_teacher, "_encode_texts",
                        lambda xs: seen.__setitem__("texts", seen["texts"] + len(xs)) or real_texts(xs))
    pairs = torch.tensor([[0, 1], [0, 2], [3, 1], [3, 2], [0, 1]])
    student.score_pairs(images, captions, pairs)
    assert seen == {"images": 2, "texts": 2}


@pytest.mark.parametrize("kind", ["meter", "vilt"])
def test_save_and_load_without_the_teacher(kind, request, data, tmp_path):
    teacher = teacher_fixture(request, kind)
    images, captions, pairs = data
    student = build_fusion_student(teacher, [2, 0])
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))  # as if trained: no longer the teacher's weights
    expected = student.score_pairs(images, captions, pairs)
    save_student(student, str(tmp_path / "fusion"))
    assert is_fusion_folder(str(tmp_path / "fusion"))
    again = load_student(str(tmp_path / "fusion"))
    assert again.is_cross_encoder and again.layers_kept == (2, 0) and again.teacher_layers == 3
    torch.testing.assert_close(again.score_pairs(images, captions, pairs), expected, rtol=1e-5, atol=1e-5)
    # its cross_encoder folder is an ordinary teacher folder with two joint layers
    as_teacher = load_teacher(kind, tmp_path / "fusion" / "cross_encoder")
    torch.testing.assert_close(as_teacher.score_pairs(images, captions, pairs), expected, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in student.parameters())


def test_meter_rank_head_from_the_itm_match_row(meter_teacher):
    from dcd_ext.teachers.checkpoint_io import load_checkpoint_file
    state = load_checkpoint_file(meter_teacher.model.load_report.path)["state_dict"]
    student = build_fusion_student(meter_teacher, head_init="itm")
    torch.testing.assert_close(student.rank_output.weight, state["itm_score.fc.weight"][1:])
    torch.testing.assert_close(student.rank_output.bias, state["itm_score.fc.bias"][1:])
    assert not torch.equal(student.rank_output.weight, meter_teacher.model.rank_output.weight)
    assert student.layers_kept == (0, 2)  # default for 3 layers


def test_clear_errors(meter_teacher, vilt_teacher):
    with pytest.raises(ValueError, match=r"outside the teacher's 3 joint layers"):
        build_fusion_student(meter_teacher, [0, 3])
    with pytest.raises(ValueError, match="once"):
        build_fusion_student(meter_teacher, "1,1")
    with pytest.raises(ValueError, match="no ITM head"):
        build_fusion_student(vilt_teacher, head_init="itm")
    with pytest.raises(ValueError, match="head_init"):
        build_fusion_student(vilt_teacher, head_init="random")
    with pytest.raises(ValueError, match="METER or ViLT teacher"):
        build_fusion_student(object())
