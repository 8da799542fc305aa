"""Teacher fine-tuning (listwise rank loss) and the ``python -m dcd_ext.train_teacher`` CLI."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F

from dcd_ext import train_teacher
from dcd_ext.teachers import finetune_teacher, load_teacher
from dcd_ext.teachers.finetune import sample_negatives
from dcd_ext.teachers.meter import build_tiny_meter_checkpoint, load_meter_teacher
from dcd_ext.teachers.vilt import build_tiny_vilt, load_vilt_teacher
from teacher_fixtures import VOCAB_WORDS, shape_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vilt_dir(tmp_path_factory):
    return build_tiny_vilt(tmp_path_factory.mktemp("vilt"), VOCAB_WORDS, image_size=32, patch_size=16, hidden=64,
                           layers=2, heads=2, max_text_len=12, init_std=0.2, seed=0)


@pytest.fixture(scope="module")
def meter_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("meter")
    ckpt = build_tiny_meter_checkpoint(root / "tiny.ckpt", root / "tokenizer", VOCAB_WORDS, image_size=32,
                                       patch_size=16, max_text_len=12, init_std=0.1, seed=0)
    return ckpt, root / "tokenizer"


def retrieval_loss(teacher, images, captions) -> float:
    """Image->text cross-entropy over all captions (caption i belongs to image i)."""
    n = len(images)
    pairs = torch.tensor([[i, j] for i in range(n) for j in range(n)])
    scores = teacher.score_pairs(images, captions, pairs).view(n, n)
    return float(F.cross_entropy(scores, torch.arange(n)))


def test_finetune_lowers_the_loss_vilt(vilt_dir):
    images, captions, index = shape_dataset(16, size=32, seed=0)
    teacher = load_vilt_teacher(vilt_dir)
    before = retrieval_loss(teacher, images, captions)
    losses = finetune_teacher(teacher, images, captions, index, epochs=10, batch_size=8, n_negatives=3,
                              lr=1e-3, seed=0, progress=False)
    assert len(losses) == 20 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2
    assert not teacher.model.training
    assert retrieval_loss(teacher, images, captions) < before - 0.2


def test_finetune_lowers_the_loss_meter(meter_files):
    images, captions, index = shape_dataset(8, size=32, seed=1)
    teacher = load_meter_teacher(meter_files[0], tokenizer=meter_files[1], dropout=0.0)
    before = retrieval_loss(teacher, images, captions)
    losses = finetune_teacher(teacher, images, captions, index, epochs=30, batch_size=8, n_negatives=7,
                              lr=1e-3, warmup=0.05, seed=0, progress=False)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert retrieval_loss(teacher, images, captions) < 0.5 * before


def test_finetune_is_reproducible(vilt_dir):
    images, captions, index = shape_dataset(12, size=32, seed=2)
    runs = [finetune_teacher(load_vilt_teacher(vilt_dir), images, captions, index, epochs=1, batch_size=4,
                             n_negatives=3, lr=1e-3, seed=5, progress=False) for _ in range(2)]
    assert runs[0] == runs[1]


def test_negatives_never_share_the_anchor_image():
    index = torch.arange(10).repeat_interleave(5)  # COCO-style: 5 captions per image
    generator = torch.Generator().manual_seed(0)
    anchors = torch.arange(50)
    negatives = sample_negatives(index, anchors, 15, generator)
    assert negatives.shape == (50, 15)
    assert (index[negatives] != index[anchors][:, None]).all()
    assert all(len(set(row.tolist())) == 15 for row in negatives)  # without replacement when possible
    few = sample_negatives(torch.tensor([0, 0, 1]), torch.tensor([0]), 4, generator)  # only caption 2 qualifies
    assert few.tolist() == [[2, 2, 2, 2]]
    with pytest.raises(ValueError, match="same image"):
        sample_negatives(torch.tensor([0, 0]), torch.tensor([0]), 1, generator)


def test_finetune_input_errors(vilt_dir):
    images, captions, index = shape_dataset(4, size=32)
    teacher = load_vilt_teacher(vilt_dir)
    with pytest.raises(ValueError, match="differ in length"):
        finetune_teacher(teacher, images, captions, index[:3], progress=False)
    with pytest.raises(ValueError, match="n_negatives"):
        finetune_teacher(teacher, images, captions, index, n_negatives=0, progress=False)
    with pytest.raises(IndexError, match="image_index"):
        finetune_teacher(teacher, images, captions, [0, 1, 2, 7], progress=False)


def _write_table(tmp_path, images, captions, kind: str):
    (tmp_path / "imgs").mkdir()
    rows = []
    for i, (image, caption) in enumerate(zip(images, captions)):
        image.save(tmp_path / "imgs" / f"{i}.png")
        rows.append({"image": f"imgs/{i}.png", "caption": caption})
    if kind == "csv":
        path = tmp_path / "data.csv"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["image", "caption"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        path = tmp_path / "data.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_cli_vilt_from_csv_saves_a_reloadable_teacher(vilt_dir, tmp_path, capsys):
    images, captions, _ = shape_dataset(8, size=32, seed=3)
    data = _write_table(tmp_path, images, captions, "csv")
    out = tmp_path / "out"
    code = train_teacher.main(["--data", str(data), "--teacher-kind", "vilt", "--teacher", str(vilt_dir),
                               "--out", str(out), "--epochs", "2", "--batch-size", "4", "--negatives", "3",
                               "--lr", "1e-3", "--device", "cpu", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["images"] == 8
    log = json.loads((out / "finetune_log.json").read_text())
    assert len(log["losses"]) == 4
    reloaded = load_teacher("vilt", out)
    assert reloaded.score(images[:2], captions[:2]).shape == (2,)
    original = load_teacher("vilt", vilt_dir).score(images[:2], captions[:2])
    assert not torch.allclose(reloaded.score(images[:2], captions[:2]), original)


def test_cli_meter_from_jsonl(meter_files, tmp_path, capsys):
    images, captions, _ = shape_dataset(6, size=32, seed=4)
    data = _write_table(tmp_path, images, captions, "jsonl")
    out = tmp_path / "out"
    train_teacher.main(["--data", str(data), "--teacher-kind", "meter", "--teacher", str(meter_files[0]),
                        "--tokenizer", str(meter_files[1]), "--out", str(out), "--epochs", "1",
                        "--batch-size", "3", "--negatives", "2", "--no-progress", "--device", "cpu"])
    assert (out / "meter.ckpt").is_file()
    assert load_teacher("meter", out).score(images[:2], captions[:2]).shape == (2,)


def test_cli_rejects_bad_tables(vilt_dir, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("picture,words\nx.png,a red square\n")
    with pytest.raises(ValueError, match="no image column"):
        train_teacher.main(["--data", str(bad), "--teacher-kind", "vilt", "--teacher", str(vilt_dir),
                            "--out", str(tmp_path / "o"), "--no-progress"])
    missing = tmp_path / "missing.csv"
    missing.write_text("image,caption\nnot-there.png,a red square\n")
    with pytest.raises(FileNotFoundError, match="not-there.png"):
        train_teacher.main(["--data", str(missing), "--teacher-kind", "vilt", "--teacher", str(vilt_dir),
                            "--out", str(tmp_path / "o"), "--no-progress"])
    with pytest.raises(SystemExit):
        train_teacher.main(["--data", str(bad), "--teacher-kind", "clip", "--teacher", str(vilt_dir),
                            "--out", str(tmp_path / "o")])


def test_cli_fine_tunes_on_the_train_split_only(vilt_dir, tmp_path, capsys):
    """Test rows of a table with a split column, and a Karpathy file's val and test images, are never trained on."""
    from train_fixtures import write_karpathy, write_table

    table = write_table(str(tmp_path), num_images=12, captions_per_image=1, test_every=3)  # images 0, 3, 6, 9: test
    common = ["--teacher-kind", "vilt", "--teacher", str(vilt_dir), "--epochs", "1", "--batch-size", "4",
              "--negatives", "2", "--device", "cpu", "--no-progress"]

    def summary(*flags):
        assert train_teacher.main([*flags, *common]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    done = summary("--data", table, "--out", str(tmp_path / "ft"))
    assert (done["images"], done["captions"]) == (8, 8)  # not the 12 of every row
    assert done["data"] == "pairs:train"
    done = summary("--data", table, "--split", "test", "--out", str(tmp_path / "ft-test"))
    assert (done["data"], done["images"]) == ("pairs:test", 4)
    data, root = write_karpathy(str(tmp_path / "karpathy"))
    done = summary("--data", data, "--images", root, "--out", str(tmp_path / "ft-karpathy"))
    assert done["images"] == 3  # train + restval, not val or test
