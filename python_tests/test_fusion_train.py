"""Training and evaluating fusion (shallow cross-encoder) students: the step's candidates and loss against a
recomputation from the teacher's and the student's own scores, the training command, the cascade against a
hand-computed ranking, and the evaluate / speed rows."""

from __future__ import annotations

import json
import os

import pytest
import torch

from dcd_ext.losses.candidates import authors_candidate_loss, candidate_loss
from dcd_ext.data import RetrievalSet, make_synthetic_split, vocabulary
from dcd_ext.losses.fusion import FusionLoss
from dcd_ext.retrieval import METRIC_KEYS, recall_at_k
from dcd_ext.retrieval.cascade import evaluate_cascade
from dcd_ext.students import build_fusion_student, load_student
from dcd_ext.teachers import load_teacher
from dcd_ext.train import main
from train_fixtures import interrupt_at_step, write_table

RESULT_KEYS = set(METRIC_KEYS) | {"ms_per_query"}


@pytest.fixture(scope="module")
def vilt2(tmp_path_factory):
    """A 2-layer tiny ViLT with weights large enough to give distinct scores."""
    from dcd_ext.teachers.vilt import build_tiny_vilt
    root = tmp_path_factory.mktemp("vilt2")
    build_tiny_vilt(root, vocabulary(), image_size=32, patch_size=8, hidden=32, layers=2, heads=2,
                    max_text_len=16, init_std=0.2, seed=3)
    return str(root)


@pytest.fixture(scope="module")
def batch():
    split = make_synthetic_split("fusion", 6, seed=4)
    rows = list(range(10))  # captions 0..9 with their images; some images appear twice
    images = [split.images[split.caption_image[j]] for j in rows]
    texts = [split.captions[j] for j in rows]
    ids = torch.tensor([split.caption_image[j] for j in rows])
    return images, texts, ids


def scores_of(model, images, texts, cand, anchors_are_images):
    """[B, K+1] scores of (anchor row, candidate row) pairs, -inf where the candidate is absent."""
    slots = [(i, m) for i in range(cand.shape[0]) for m in range(cand.shape[1]) if cand[i, m] >= 0]
    pairs = [[i, int(cand[i, m])] if anchors_are_images else [int(cand[i, m]), i] for i, m in slots]
    scores = model.score_pairs(images, texts, pairs)
    out = torch.full(cand.shape, float("-inf"))
    for (i, m), value in zip(slots, scores.tolist()):
        out[i, m] = value
    return out


@pytest.mark.parametrize("recipe,mine_by", [("dcd", "teacher"), ("dcd", "student"), ("authors", "student")])
def test_step_is_the_loss_of_the_student_and_teacher_scores(vilt2, batch, recipe, mine_by):
    images, texts, ids = batch
    teacher = load_teacher("vilt", vilt2)
    student = build_fusion_student(teacher, [1]).train()
    kw = dict(recipe=recipe, k=3, alpha=0.3, temperature=2.0, kind="kl", weighting="dcd", mine_by=mine_by,
              teacher_pool=5, seed=7)
    twin = FusionLoss(teacher, **kw)  # same seed: draws the same random pools
    loss = FusionLoss(teacher, **kw)
    out = loss(student, images, texts, ids)

    rows = torch.arange(10).view(-1, 1)
    pools = [torch.cat([rows, twin.random_pool(ids)], 1), torch.cat([rows, twin.random_pool(ids)], 1)]
    ranker = teacher if recipe == "authors" or mine_by == "teacher" else student
    expected_z, expected_t, valids, cands = [], [], [], []
    for direction, pool in enumerate(pools):
        images_anchor = direction == 0
        assert (pool[:, 1:] >= 0).all()
        for i in range(10):  # never a row of the anchor's own image among the negatives
            assert all(int(ids[c]) != int(ids[i]) for c in pool[i, 1:].tolist())
        rank = scores_of(ranker, images, texts, pool, images_anchor)
        top = rank[:, 1:].topk(3, dim=1).indices
        cand = torch.cat([pool[:, :1], torch.gather(pool[:, 1:], 1, top)], 1)
        with torch.no_grad():
            expected_z.append(scores_of(student, images, texts, cand, images_anchor))
            expected_t.append(scores_of(teacher, images, texts, cand, images_anchor))
        valids.append(cand >= 0)
        cands.append(cand)
    if recipe == "authors":
        parts = [authors_candidate_loss(z, t, 2.0, 0.3, v) for z, t, v in zip(expected_z, expected_t, valids)]
        expected = 0.5 * (parts[0].loss + parts[1].loss)
    else:
        parts = [candidate_loss(z, t, 2.0, "kl", "dcd", v) for z, t, v in zip(expected_z, expected_t, valids)]
        expected = 0.3 * 0.5 * (parts[0].dist + parts[1].dist) + 0.7 * 0.5 * (parts[0].hard + parts[1].hard)
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-4, atol=1e-5)
    assert out.con is None and out.teacher_pairs > 0
    # each distinct pair is scored once by the teacher (rows of one image count once): the whole pools when
    # it ranks them, else only the candidates kept
    lists = pools if ranker is teacher else cands
    first = {int(v): min(r for r in range(10) if int(ids[r]) == int(v)) for v in ids}
    distinct = {(first[int(ids[i])], int(c)) for i in range(10) for c in lists[0][i]} | \
               {(first[int(ids[int(c)])], i) for i in range(10) for c in lists[1][i]}
    assert out.teacher_pairs == len(distinct)
    for p in teacher.model.parameters():
        p.grad = None
    out.loss.backward()
    assert all(p.grad is None for p in teacher.model.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_train_command_fusion_run_and_exact_resume(vilt2, tmp_path, monkeypatch):
    table = write_table(str(tmp_path), num_images=24)

    def run(out, *extra):
        return main(["--data", table, "--teacher", vilt2, "--student", "fusion", "--fusion-layers", "1",
                     "--epochs", "2", "--batch-size", "8", "--k", "2", "--teacher-pool", "4", "--lr", "1e-3",
                     "--log-every", "1", "--out", str(out), "--no-progress", *extra])

    assert run(tmp_path / "straight") == 0
    straight = tmp_path / "straight"
    results = json.loads((straight / "results.json").read_text())
    assert list(results) == ["student_fusion_dcd", "teacher"]
    assert all(set(r) == RESULT_KEYS for r in results.values())
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("con" not in r and "logit_scale" not in r and r["teacher_pairs"] > 0 for r in rows)
    student = load_student(str(straight / "student_fusion_dcd"))
    assert student.is_cross_encoder and student.layers_kept == (1,)
    teacher = load_teacher("vilt", vilt2)
    start = build_fusion_student(teacher, [1])
    moved = sum(float((a - b).abs().sum()) for a, b in zip(student.state_dict().values(), start.state_dict().values()))
    assert moved > 0  # it trained
    # the evaluation is the saved student scoring every pair of the test split
    test = RetrievalSet("t", *_table_test_split(table))
    from dcd_ext.retrieval.cascade import evaluate_cross_encoder
    again, _ = evaluate_cross_encoder(student, test)
    assert again["rsum"] == pytest.approx(results["student_fusion_dcd"]["rsum"])

    restore_loop = interrupt_at_step(monkeypatch, 3)
    assert run(tmp_path / "resumed") == 130
    restore_loop()
    assert run(tmp_path / "resumed", "--resume", str(tmp_path / "resumed")) == 0
    resumed = load_student(str(tmp_path / "resumed" / "student_fusion_dcd")).state_dict()
    for key, value in student.state_dict().items():
        torch.testing.assert_close(resumed[key], value, msg=key)


def _table_test_split(table):
    from dcd_ext.data import load_split
    split = load_split(table, None, "test")
    return split.images, split.captions, split.caption_image


def test_authors_recipe_run(vilt2, tmp_path):
    table = write_table(str(tmp_path), num_images=24)
    assert main(["--data", table, "--teacher", vilt2, "--student", "fusion", "--recipe", "authors",
                 "--epochs", "1", "--batch-size", "8", "--k", "2", "--teacher-pool", "4", "--out",
                 str(tmp_path / "a"), "--no-progress"]) == 0
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert list(results) == ["student_fusion_authors", "teacher"]
    assert load_student(str(tmp_path / "a" / "student_fusion_authors")).layers_kept == (0,)  # default of 2


def test_fusion_flag_errors(tmp_path, capsys, vilt2):
    table = write_table(str(tmp_path), num_images=8)
    cases = [(["--data", table, "--student", "fusion", "--loss", "contrastive"], "needs --teacher"),
             (["--data", table, "--teacher", vilt2, "--recipe", "authors"], "--recipe authors"),
             (["--data", table, "--demo-fusion", "--loss", "contrastive"], "--demo-fusion belongs"),
             (["--data", table, "--teacher", vilt2, "--student", "fusion", "--accum-steps", "2"], "--accum-steps"),
             (["--data", table, "--teacher", vilt2, "--student", "fusion", "--fusion-layers", "a,b"],
              "--fusion-layers")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, argv
    with pytest.raises(ValueError, match="outside the teacher's 2 joint layers"):
        main(["--data", table, "--teacher", vilt2, "--student", "fusion", "--fusion-layers", "0,2", "--out",
              str(tmp_path / "x"), "--no-progress"])


class TableStudent:
    """A dual encoder whose embeddings are fixed rows: image i -> e_i, caption j -> column j of D."""

    training = False

    def __init__(self, split, dual):
        self.image_index = {id(im): i for i, im in enumerate(split.images)}
        self.caption_index = {c: j for j, c in enumerate(split.captions)}
        self.img = torch.eye(dual.shape[0])
        self.txt = dual.T.contiguous()

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def preprocess_images(self, images):
        return torch.tensor([[self.image_index[id(im)]] for im in images])

    def encode_image(self, pixels):
        return self.img[pixels[:, 0]]

    def tokenizer(self, texts):
        ids = torch.tensor([[self.caption_index[t]] for t in texts])
        return ids, torch.ones_like(ids)

    def encode_text(self, ids, mask):
        return self.txt[ids[:, 0]]


class TableCrossEncoder:
    def __init__(self, split, scores):
        self.image_index = {id(im): i for i, im in enumerate(split.images)}
        self.caption_index = {c: j for j, c in enumerate(split.captions)}
        self.scores = scores

    def score_pairs(self, images, texts, pairs):
        return torch.tensor([float(self.scores[self.image_index[id(images[i])], self.caption_index[texts[j]]])
                             for i, j in torch.as_tensor(pairs).tolist()])


def test_cascade_equals_a_hand_computed_ranking():
    scenes = make_synthetic_split("cascade", 3, seed=5)
    split = RetrievalSet("cascade", scenes.images, [f"caption {j}" for j in range(6)], [0, 0, 1, 1, 2, 2])
    dual = torch.tensor([[.2, .1, .9, .3, .8, .0],     # image 0: c2 c4 c3 c0 c1 c5
                         [.7, .0, .5, .1, .2, .3],     # image 1: c0 c2 c5 c4 c3 c1
                         [.4, .6, .0, .2, .1, .5]])    # image 2: c1 c5 c0 c3 c4 c2
    cross = torch.tensor([[.0, .0, .1, .0, .3, .0],
                          [.0, .0, .9, .0, .0, .0],
                          [.5, .2, .0, .0, .0, .7]])
    results = evaluate_cascade(TableStudent(split, dual), TableCrossEncoder(split, cross), split, depths=(2, 1))
    # depth 2, worked out by hand: each query's first two dual candidates re-sorted by the cross scores
    i2t = [[4, 2, 3, 0, 1, 5],    # image 0: {c2 .1, c4 .3} -> c4 c2 (miss at 1)
           [2, 0, 5, 4, 3, 1],    # image 1: {c0 .0, c2 .9} -> c2 c0 (hit)
           [5, 1, 0, 3, 4, 2]]    # image 2: {c1 .2, c5 .7} -> c5 c1 (hit)
    t2i = [[2, 1, 0],   # c0: dual 1 2 0, cross {1: .0, 2: .5} -> 2 1 (miss)
           [2, 0, 1],   # c1: dual 2 0 1, cross {2: .2, 0: .0} -> 2 0 (miss)
           [1, 0, 2],   # c2: dual 0 1 2, cross {0: .1, 1: .9} -> 1 0 (hit)
           [0, 2, 1],   # c3: dual 0 2 1, cross {0: 0, 2: 0}, a tie keeps the dual order (miss)
           [0, 1, 2],   # c4: dual 0 1 2, cross {0: .3, 1: .0} -> 0 1 (miss)
           [2, 1, 0]]   # c5: dual 2 1 0, cross {2: .7, 1: .0} -> 2 1 (hit)
    pad = lambda rows, width: torch.tensor([r + [-1] * (width - len(r)) for r in rows])  # noqa: E731
    expected = recall_at_k(pad(i2t, 10), pad(t2i, 10), split.caption_image)
    got = results["cascade_top2"]
    assert got["i2t_r1"] == pytest.approx(200 / 3) and got["t2i_r1"] == pytest.approx(200 / 6)
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(expected[key]), key
    # depth 1 re-orders nothing: the dual encoder alone (R@1: no image query, caption c5 only)
    assert results["cascade_top1"]["i2t_r1"] == 0.0 and results["cascade_top1"]["t2i_r1"] == pytest.approx(100 / 6)
    assert got["ms_per_query"] > 0


def test_evaluate_and_speed_report_fusion_and_cascade(vilt2, tmp_path, capsys):
    from dcd_ext.evaluate import main as evaluate_main
    from dcd_ext.speed import main as speed_main
    from dcd_ext.students import build_small_student, save_student
    from dcd_ext.students.fusion import save_fusion_student

    table = write_table(str(tmp_path), num_images=24)
    teacher = load_teacher("vilt", vilt2)
    save_fusion_student(build_fusion_student(teacher, [1]), tmp_path / "fusion")
    torch.manual_seed(0)
    dual = build_small_student(["a red circle"], width=16, embed_dim=8, image_channels=[4, 4, 4], text_layers=1)
    save_student(dual, str(tmp_path / "dual"))
    out = tmp_path / "eval.json"
    assert evaluate_main(["--student", str(tmp_path / "dual"), "--fusion", str(tmp_path / "fusion"), "--data", table,
                          "--cascade-k", "3,12", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert list(results) == ["student", "fusion", "cascade_top3", "cascade_top12"]
    # re-ranking all 12 test captions / 6 images with the fusion student is the fusion student's own ranking
    assert results["cascade_top12"]["rsum"] == pytest.approx(results["fusion"]["rsum"])
    with pytest.raises(SystemExit):
        evaluate_main(["--student", str(tmp_path / "fusion"), "--data", table])
    assert "pass it as --fusion" in capsys.readouterr().err

    report_path = tmp_path / "speed.json"
    assert speed_main(["--tiny", "--teachers", "vilt", "--gallery-measured", "3", "--gallery", "100",
                       "--queries", "1", "--cascade-k", "2,50", "--json", str(report_path)]) == 0
    printed = capsys.readouterr().out
    assert "fusion all-pairs / query" in printed and "cascade top 50 / query" in printed
    result = json.loads(report_path.read_text())["results"][0]
    fusion = result["fusion"]
    measured, large = result["rows"]
    costs = fusion["measured"]
    assert large["fusion_all_pairs_ms_per_query"] == pytest.approx(costs["text_encode_ms_per_query"]
                                                                   + 100 * costs["joint_ms_per_pair"])
    assert large["cascade_top50_ms_per_query"] == pytest.approx(large["student_ms_per_query"]
                                                                + 50 * fusion["rerank_ms_per_candidate"])
    assert measured["cascade_top2_ms_per_query"] == pytest.approx(measured["student_ms_per_query"]
                                                                  + 2 * fusion["rerank_ms_per_candidate"])
    assert fusion["rerank_candidates_measured"] == 3
    assert fusion["layers"] == [0] and fusion["teacher_layers"] == 1


def test_tiny_demo_with_fusion_students(tmp_path, capsys):
    code = main(["--demo-size", "tiny", "--demo-fusion", "--cascade-k", "2,5", "--out", str(tmp_path / "run"),
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert code == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(results) == ["teacher", "student_contrastive", "student_dcd", "student_dcd_rerank",
                             "student_fusion_dcd", "cascade_dcd_top2", "cascade_dcd_top5", "student_fusion_authors",
                             "cascade_authors_top2", "cascade_authors_top5"]
    assert all(set(r) == RESULT_KEYS for r in results.values())
    for name in ("student_fusion_dcd", "student_fusion_authors"):
        assert load_student(str(tmp_path / "run" / name)).is_cross_encoder
        assert os.listdir(tmp_path / "run" / "checkpoints" / name) == ["epoch_001.safetensors"]
    assert "Fusion students" in (tmp_path / "run" / "report.md").read_text()
    assert "cascade_authors_top5" in capsys.readouterr().out
