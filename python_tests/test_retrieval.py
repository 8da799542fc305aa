"""Retrieval helpers and evaluation: recall against hand-checked rankings, search, teacher re-ranking."""

from __future__ import annotations

import pytest
import torch

from dcd_ext.data import RetrievalSet, make_synthetic_split
from dcd_ext.retrieval import (METRIC_KEYS, evaluate_student, evaluate_student_and_rerank, evaluate_teacher,
                               format_table, rankings_from_scores, recall_at_k, rerank, score_split_pairs, search,
                               student_rankings, teacher_rerank, teacher_score_matrix)
from dcd_ext.students import build_small_student
from train_fixtures import FakeTeacher


def test_recall_matches_a_hand_checked_example():
    caption_image = [0, 0, 1, 1, 2, 2]
    i2t = torch.tensor([[2, 0, 4],     # image 0: its caption 0 at rank 2
                        [3, 1, 0],     # image 1: caption 3 at rank 1
                        [0, 1, -1]])   # image 2: none of captions 4, 5 (and a padded slot)
    t2i = torch.tensor([[0, 1, 2],     # caption 0 -> image 0 at rank 1
                        [1, 0, 2],     # caption 1 -> image 0 at rank 2
                        [0, 2, 1],     # caption 2 -> image 1 at rank 3
                        [1, 2, 0],     # caption 3 -> image 1 at rank 1
                        [2, -1, -1],   # caption 4 -> image 2 at rank 1
                        [0, 1, -1]])   # caption 5 -> image 2 missing
    r = recall_at_k(i2t, t2i, caption_image, ks=(1, 2, 3))
    expected = {"i2t_r1": 100 / 3, "i2t_r2": 200 / 3, "i2t_r3": 200 / 3,
                "t2i_r1": 50.0, "t2i_r2": 400 / 6, "t2i_r3": 500 / 6}
    for key, value in expected.items():
        assert r[key] == pytest.approx(value, abs=1e-4), key
    assert r["rsum"] == pytest.approx(sum(expected.values()), abs=1e-3)


def test_recall_checks_its_inputs():
    with pytest.raises(ValueError, match="caption_image has 3 entries"):
        recall_at_k(torch.zeros(2, 10, dtype=torch.int64), torch.zeros(4, 10, dtype=torch.int64), [0, 1, 1])
    with pytest.raises(ValueError, match="Recall@10 needs"):
        recall_at_k(torch.zeros(2, 5, dtype=torch.int64), torch.zeros(2, 5, dtype=torch.int64), [0, 1])


def test_search_is_the_exact_top_k_and_pads_past_the_gallery():
    g = torch.Generator().manual_seed(0)
    q, keys = torch.randn(7, 16, generator=g), torch.randn(12, 16, generator=g)
    got = search(q, keys, 5)
    torch.testing.assert_close(got, (q @ keys.T).topk(5, dim=1).indices)
    padded = search(q, keys[:3], 5)
    assert (padded[:, 3:] == -1).all() and (padded[:, :3] >= 0).all()


def test_rerank_sorts_the_head_by_score_and_keeps_the_tail():
    ranking = torch.tensor([[5, 3, 9, 1], [7, -1, 2, 8]])
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.0, 9.0, 1.0]])
    assert rerank(ranking, scores, 3).tolist() == [[3, 9, 5, 1], [2, 7, -1, 8]]
    ties = torch.tensor([[1.0, 1.0, 0.0], [2.0, 0.0, 2.0]])
    assert rerank(ranking, ties, 3).tolist() == [[5, 3, 9, 1], [7, 2, -1, 8]]


@pytest.fixture(scope="module")
def gallery():
    return make_synthetic_split("retrieval", 12, seed=2)


def fake_teacher_for(split, seed=0):
    image_key = {id(im): i for i, im in enumerate(split.images)}
    caption_key = {c: j for j, c in reversed(list(enumerate(split.captions)))}  # a repeated caption scores alike
    return FakeTeacher(split.num_images, split.num_captions, seed=seed, image_key=lambda im: image_key[id(im)],
                       text_key=lambda t: caption_key[t])


def expected_scores(teacher, split):
    return torch.tensor([[teacher.true_score(i, teacher.text_key(c)) for c in split.captions]
                         for i in range(split.num_images)])


def test_teacher_score_matrix_scores_every_pair_once(gallery):
    teacher = fake_teacher_for(gallery)
    scores = teacher_score_matrix(teacher, gallery, pairs_per_call=5 * 24)
    torch.testing.assert_close(scores, expected_scores(teacher, gallery))
    assert teacher.calls == [120, 120, 48]  # blocks of whole rows: 5 + 5 + 2 images x 24 captions
    i2t, t2i = rankings_from_scores(scores, 30)
    assert i2t.shape == (12, 30) and (i2t[:, 24:] == -1).all()
    torch.testing.assert_close(i2t[:, :24], scores.argsort(dim=1, descending=True, stable=True))
    torch.testing.assert_close(t2i[:, :12], scores.T.argsort(dim=1, descending=True, stable=True))


def test_score_split_pairs_loads_each_image_once_per_chunk(gallery, monkeypatch):
    teacher = fake_teacher_for(gallery)
    loads = []
    original = gallery.load_images
    monkeypatch.setattr(gallery, "load_images", lambda idx: loads.extend(idx) or original(idx))
    pairs = torch.tensor([[3, 0], [1, 5], [3, 7], [1, 2], [0, 0], [11, 23]])
    scores = score_split_pairs(teacher, gallery, pairs, images_per_chunk=2)
    ref = expected_scores(teacher, gallery)
    torch.testing.assert_close(scores, ref[pairs[:, 0], pairs[:, 1]])
    assert sorted(loads) == [0, 1, 3, 11]


def test_teacher_rerank_reorders_the_student_head_by_teacher_scores(gallery):
    teacher = fake_teacher_for(gallery, seed=3)
    g = torch.Generator().manual_seed(1)
    i2t = torch.stack([torch.randperm(24, generator=g)[:10] for _ in range(12)])
    t2i = torch.stack([torch.randperm(12, generator=g)[:10] for _ in range(24)])
    new_i2t, new_t2i = teacher_rerank(teacher, gallery, i2t, t2i, depth=6)
    ref = expected_scores(teacher, gallery)
    for q in range(12):
        head = i2t[q, :6]
        order = torch.sort(ref[q, head], descending=True, stable=True).indices
        assert new_i2t[q].tolist() == head[order].tolist() + i2t[q, 6:].tolist()
    for q in range(24):
        head = t2i[q, :6]
        order = torch.sort(ref[head, q], descending=True, stable=True).indices
        assert new_t2i[q].tolist() == head[order].tolist() + t2i[q, 6:].tolist()
    distinct = {(q, int(j)) for q in range(12) for j in i2t[q, :6]} | {(int(i), q) for q in range(24) for i in t2i[q, :6]}
    assert sum(teacher.calls) == len(distinct)


class OracleTeacher:
    """Scores 1 for a caption of the image, 0 otherwise."""

    def __init__(self, split):
        self.index = {id(im): i for i, im in enumerate(split.images)}
        self.owner = {c: split.caption_image[j] for j, c in enumerate(split.captions)}

    def score_pairs(self, images, texts, pairs):
        return torch.tensor([float(self.owner[texts[j]] == self.index[id(images[i])]) for i, j in pairs.tolist()])


def test_evaluation_of_student_rerank_and_teacher(gallery):
    torch.manual_seed(0)
    student = build_small_student(gallery.captions, width=16, embed_dim=8, image_channels=[4, 4, 4], text_layers=1)
    alone = evaluate_student(student, gallery)
    assert set(alone) == set(METRIC_KEYS) | {"ms_per_query"} and alone["ms_per_query"] > 0
    i2t, t2i, _ = student_rankings(student, gallery, depth=10)
    assert alone["rsum"] == pytest.approx(recall_at_k(i2t, t2i, gallery.caption_image)["rsum"])
    # re-ranking the whole gallery with a perfect teacher puts a positive first in every query
    unique = RetrievalSet("unique", gallery.images, [f"caption {j}" for j in range(24)], gallery.caption_image)
    _, reranked = evaluate_student_and_rerank(student, OracleTeacher(unique), unique, rerank_k=24)
    assert reranked["i2t_r1"] == 100.0 and reranked["t2i_r1"] == 100.0
    assert reranked["ms_per_query"] > 0
    teacher_metrics, estimated = evaluate_teacher(OracleTeacher(unique), unique, max_pairs=10_000)
    assert not estimated and teacher_metrics["rsum"] == 600.0
    sampled, estimated = evaluate_teacher(OracleTeacher(unique), unique, max_pairs=10, sample_pairs=16)
    assert estimated and sampled["rsum"] is None and sampled["ms_per_query"] > 0
    table = format_table({"teacher": sampled, "student": alone})
    assert "n/a" in table and table.splitlines()[0].split()[0] == "model"
