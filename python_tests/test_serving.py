"""Serving commands: ``python -m dcd_ext.index``, ``dcd_ext.search`` and ``dcd_ext.speed`` on tiny models.

The student is a small dual encoder briefly fitted to the gallery's own captions, so a caption's image
(and an image's caption) is a planted first hit; the other checks compare against embeddings, top-k
and teacher scores computed here directly.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open

from dcd_ext import index as index_cli
from dcd_ext import ops, search as search_cli, speed as speed_cli
from dcd_ext.data import vocabulary
from dcd_ext.serving.index_file import load_index
from dcd_ext.students import build_small_student, load_student, save_student

from service_fixtures import ID_OFFSET, NUM_IMAGES, write_scenes


def fit_student(student, images, captions, steps=80):
    """Overfit the student on (image i, caption i) so each caption retrieves its own image."""
    pixels = student.preprocess_images(images)
    ids, mask = student.tokenizer(captions)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    for _ in range(steps):
        img, txt, scale = student(pixels, ids, mask)
        loss = ops.contrastive_loss(img, txt, scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return student.eval()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """Image files, one caption per image (in a .txt), a fitted student folder, and both indexes."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("serving")
    scenes, paths, captions = write_scenes(root, "serving")
    image_dir = root / "images"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        student = build_small_student(captions=vocabulary(), image_size=32, width=64, embed_dim=32,
                                      image_channels=[8, 16, 32], text_layers=1, heads=2)
        fit_student(student, [scenes.images[i] for i in range(NUM_IMAGES)], captions)
    save_student(student, str(root / "student"))
    image_index, text_index = str(root / "images.idx"), str(root / "captions.idx")
    index_cli.main(["--student", str(root / "student"), "--images", str(image_dir), "--out", image_index,
                    "--id-offset", str(ID_OFFSET), "--export-faiss", str(root / "images.faiss"),
                    "--device", "cpu", "--no-progress", "--batch-size", "3"])
    index_cli.main(["--student", str(root / "student"), "--data", str(root / "captions.txt"), "--modality", "text",
                    "--out", text_index, "--device", "cpu", "--no-progress"])
    return {"root": root, "paths": paths, "captions": captions, "student_dir": str(root / "student"),
            "image_index": image_index, "text_index": text_index, "faiss": str(root / "images.faiss")}


def run_search(argv, tmp_path):
    out = tmp_path / "results.json"
    search_cli.main(list(argv) + ["--device", "cpu", "--json", str(out)])
    return json.loads(out.read_text())


def reference_image_embeddings(gallery):
    from PIL import Image
    student = load_student(gallery["student_dir"])
    with torch.no_grad():
        return student, student.encode_image(student.preprocess_images([Image.open(p).convert("RGB")
                                                                        for p in gallery["paths"]]))


def test_index_file_holds_ids_embeddings_and_metadata(gallery):
    student, expected = reference_image_embeddings(gallery)
    with safe_open(gallery["image_index"], framework="pt") as f:
        meta = f.metadata()
        embeddings, ids = f.get_tensor("embeddings"), f.get_tensor("ids")
    assert ids.dtype == torch.int64 and ids.tolist() == list(range(ID_OFFSET, ID_OFFSET + NUM_IMAGES))
    assert embeddings.dtype == torch.float32 and embeddings.shape == (NUM_IMAGES, 32)
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=1e-5)
    assert meta["modality"] == "image" and meta["student"] == os.path.abspath(gallery["student_dir"])
    index = load_index(gallery["image_index"])
    assert index.names == [f"scene_{i}.png" for i in range(NUM_IMAGES)]
    assert index.sources == gallery["paths"]
    assert not [n for n in os.listdir(gallery["root"]) if n.endswith(".tmp")]


def test_float16_index(gallery, tmp_path):
    out = str(tmp_path / "half.idx")
    index_cli.main(["--student", gallery["student_dir"], "--images", os.path.dirname(gallery["paths"][0]),
                    "--out", out, "--dtype", "float16", "--device", "cpu", "--no-progress"])
    with safe_open(out, framework="pt") as f:
        assert f.get_tensor("embeddings").dtype == torch.float16
    doc = run_search(["--index", out, "--text", gallery["captions"][2], "--k", "1"], tmp_path)
    assert doc["queries"][0]["results"][0]["name"] == "scene_2.png"


def test_text_query_finds_planted_image_and_matches_reference(gallery, tmp_path):
    student, image_emb = reference_image_embeddings(gallery)
    queries = [gallery["captions"][5], gallery["captions"][1]]
    doc = run_search(["--index", gallery["image_index"], "--text", queries[0], "--text", queries[1], "--k", "4"],
                     tmp_path)
    for q, planted, entry in zip(queries, (5, 1), doc["queries"]):
        hits = entry["results"]
        assert entry["query"] == q
        assert hits[0]["id"] == ID_OFFSET + planted and hits[0]["name"] == f"scene_{planted}.png"
        with torch.no_grad():
            ids, mask = student.tokenizer([q])
            sims = (student.encode_text(ids, mask) @ image_emb.T)[0]
        order = torch.sort(sims, descending=True, stable=True).indices[:4]
        assert [h["id"] for h in hits] == (order + ID_OFFSET).tolist()
        torch.testing.assert_close(torch.tensor([h["score"] for h in hits]), sims[order], atol=1e-5, rtol=0)
        assert all(h["teacher_score"] is None for h in hits)


def test_queries_file_and_image_query_on_text_index(gallery, tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_text(gallery["captions"][0] + "\n\n" + gallery["captions"][7] + "\n")
    doc = run_search(["--index", gallery["image_index"], "--queries", str(queries), "--k", "2"], tmp_path)
    assert [e["results"][0]["id"] for e in doc["queries"]] == [ID_OFFSET, ID_OFFSET + 7]
    doc = run_search(["--index", gallery["text_index"], "--image", gallery["paths"][6], "--k", "3"], tmp_path)
    top = doc["queries"][0]["results"][0]
    assert top["id"] == 6 and top["name"] == gallery["captions"][6]


def test_printed_table(gallery, capsys):
    search_cli.main(["--index", gallery["image_index"], "--text", gallery["captions"][3], "--k", "2",
                     "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"query: {gallery['captions'][3]}"
    assert lines[2].split()[:2] == ["1", str(ID_OFFSET + 3)] and lines[2].endswith("scene_3.png")


def test_faiss_export_gives_the_same_top_k(gallery):
    faiss = pytest.importorskip("faiss")
    student, image_emb = reference_image_embeddings(gallery)
    with torch.no_grad():
        ids, mask = student.tokenizer(gallery["captions"])
        queries = student.encode_text(ids, mask)
    flat = faiss.read_index(gallery["faiss"])
    assert flat.ntotal == NUM_IMAGES
    faiss_scores, faiss_ids = flat.search(queries.numpy(), 5)
    values, positions = ops.similarity_topk(queries, image_emb, 5)
    assert (torch.from_numpy(faiss_ids) == positions + ID_OFFSET).all()
    torch.testing.assert_close(torch.from_numpy(faiss_scores), values, atol=1e-5, rtol=0)


def test_teacher_rerank_is_a_permutation_ordered_by_teacher_score(gallery, tmp_path):
    from PIL import Image

    from dcd_ext.teachers import load_teacher
    from dcd_ext.teachers.vilt import build_tiny_vilt

    teacher_dir = build_tiny_vilt(tmp_path / "vilt", vocabulary(), image_size=32, patch_size=16, hidden=32,
                                  layers=1, heads=2, seed=1)
    query = gallery["captions"][4]
    base = ["--index", gallery["image_index"], "--text", query, "--k", "5"]
    student_hits = run_search(base, tmp_path)["queries"][0]["results"]
    reranked = run_search(base + ["--teacher-kind", "vilt", "--teacher", str(teacher_dir), "--rerank-depth", "5"],
                          tmp_path)["queries"][0]["results"]
    assert sorted(h["id"] for h in reranked) == sorted(h["id"] for h in student_hits)
    teacher = load_teacher("vilt", teacher_dir)
    images = [Image.open(gallery["paths"][h["id"] - ID_OFFSET]).convert("RGB") for h in reranked]
    expected = teacher.score(images, [query] * len(images))
    got = torch.tensor([h["teacher_score"] for h in reranked])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got[:-1] >= got[1:]).all()
    student_score = {h["id"]: h["student_score"] for h in student_hits}
    assert all(abs(h["student_score"] - student_score[h["id"]]) < 1e-6 for h in reranked)


def test_clear_errors(gallery, tmp_path):
    missing = str(tmp_path / "nope.idx")
    with pytest.raises(FileNotFoundError, match="nope.idx"):
        search_cli.main(["--index", missing, "--text", "a red circle"])
    with pytest.raises(ValueError, match=r"index: .*captions\.idx holds text embeddings"):
        search_cli.main(["--index", gallery["text_index"], "--text", "a red circle"])
    with pytest.raises(ValueError, match=r"images\.idx holds image embeddings.*--image"):
        search_cli.main(["--index", gallery["image_index"], "--image", gallery["paths"][0]])
    narrow = str(tmp_path / "narrow")
    save_student(build_small_student(captions=vocabulary(), image_size=32, width=64, embed_dim=16,
                                     image_channels=[8, 16, 32], text_layers=1, heads=2), narrow)
    with pytest.raises(ValueError, match=r"student: .*narrow embeds to width 16.*width 32"):
        search_cli.main(["--index", gallery["image_index"], "--student", narrow, "--text", "a red circle"])
    with pytest.raises(ValueError, match="rerank_depth"):
        search_cli.main(["--index", gallery["image_index"], "--text", "x", "--rerank-depth", "3"])
    not_an_index = tmp_path / "garbage.idx"
    not_an_index.write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="garbage.idx"):
        search_cli.main(["--index", str(not_an_index), "--text", "x"])
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        index_cli.main(["--student", gallery["student_dir"], "--images", str(tmp_path / "no_such_folder"),
                        "--out", str(tmp_path / "x.idx")])


def test_speed_tiny_report(tmp_path, capsys):
    out = tmp_path / "speed.json"
    speed_cli.main(["--tiny", "--teachers", "vilt,meter", "--gallery-measured", "3", "--gallery", "400",
                    "--queries", "1", "--k", "4", "--json", str(out)])
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "| teacher | G |" in printed and "400 (extrapolated)" in printed and "3 (measured)" in printed
    assert report["gallery"] == 400 and report["gallery_measured"] == 3 and report["k"] == 4
    assert "extrapolated linearly to 400" in report["extrapolation"]
    assert "scaled to k = 4" in report["extrapolation"]
    assert [r["teacher"] for r in report["results"]] == ["vilt", "meter"]
    for result in report["results"]:
        measured, large = result["rows"]
        assert not measured["extrapolated"] and large["extrapolated"] and large["gallery"] == 400
        per_pair = result["measured"]["teacher"]["joint_ms_per_pair"]
        text_ms = result["measured"]["teacher"]["text_encode_ms_per_query"]
        assert large["teacher_all_pairs_ms_per_query"] == pytest.approx(text_ms + 400 * per_pair)
        assert large["speedup_student"] == pytest.approx(large["teacher_all_pairs_ms_per_query"]
                                                         / large["student_ms_per_query"])
        assert large["student_rerank_ms_per_query"] > large["student_ms_per_query"] > 0
        assert isinstance(result["meets_target"], bool)


# ---- the index records its student; search refuses another one (issue "nothing silent", item 2) ----------

def other_student_of_the_same_width(folder, seed=7):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        student = build_small_student(captions=vocabulary(), image_size=32, width=64, embed_dim=32,
                                      image_channels=[8, 16, 32], text_layers=1, heads=2)
    save_student(student, str(folder))
    return str(folder)


def test_index_records_the_fingerprint_of_its_student(gallery):
    from dcd_ext.students import student_fingerprint
    with safe_open(gallery["image_index"], framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "dcd_ext.gallery/3"
    assert meta["student_fingerprint"] == student_fingerprint(load_student(gallery["student_dir"]))
    other = load_student(other_student_of_the_same_width(gallery["root"] / "fp_other"))
    assert student_fingerprint(other) != meta["student_fingerprint"]


def test_search_refuses_a_student_of_the_same_width_that_did_not_build_the_index(gallery, tmp_path, capsys):
    other = other_student_of_the_same_width(tmp_path / "other")
    query = ["--index", gallery["image_index"], "--text", gallery["captions"][2], "--k", "3"]
    # before: confident garbage; now: refused, naming both students
    with pytest.raises(ValueError, match=r"student: .*other is not the student that built the index .*images\.idx"
                                         r".*--allow-student-mismatch"):
        search_cli.main(query + ["--student", other])
    doc = run_search(query + ["--student", other, "--allow-student-mismatch"], tmp_path)
    assert len(doc["queries"][0]["results"]) == 3
    assert "searching anyway (--allow-student-mismatch)" in capsys.readouterr().err


def test_search_refuses_a_student_folder_retrained_in_place(gallery, tmp_path):
    import shutil
    student_dir = tmp_path / "student"
    shutil.copytree(gallery["student_dir"], student_dir)
    index = str(tmp_path / "photos.idx")
    index_cli.main(["--student", str(student_dir), "--images", os.path.dirname(gallery["paths"][0]), "--out", index,
                    "--device", "cpu", "--no-progress"])
    assert run_search(["--index", index, "--text", gallery["captions"][1], "--k", "1"], tmp_path)
    other_student_of_the_same_width(student_dir)  # the same folder, new weights
    with pytest.raises(ValueError, match="is not the student that built the index"):
        search_cli.main(["--index", index, "--text", gallery["captions"][1]])


def test_a_format_1_index_still_searches_with_a_warning(gallery, tmp_path, capsys):
    from safetensors.torch import save_file
    with safe_open(gallery["image_index"], framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in ("embeddings", "ids")}
    index = load_index(gallery["image_index"])
    old = {k: v for k, v in meta.items() if k != "student_fingerprint"}
    old["format"] = "dcd_ext.gallery/1"  # items as JSON in the header, no fingerprint
    old["items"] = json.dumps([{"name": n, "source": s} for n, s in zip(index.names, index.sources)])
    path = str(tmp_path / "old.idx")
    save_file(tensors, path, metadata=old)
    doc = run_search(["--index", path, "--text", gallery["captions"][5], "--k", "1"], tmp_path)
    assert doc["queries"][0]["results"][0]["id"] == ID_OFFSET + 5
    assert "records no student fingerprint" in capsys.readouterr().err


# ---- silent mismatches at query time (item 6) -------------------------------------------------------------

def test_empty_text_queries_are_refused(gallery, tmp_path):
    from dcd_ext.serving.query import search_index
    from dcd_ext.serving.index_file import load_index
    with pytest.raises(ValueError, match="queries: --text number 2 is empty"):
        search_cli.main(["--index", gallery["image_index"], "--text", "a red circle", "--text", "  "])
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n")
    with pytest.raises(ValueError, match=r"blank\.txt holds no queries"):
        search_cli.main(["--index", gallery["image_index"], "--queries", str(blank)])
    with pytest.raises(ValueError, match="text query 1 is empty"):
        search_index(load_index(gallery["image_index"]), load_student(gallery["student_dir"]), [""], "text")


def test_k_beyond_the_index_and_unknown_query_words_are_reported(gallery, tmp_path, capsys):
    doc = run_search(["--index", gallery["image_index"], "--text", gallery["captions"][0], "--k", "20"], tmp_path)
    assert len(doc["queries"][0]["results"]) == NUM_IMAGES
    err = capsys.readouterr().err
    assert f"--k 20 exceeds the {NUM_IMAGES} items of the index" in err
    assert "unknown token" not in err  # the query's words are all in the student's vocabulary
    run_search(["--index", gallery["image_index"], "--text", "a zebra grazing beside an acacia", "--k", "2"], tmp_path)
    err = capsys.readouterr().err
    assert "student tokenizer: in 1 queries, 5 of 6 words (83.3%) map to the unknown token [UNK]" in err
    assert "'zebra'" in err


# ---- an unreadable image is named, with where it comes from (item 3) ---------------------------------------

def truncate(path, keep=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * keep)])


def test_index_and_search_name_an_unreadable_image(gallery, tmp_path):
    from train_fixtures import write_table
    table = write_table(str(tmp_path), num_images=8, with_split=False)
    truncate(tmp_path / "table_images" / "003.png")
    with pytest.raises(OSError, match=r"gallery, pairs\.csv line \d+: cannot read image file .*003\.png: "
                                      r"image file is truncated"):
        index_cli.main(["--student", gallery["student_dir"], "--data", table, "--out", str(tmp_path / "t.idx"),
                        "--device", "cpu", "--no-progress"])
    assert not (tmp_path / "t.idx").exists()
    bad_query = tmp_path / "query.png"
    with open(gallery["paths"][0], "rb") as f:
        bad_query.write_bytes(f.read()[:60])
    with pytest.raises(OSError, match=r"query image, query 1: cannot read image file .*query\.png"):
        search_cli.main(["--index", gallery["text_index"], "--image", str(bad_query)])


# ---- speed times the user's own student and teacher on their own gallery (item 10) -------------------------

def test_speed_times_your_own_student_and_teacher_on_your_gallery(gallery, tmp_path, capsys):
    from dcd_ext.teachers.vilt import build_tiny_vilt
    teacher_dir = build_tiny_vilt(tmp_path / "vilt", vocabulary(), image_size=32, patch_size=16, hidden=32,
                                  layers=1, heads=2, seed=1)
    out = tmp_path / "speed.json"
    folder = os.path.dirname(gallery["paths"][0])
    assert speed_cli.main(["--student", gallery["student_dir"], "--teacher", str(teacher_dir), "--images", folder,
                           "--gallery-measured", "3", "--queries", "1", "--k", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["teacher"] for r in report["results"]] == ["vilt"]  # only yours: no random full-size models
    mine = report["results"][0]
    assert mine["student_path"] == os.path.abspath(gallery["student_dir"])
    assert mine["teacher_path"] == os.path.abspath(teacher_dir)
    assert report["gallery_images"] == os.path.abspath(folder)
    assert report["gallery"] == NUM_IMAGES and report["gallery_measured"] == 3  # G: the folder's images
    measured, large = mine["rows"]
    assert measured["gallery"] == 3 and large["gallery"] == NUM_IMAGES
    assert large["teacher_all_pairs_ms_per_query"] == pytest.approx(
        mine["measured"]["teacher"]["text_encode_ms_per_query"]
        + NUM_IMAGES * mine["measured"]["teacher"]["joint_ms_per_pair"])
    assert f"your vilt teacher {teacher_dir} + small student {gallery['student_dir']}" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--student and --teacher go together"):
        speed_cli.main(["--student", gallery["student_dir"]])


def test_shards_built_with_id_offset_search_together_like_one_index(gallery, tmp_path):
    """Issue 22 item 7: two shards of the gallery, ``--index`` repeated, answer as the one-file index does."""
    folder = os.path.dirname(gallery["paths"][0])
    shards = []
    for n, (first, last) in enumerate(((0, 5), (5, NUM_IMAGES))):
        data = tmp_path / f"shard{n}.csv"
        data.write_text("image,caption\n" + "".join(f"{p},x\n" for p in gallery["paths"][first:last]))
        shards.append(str(tmp_path / f"shard{n}.idx"))
        index_cli.main(["--student", gallery["student_dir"], "--data", str(data), "--images", folder,
                        "--out", shards[-1], "--id-offset", str(ID_OFFSET + first), "--device", "cpu", "--no-progress"])
    query = ["--text", gallery["captions"][6], "--text", gallery["captions"][2], "--k", "5"]
    together = run_search(["--index", shards[0], "--index", shards[1]] + query, tmp_path)
    single = run_search(["--index", gallery["image_index"]] + query, tmp_path)
    assert together["index"] == [os.path.abspath(p) for p in shards]
    for a, b in zip(together["queries"], single["queries"]):
        assert [h["id"] for h in a["results"]] == [h["id"] for h in b["results"]]
        torch.testing.assert_close(torch.tensor([h["score"] for h in a["results"]]),
                                   torch.tensor([h["score"] for h in b["results"]]), atol=1e-5, rtol=0)
