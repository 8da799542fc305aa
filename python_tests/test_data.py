"""Data sources: Karpathy split JSON, pair tables, the synthetic demo set and the training loader."""

from __future__ import annotations

import json
import os
import re
from collections import Counter

import numpy as np
import pytest
import torch

from dcd_ext.data import (BatchCollator, EmptySplitError, RetrievalSet, load_karpathy, load_pairs_file, load_split,
                          make_synthetic_split, make_train_loader, vocabulary)
from dcd_ext.data.loader import EpochSampler
from train_fixtures import write_images, write_karpathy, write_table


# ---- Karpathy split JSON -------------------------------------------------------------------------

def test_karpathy_train_is_train_plus_restval_in_file_order(tmp_path):
    path, root = write_karpathy(str(tmp_path))
    split = load_karpathy(path, root, "train")
    assert split.num_images == 3
    assert split.image_names == ["img0.png", "img1.png", "img2.png"]
    assert split.images[0] == os.path.join(root, "train2014", "img0.png")
    assert split.images[1] == os.path.join(root, "val2014", "img1.png")
    assert split.captions[:3] == ["image 0 caption 0", "image 0 caption 1", "image 1 caption 0"]  # stripped
    assert split.caption_image == [0, 0, 1, 1, 2, 2]
    assert load_karpathy(path, root, "train-only").num_images == 2
    assert load_karpathy(path, root, "val").image_names == ["img3.png"]


def test_karpathy_test_split_keeps_at_most_five_captions(tmp_path):
    path, root = write_karpathy(str(tmp_path))
    assert load_karpathy(path, root, "test").num_captions == 6
    test = load_karpathy(path, root, "test", max_captions_per_image=5)
    assert test.num_captions == 5 and test.caption_image == [0] * 5
    assert test.captions[-1] == "image 4 caption 4"


def test_flickr_layout_has_no_filepath(tmp_path):
    path, root = write_karpathy(str(tmp_path), coco_layout=False)
    split = load_split(path, root, "test")  # load_split also checks that the files exist
    assert split.images == [os.path.join(root, "img4.png")]


def test_karpathy_errors_name_the_problem(tmp_path):
    path, root = write_karpathy(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_karpathy(str(tmp_path / "missing.json"), root)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [\n  {"filename": }')
    with pytest.raises(ValueError, match=r"not valid JSON.*line 2"):
        load_karpathy(str(bad), root)
    no_images = tmp_path / "no_images.json"
    no_images.write_text('{"annotations": []}')
    with pytest.raises(ValueError, match="'images' list"):
        load_karpathy(str(no_images), root)
    doc = json.loads(open(path).read())
    del doc["images"][1]["sentences"][0]["raw"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"images\[1\]\.sentences\[0\]"):
        load_karpathy(str(broken), root)
    only_train = {"images": [e for e in json.loads(open(path).read())["images"] if e["split"] == "train"]}
    train_file = tmp_path / "train_only.json"
    train_file.write_text(json.dumps(only_train))
    with pytest.raises(EmptySplitError, match=r"'test'.*holds splits \['train'\]"):
        load_karpathy(str(train_file), root, "test")
    with pytest.raises(ValueError, match="split must be one of"):
        load_karpathy(path, root, "dev")
    with pytest.raises(ValueError, match="images: .*image root"):
        load_split(path, None, "train")


def test_missing_image_files_are_listed(tmp_path):
    path, root = write_karpathy(str(tmp_path))
    os.remove(os.path.join(root, "val2014", "img1.png"))
    with pytest.raises(FileNotFoundError, match=r"1 of 3 image files are missing: .*img1\.png"):
        load_split(path, root, "train")
    split = load_split(path, root, "train", check_files=False)
    with pytest.raises(FileNotFoundError, match="img1.png"):
        split.load_image(1)


# ---- pair tables ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_tables_group_rows_by_image_and_filter_the_split(tmp_path, fmt):
    path = write_table(str(tmp_path), num_images=8, fmt=fmt)
    train = load_pairs_file(path, split="train")
    test = load_pairs_file(path, split="test")
    assert test.image_names == ["table_images/000.png", "table_images/004.png"]
    assert train.num_images == 6 and train.num_captions == 12
    assert Counter(train.caption_image) == {i: 2 for i in range(6)}
    assert train.images[0] == os.path.join(str(tmp_path), "table_images/001.png")
    everything = load_pairs_file(path)
    assert everything.num_images == 8
    assert np.asarray(train.load_image(0)).shape == (32, 32, 3)


def test_table_image_root_keys_and_errors(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("file,text,split\na.png,a red circle,train\nb.png,  ,train\n")
    with pytest.raises(ValueError, match=r"found no image column .*columns are \['file', 'text', 'split'\]"):
        load_pairs_file(str(path))
    with pytest.raises(ValueError, match=r"t\.csv:3: empty 'text'"):  # the file's line, not the row's index
        load_pairs_file(str(path), image_key="file")
    path.write_text("file,text\na.png,a red circle\na.png,two blue squares\nb.png,one cat\n")
    table = load_pairs_file(str(path), image_root="/data/imgs", image_key="file", caption_key="text")
    assert table.images == ["/data/imgs/a.png", "/data/imgs/b.png"]
    assert table.caption_image == [0, 0, 1]
    with pytest.raises(ValueError, match="no image column 'path'"):
        load_pairs_file(str(path), image_key="path")
    with pytest.raises(EmptySplitError, match="no 'split' column"):
        load_pairs_file(str(path), split="test", image_key="file")
    assert load_pairs_file(str(path), split="train", image_key="file",
                           all_rows_without_split_column=True).num_captions == 3
    (tmp_path / "x.txt").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"\.csv, \.tsv or \.jsonl"):
        load_pairs_file(str(tmp_path / "x.txt"))
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"image": "a.png", "caption": "x"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: expected a JSON object"):
        load_pairs_file(str(jsonl))
    (tmp_path / "empty.csv").write_text("image,caption\n")
    with pytest.raises(ValueError, match="holds no rows"):
        load_pairs_file(str(tmp_path / "empty.csv"))
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_pairs_file(str(tmp_path / "nope.csv"))


def test_retrieval_set_validates_its_indices():
    with pytest.raises(ValueError, match="image 1 .* has no caption"):
        RetrievalSet("s", ["a.png", "b.png"], ["x", "y"], [0, 0])
    with pytest.raises(ValueError, match="outside"):
        RetrievalSet("s", ["a.png"], ["x"], [3])
    with pytest.raises(EmptySplitError):
        RetrievalSet("s", [], [], [])


# ---- synthetic demo set --------------------------------------------------------------------------

def test_synthetic_set_is_a_function_of_the_seed():
    a = make_synthetic_split("train", 30, seed=3)
    b = make_synthetic_split("train", 30, seed=3)
    c = make_synthetic_split("train", 30, seed=4)
    assert a.captions == b.captions and a.caption_image == b.caption_image
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.images, b.images))
    assert a.captions != c.captions
    assert make_synthetic_split("test", 30, seed=3).captions != a.captions
    assert a.num_images == 30 and Counter(a.caption_image) == {i: 2 for i in range(30)}
    assert a.images[0].size == (32, 32)


def test_synthetic_captions_use_the_vocabulary_and_come_with_hard_negatives():
    split = make_synthetic_split("train", 200, seed=0)
    words = set(vocabulary())
    assert all(set(re.findall(r"[a-z]+", c)) <= words for c in split.captions)
    first = [split.captions[j] for j in range(0, split.num_captions, 2)]  # one caption per image
    # colour / relation swaps: same words, different order; counts: same colour and shape, another number
    bags = Counter(tuple(sorted(c.split())) for c in first)
    pair_captions = [c for c in first if " of " in c or "above" in c or "below" in c]
    assert pair_captions and all(bags[tuple(sorted(c.split()))] >= 2 or _has_relation_swap(c, first)
                                 for c in pair_captions)
    counts = [c.split() for c in first if c.split()[0] in ("one", "two", "three")]  # "two green circles"
    def same_objects(a, b):
        return a[1] == b[1] and a[2].rstrip("s") == b[2].rstrip("s")
    assert counts and all(any(same_objects(c, o) and o[0] != c[0] for o in counts) for c in counts)


def _has_relation_swap(caption: str, captions: list[str]) -> bool:
    swaps = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    return any(rel in caption and caption.replace(rel, other) in captions for rel, other in swaps.items())


def test_synthetic_scene_pixels_follow_the_caption():
    split = make_synthetic_split("train", 60, seed=1, image_size=64)
    checked = 0
    for j in range(0, split.num_captions, 2):
        words = split.captions[j].split()
        if len(words) == 8 and words[3] == "left":  # "a C1 S1 left of a C2 S2"
            pixels = np.asarray(split.images[split.caption_image[j]]).astype(int)
            colour_left = _dominant_colour(pixels[:, :32])
            colour_right = _dominant_colour(pixels[:, 32:])
            assert (colour_left, colour_right) == (words[1], words[6])
            checked += 1
    assert checked > 0


def _dominant_colour(pixels: np.ndarray) -> str:
    from dcd_ext.data.synthetic import COLOURS
    flat = pixels.reshape(-1, 3)
    counts = {name: int((np.abs(flat - np.array(rgb)).sum(1) < 30).sum()) for name, rgb in COLOURS.items()}
    return max(counts, key=counts.get)


def test_synthetic_arguments_are_checked():
    with pytest.raises(ValueError, match="num_images"):
        make_synthetic_split("train", 1)
    with pytest.raises(ValueError, match="image_size"):
        make_synthetic_split("train", 4, image_size=8)


# ---- training loader -----------------------------------------------------------------------------

def test_loader_batches_carry_ids_raw_items_and_a_resumable_order():
    split = make_synthetic_split("train", 10, seed=0)
    collate = BatchCollator(lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1),
                            lambda texts: (torch.ones(len(texts), 3, dtype=torch.int64),
                                           torch.ones(len(texts), 3, dtype=torch.int64)))
    loader = make_train_loader(split, collate, batch_size=6, seed=5)
    batches = list(loader)
    assert len(batches) == 3  # 20 captions, last partial batch dropped
    b = batches[0]
    assert b.pixels.shape == (6, 3, 32, 32) and len(b.images) == 6 and len(b.texts) == 6
    for row in range(6):
        j = int(b.caption_index[row])
        assert b.texts[row] == split.captions[j]
        assert int(b.image_index[row]) == split.caption_image[j]
        assert b.images[row] is split.images[split.caption_image[j]]
    sampler = EpochSampler(20, seed=5, batch_size=4)
    sampler.set_epoch(2)
    order = list(sampler)
    sampler.set_epoch(2, skip=2)  # two batches of 4 done
    assert list(sampler) == order[8:] and len(sampler) == 12
    sampler.set_epoch(3)
    assert list(sampler) != order and sorted(sampler) == list(range(20))
    # two processes split every global batch of 4 into halves, in rank order
    halves = [EpochSampler(20, seed=5, batch_size=4, rank=r, world_size=2) for r in (0, 1)]
    for h in halves:
        h.set_epoch(2)
    shares = [list(h) for h in halves]
    assert [x for b in range(5) for r in (0, 1) for x in shares[r][2 * b:2 * b + 2]] == order
    assert sum(map(len, halves)) == 20
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        EpochSampler(20, seed=5, batch_size=4, world_size=3)
    torch.manual_seed(7)
    expected = torch.rand(1)
    torch.manual_seed(7)
    next(iter(loader))
    assert torch.rand(1) == expected  # the loader draws from its own generator, not the global RNG
    with pytest.raises(ValueError, match="batch_size 32 exceeds"):
        make_train_loader(split, collate, batch_size=32, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        make_train_loader(split, collate, batch_size=1, seed=0)


def test_write_images_fixture_makes_real_files(tmp_path):
    write_images(str(tmp_path), ["a/b.png", "c.png"])
    assert os.path.isfile(tmp_path / "a" / "b.png") and os.path.isfile(tmp_path / "c.png")


def test_table_errors_give_the_files_line_number(tmp_path):
    """Issue "nothing silent", item 7: a caption with an unquoted comma used to lose its tail silently (the extra
    field went nowhere); now it, a short row, a bad quote or a non-UTF-8 byte is reported with its line."""
    path = tmp_path / "pairs.csv"
    path.write_text('image,caption\na.png,"a man, riding a horse"\n\nb.png,a dog, running on grass\n')
    with pytest.raises(ValueError, match=r"pairs\.csv:4: 3 fields but the header has 2 \(image, caption\) "
                                         r"\(quote fields that contain the delimiter"):
        load_pairs_file(str(path))
    path.write_text('image,caption\na.png,"a caption\nover two lines"\nb.png\n')
    with pytest.raises(ValueError, match=r"pairs\.csv:4: 1 fields but the header has 2"):
        load_pairs_file(str(path))
    tsv = tmp_path / "pairs.tsv"
    tsv.write_bytes("image\tcaption\na.png\tun caf\u00e9\n".encode() + b"b.png\tun caf\xe9\n")
    with pytest.raises(ValueError, match=r"pairs\.tsv:3: not UTF-8 text"):
        load_pairs_file(str(tsv))
    path.write_text('\ufeffimage,caption\na.png,a red circle\n')  # a byte-order mark is not part of the header
    assert load_pairs_file(str(path)).captions == ["a red circle"]
    table = load_pairs_file(write_table(str(tmp_path), num_images=4, fmt="csv"), split="train")
    assert table.image_origins[:2] == ["pairs.csv line 4", "pairs.csv line 6"]


def test_one_image_under_two_spellings_is_one_image_and_repeated_rows_are_left_out(tmp_path, capsys):
    write_images(str(tmp_path), ["photos/x.png", "photos/y.png"])
    y = os.path.join(str(tmp_path), "photos", "y.png")
    path = tmp_path / "pairs.csv"
    path.write_text("image,caption\n"
                    "photos/x.png,a red cat\n"         # line 2
                    "./photos/x.png,a cat on a mat\n"  # the same image, spelt differently
                    "photos/y.png,a dog\n"
                    "photos/x.png,a red cat\n"         # line 5 repeats line 2
                    f"{y}, a dog \n"                   # line 6 repeats line 4 (an absolute path, spaces)
                    "photos/../photos/y.png,a brown dog\n")
    split = load_pairs_file(str(path))
    assert split.num_images == 2
    assert split.captions == ["a red cat", "a cat on a mat", "a dog", "a brown dog"]
    assert split.caption_image == [0, 0, 1, 1]
    assert split.images == [os.path.join(str(tmp_path), "photos", "x.png"), y]
    err = capsys.readouterr().err
    assert err == (f"warning: {path}: 2 rows repeat an earlier (image, caption) row and are left out "
                   "(e.g. line 5 repeats line 2)\n")
    # a table without repeats says nothing
    path.write_text("image,caption\nphotos/x.png,a red cat\n./photos/y.png,a dog\n")
    assert load_pairs_file(str(path)).caption_image == [0, 1]
    assert capsys.readouterr().err == ""
