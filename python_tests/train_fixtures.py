"""Small on-disk fixtures for the data, retrieval and training tests: image files, Karpathy JSON, tables,
and a fake teacher whose scores are a known function of the pair."""

from __future__ import annotations

import csv
import json
import os

import torch

from dcd_ext.data import make_synthetic_split


def write_images(root: str, names: list[str], size: int = 32, seed: int = 0) -> None:
    """Synthetic scenes saved as PNG files under ``root`` (sub-folders created as needed)."""
    scenes = make_synthetic_split("fixture", max(2, len(names)), seed, size)
    for name, image in zip(names, scenes.images):
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image.save(path)


def karpathy_doc(coco_layout: bool = True) -> dict:
    """Five images: two train, one restval, one val, one test; image 4 has six captions."""
    splits = ["train", "train", "restval", "val", "test"]
    images = []
    sentid = 0
    for imgid, split in enumerate(splits):
        count = 6 if imgid == 4 else 2
        sentences = []
        for c in range(count):
            sentences.append({"tokens": [], "raw": f" image {imgid} caption {c} ", "imgid": imgid, "sentid": sentid})
            sentid += 1
        entry = {"filename": f"img{imgid}.png", "split": split, "imgid": imgid, "sentences": sentences,
                 "sentids": [s["sentid"] for s in sentences]}
        if coco_layout:
            entry["filepath"] = "val2014" if imgid % 2 else "train2014"
        images.append(entry)
    return {"images": images, "dataset": "coco" if coco_layout else "flickr30k"}


def write_karpathy(tmp: str, coco_layout: bool = True) -> tuple[str, str]:
    """(json path, image root) with the image files present."""
    doc = karpathy_doc(coco_layout)
    root = os.path.join(tmp, "images")
    write_images(root, [os.path.join(e.get("filepath", ""), e["filename"]) for e in doc["images"]])
    path = os.path.join(tmp, "dataset_coco.json" if coco_layout else "dataset_flickr30k.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    return path, root


def write_table(tmp: str, num_images: int = 24, captions_per_image: int = 2, with_split: bool = True,
                fmt: str = "csv", seed: int = 0, test_every: int = 4, val_every: int = 0) -> str:
    """A pair table over synthetic scenes saved as files; every ``test_every``-th image is in the test split,
    and (``val_every`` > 0) every ``val_every``-th other one in the val split."""
    scenes = make_synthetic_split("table", num_images, seed, 32)
    folder = os.path.join(tmp, "table_images")
    os.makedirs(folder, exist_ok=True)
    rows = []
    for j, caption in enumerate(scenes.captions):
        i = scenes.caption_image[j]
        if sum(1 for r in rows if r["image"] == f"table_images/{i:03d}.png") >= captions_per_image:
            continue
        name = f"table_images/{i:03d}.png"
        if not os.path.exists(os.path.join(tmp, name)):
            scenes.images[i].save(os.path.join(tmp, name))
        row = {"image": name, "caption": caption}
        if with_split:
            row["split"] = "test" if i % test_every == 0 else "val" if val_every and i % val_every == 1 else "train"
        rows.append(row)
    path = os.path.join(tmp, f"pairs.{fmt}")
    if fmt == "jsonl":
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    else:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if fmt == "tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    return path


class FakeTeacher:
    """Scores (image, text) pairs as ``<img_vec[key(image)], txt_vec[key(text)]>`` with fixed random vectors.

    ``image_key`` maps an image object to an integer key (default: the object itself, for tests that pass
    integer stand-ins). Every call is recorded so tests can count the pairs scored."""

    def __init__(self, num_images: int, num_texts: int, dim: int = 8, seed: int = 0, image_key=None, text_key=None):
        g = torch.Generator().manual_seed(seed)
        self.img_vec = torch.randn(num_images, dim, generator=g)
        self.txt_vec = torch.randn(num_texts, dim, generator=g)
        self.image_key = image_key or (lambda image: int(image))
        self.text_key = text_key or (lambda text: int(text))
        self.calls: list[int] = []

    def true_score(self, image_key: int, text_key: int) -> float:
        return float(self.img_vec[image_key] @ self.txt_vec[text_key])

    def score_pairs(self, images, texts, pairs) -> torch.Tensor:
        pairs = torch.as_tensor(pairs)
        self.calls.append(pairs.shape[0])
        ik = torch.tensor([self.image_key(images[i]) for i in pairs[:, 0].tolist()], dtype=torch.int64)
        tk = torch.tensor([self.text_key(texts[j]) for j in pairs[:, 1].tolist()], dtype=torch.int64)
        return (self.img_vec[ik] * self.txt_vec[tk]).sum(1)


def small_model_after_one_step():
    """(tiny small student, AdamW) after one optimiser step, so the optimizer has state to checkpoint."""
    from dcd_ext.students import build_small_student
    torch.manual_seed(0)
    model = build_small_student(["a red circle", "two blue squares"], width=8, embed_dim=4, image_channels=[4, 4, 4])
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.log_logit_scale.sum().backward()
    opt.step()
    return model, opt


def interrupt_at_step(monkeypatch, stop_step: int):
    """Make the training loop raise KeyboardInterrupt (as Ctrl-C would) when it reaches ``stop_step``;
    returns the function that restores the loop (the test's end restores it too)."""
    from dcd_ext.train import loop as train_loop

    real_lr_at = train_loop.lr_at

    def lr_at(step, *args):
        if step == stop_step:
            raise KeyboardInterrupt
        return real_lr_at(step, *args)

    monkeypatch.setattr(train_loop, "lr_at", lr_at)
    return lambda: monkeypatch.setattr(train_loop, "lr_at", real_lr_at)
