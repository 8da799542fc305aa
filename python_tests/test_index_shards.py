"""Issue 22 item 7: a gallery index of a million items with ordinary paths can be saved (the names and paths
live in tensors, not in the 100 MB safetensors header), old files still read, shards search and merge as
one, and ``index`` refuses an output it cannot write before the embedding pass."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dcd_ext import index as index_cli
from dcd_ext import merge_index as merge_cli
from dcd_ext.serving.index_file import GalleryIndex, load_index, save_index
from dcd_ext.serving.shards import merge_indexes


def unit_rows(n: int, d: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def test_a_million_items_with_ordinary_paths_save_and_load(tmp_path):
    n = 1_000_000
    names = [f"shard_{i // 10000:04d}/IMG_{i:07d}.jpg" for i in range(n)]
    sources = [f"/home/user/photos/gallery/{name}" for name in names]  # ~108 MB of JSON: over the header cap
    index = GalleryIndex(unit_rows(n), torch.arange(n), "image", "/s", names, sources, "f" * 64)
    save_index(index, str(tmp_path / "big.idx"))
    back = load_index(str(tmp_path / "big.idx"))
    assert back.names == names and back.sources == sources
    assert torch.equal(back.embeddings, index.embeddings) and torch.equal(back.ids, index.ids)
    with safe_open(str(tmp_path / "big.idx"), framework="pt") as f:
        assert len(json.dumps(f.metadata())) < 1000 and f.metadata()["format"] == "dcd_ext.gallery/3"


def test_non_ascii_and_empty_strings_round_trip(tmp_path):
    names = ["café/ü.jpg", "", "日本.png"]
    index = GalleryIndex(unit_rows(3), torch.tensor([5, 1, 9]), "text", "s", names, names[::-1])
    save_index(index, str(tmp_path / "x.idx"))
    back = load_index(str(tmp_path / "x.idx"))
    assert back.names == names and back.sources == names[::-1] and back.ids.tolist() == [5, 1, 9]


@pytest.mark.parametrize("fmt", ["dcd_ext.gallery/1", "dcd_ext.gallery/2"])
def test_index_files_of_the_older_formats_still_read(tmp_path, fmt):
    items = [{"name": "a.jpg", "source": "/p/a.jpg"}, {"name": "b.jpg", "source": "/p/b.jpg"}]
    metadata = {"format": fmt, "modality": "image", "student": "/s", "embed_dim": "4", "count": "2",
                "items": json.dumps(items)}
    if fmt.endswith("2"):
        metadata["student_fingerprint"] = "ab" * 32
    save_file({"embeddings": unit_rows(2), "ids": torch.tensor([3, 4])}, str(tmp_path / "old.idx"), metadata=metadata)
    index = load_index(str(tmp_path / "old.idx"))
    assert index.names == ["a.jpg", "b.jpg"] and index.sources == ["/p/a.jpg", "/p/b.jpg"]
    assert index.student_fingerprint == metadata.get("student_fingerprint", "")


def shard(offset: int, n: int, fingerprint: str = "f" * 64, dtype=torch.float32) -> GalleryIndex:
    names = [f"img_{offset + i}.jpg" for i in range(n)]
    return GalleryIndex(unit_rows(n, seed=offset).to(dtype), torch.arange(offset, offset + n), "image", "/s", names,
                        [f"/g/{x}" for x in names], fingerprint)


def test_shards_merge_in_order_and_the_merge_command_writes_one_index(tmp_path, capsys):
    a, b = shard(0, 3), shard(3, 2, dtype=torch.float16)
    merged = merge_indexes([a, b], ["a.idx", "b.idx"])
    assert merged.ids.tolist() == [0, 1, 2, 3, 4] and merged.names[3] == "img_3.jpg"
    assert merged.embeddings.dtype == torch.float32
    save_index(a, str(tmp_path / "a.idx"))
    save_index(b, str(tmp_path / "b.idx"))
    assert merge_cli.main(["--index", str(tmp_path / "a.idx"), "--index", str(tmp_path / "b.idx"),
                           "--out", str(tmp_path / "all.idx")]) == 0
    assert load_index(str(tmp_path / "all.idx")).ids.tolist() == [0, 1, 2, 3, 4]
    assert "5 image embeddings of width 4 from 2 shards" in capsys.readouterr().out


def test_shards_of_different_galleries_are_refused_naming_both():
    with pytest.raises(ValueError, match=r"id 1 is in both a\.idx and b\.idx; build the shards with --id-offset"):
        merge_indexes([shard(0, 3), shard(1, 3)], ["a.idx", "b.idx"])
    with pytest.raises(ValueError, match=r"b\.idx and a\.idx are not shards of one gallery: student fingerprint"):
        merge_indexes([shard(0, 3), shard(3, 3, fingerprint="e" * 64)], ["a.idx", "b.idx"])


def test_index_refuses_an_output_folder_it_cannot_write_before_embedding(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OSError, match=r"out: cannot write .*locked/sub/x\.idx: no permission to write in "):
            index_cli.main(["--student", str(tmp_path / "no_student"), "--images", str(tmp_path / "no_images"),
                            "--out", str(locked / "sub" / "x.idx")])
    finally:
        locked.chmod(0o700)


def test_index_refuses_an_output_below_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match=r"out: cannot write .*file/x\.idx: .*file is not a folder"):
        index_cli.main(["--student", str(tmp_path / "no_student"), "--images", str(tmp_path / "no_images"),
                        "--out", str(tmp_path / "file" / "x.idx")])
