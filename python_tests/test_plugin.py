"""DCD in anyone's training loop: DCDLoss with a teacher callable or a CrossEncoderTeacher, embeddings and ids in,
named terms out; the documented example (docs/examples/dcd_in_your_loop.py) runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dcd_ext.losses import DCDLoss, LossOutput
from train_fixtures import FakeTeacher, write_table

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "examples" / "dcd_in_your_loop.py"
IDS = torch.tensor([0, 1, 1, 2, 3, 4])  # rows 1 and 2 show the same image


def batch(seed=0, dim=8):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(len(IDS), dim, generator=g), dim=1).requires_grad_(True)
    txt = F.normalize(torch.randn(len(IDS), dim, generator=g), dim=1).requires_grad_(True)
    return img, txt


def test_a_teacher_callable_is_the_same_as_a_teacher_object():
    fake = FakeTeacher(int(IDS.max()) + 1, len(IDS), seed=1)
    seen = []

    def teacher(images, texts, pairs):  # anything the caller passed as images/texts reaches the teacher as is
        seen.append((images, texts, pairs))
        return fake.score_pairs(images, texts, pairs).tolist()  # a plain list is accepted too

    images, texts = IDS.tolist(), list(range(len(IDS)))
    img, txt = batch()
    by_object = DCDLoss(fake, k=2)(img, txt, torch.tensor(5.0), IDS, images, texts)
    by_callable = DCDLoss(teacher, k=2)(img, txt, 5.0, IDS.tolist(), images, texts)
    assert isinstance(by_callable, LossOutput)
    for name in ("loss", "con", "dist", "hard", "i2t_dist_weight", "t2i_hard_weight"):
        torch.testing.assert_close(getattr(by_callable, name), getattr(by_object, name), msg=name)
    assert by_callable.teacher_pairs == by_object.teacher_pairs > 0 and by_callable.teacher_seconds > 0
    ((got_images, got_texts, pairs),) = seen
    assert got_images is images and got_texts is texts
    assert pairs.dtype == torch.int64 and pairs.shape == (by_callable.teacher_pairs, 2)
    # the teacher is asked about the canonical row of an image: never row 2, which repeats row 1's image
    assert 2 not in pairs[:, 0].tolist()
    by_callable.loss.backward()
    assert img.grad is not None and txt.grad is not None


def test_caller_mistakes_are_named():
    fake = FakeTeacher(int(IDS.max()) + 1, len(IDS))
    img, txt = batch()
    images, texts = IDS.tolist(), list(range(len(IDS)))
    with pytest.raises(ValueError, match="needs a teacher"):
        DCDLoss(None)
    with pytest.raises(TypeError, match="expected a CrossEncoderTeacher or a callable"):
        DCDLoss(object())
    loss = DCDLoss(fake, k=2)
    with pytest.raises(ValueError, match=r"image_ids: expected an int64 tensor \[6\]"):
        loss(img, txt, 5.0, IDS[:5], images, texts)
    with pytest.raises(ValueError, match=r"texts: expected 6 texts \(one per row of img/txt\)"):
        loss(img, txt, 5.0, IDS, images, texts[:4])
    with pytest.raises(ValueError, match="img and txt: row i of each is a positive pair"):
        loss(img, txt[:3], 5.0, IDS, images, texts)
    with pytest.raises(ValueError, match=r"teacher: returned scores of shape \(3,\)"):
        DCDLoss(lambda i, t, pairs: torch.zeros(3), k=2)(img, txt, 5.0, IDS, images, texts)
    with pytest.raises(ValueError, match="non-finite"):
        DCDLoss(lambda i, t, pairs: torch.full((len(pairs),), float("nan")), k=2)(img, txt, 5.0, IDS, images, texts)


def test_a_cross_encoder_teacher_scores_the_mined_pairs_of_the_raw_batch(tmp_path):
    """With a real teacher (tiny BLIP): the teacher logits DCD trains on are the teacher's own scores of
    (image of the anchor row, caption of the candidate row) for every mined candidate."""
    from dcd_ext.teachers import load_teacher
    from dcd_ext.teachers.blip import build_tiny_blip
    from teacher_fixtures import VOCAB_WORDS, shape_dataset

    teacher = load_teacher("blip", build_tiny_blip(tmp_path / "blip", VOCAB_WORDS, init_std=0.2, seed=4))
    images, texts, _ = shape_dataset(6, size=32, seed=1)
    img, txt = batch(3)
    loss = DCDLoss(teacher, k=2)
    targets = loss.prepare(img.detach(), txt.detach(), IDS, images, texts)
    for rows, scores, image_anchor in ((targets.i2t, targets.i2t_teacher, True), (targets.t2i, targets.t2i_teacher, False)):
        for r in range(len(IDS)):
            for m, c in enumerate(rows[r].tolist()):
                i, j = (r, c) if image_anchor else (c, r)
                i = int((IDS == IDS[i]).nonzero()[0])  # the image's first row
                expected = teacher.score([images[i]], [texts[j]])[0]
                torch.testing.assert_close(scores[r, m], expected, rtol=1e-5, atol=1e-5)


def test_the_documented_example_runs(tmp_path):
    from dcd_ext.data import vocabulary
    from dcd_ext.students import load_student
    from dcd_ext.students.tiny_pretrained import build_tiny_clip
    from dcd_ext.teachers.blip import build_tiny_blip

    data = write_table(str(tmp_path), num_images=8, captions_per_image=2)
    clip = build_tiny_clip(tmp_path / "clip", vocabulary(), image_size=32, patch_size=16, projection_dim=16)
    blip = build_tiny_blip(tmp_path / "blip", vocabulary(), init_std=0.2)
    out = tmp_path / "tuned"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(EXAMPLE), "--clip", str(clip), "--teacher", str(blip), "--data", data,
                             "--out", str(out), "--steps", "3", "--batch-size", "6"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert len(steps) == 3 and all("dist" in s and "teacher" in s for s in steps)
    assert len(EXAMPLE.read_text().splitlines()) <= 50
    before, after = load_student(str(clip)), load_student(str(out))  # the tuned folder is a CLIP student too
    changed = [n for (n, a), (_, b) in zip(before.named_parameters(), after.named_parameters()) if not torch.equal(a, b)]
    assert changed, "the example did not update the model"
