"""The search service's HTTP API in process (starlette's TestClient): every route, every error, the
batching, and agreement with ``python -m dcd_ext.search``'s answers."""

from __future__ import annotations

import base64
import io
import logging
import threading

import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from dcd_ext.service.app import build_app  # noqa: E402
from dcd_ext.service.engine import SearchEngine  # noqa: E402
from dcd_ext.serving.index_file import load_index  # noqa: E402
from dcd_ext.serving.query import search_index  # noqa: E402
from dcd_ext.students import load_student, student_fingerprint  # noqa: E402
from dcd_ext.teachers import load_teacher  # noqa: E402
from service_fixtures import ID_OFFSET, NUM_IMAGES, make_gallery  # noqa: E402


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    return make_gallery(tmp_path_factory.mktemp("service"))


@pytest.fixture(scope="module")
def models(gallery):
    student = load_student(gallery["student_dir"])
    return student, load_teacher("vilt", gallery["teacher"])


def engine_for(gallery, models, which="image_index", teacher=True):
    student, t = models
    index = load_index(gallery[which])
    return SearchEngine(index, student, t if teacher else None, "cpu", index_name=gallery[which],
                        student_dir=gallery["student_dir"], teacher_name="demo" if teacher else None,
                        fingerprint=student_fingerprint(student))


@pytest.fixture(scope="module")
def client(gallery, models):
    with TestClient(build_app(engine_for(gallery, models), window_ms=20, max_batch=16)) as c:
        yield c


def png_base64(gallery, n=0) -> str:
    with open(f"{gallery['image_dir']}/scene_{n}.png", "rb") as f:
        return base64.b64encode(f.read()).decode()


def test_search_matches_the_search_command(client, gallery, models):
    query = gallery["captions"][2]
    r = client.post("/search", json={"text": query, "k": 5})
    assert r.status_code == 200, r.text
    doc = r.json()
    expected = search_index(load_index(gallery["image_index"]), models[0], [query], "text", k=5)[0]
    assert [h["id"] for h in doc["results"]] == [h["id"] for h in expected]
    assert [h["name"] for h in doc["results"]] == [h["name"] for h in expected]
    torch.testing.assert_close(torch.tensor([h["student_score"] for h in doc["results"]]),
                               torch.tensor([h["student_score"] for h in expected]))
    assert all(h["teacher_score"] is None for h in doc["results"])
    assert set(doc["timings_ms"]) == {"queue", "embed", "topk", "rerank", "total"}
    assert doc["timings_ms"]["rerank"] == 0 and doc["rerank"] == 0 and doc["k"] == 5


def test_rerank_matches_the_search_command(client, gallery, models):
    query = gallery["captions"][1]
    r = client.post("/search", json={"text": query, "k": 6, "rerank": 4})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    expected = search_index(load_index(gallery["image_index"]), models[0], [query], "text", k=6,
                            teacher=models[1], rerank_depth=4)[0]
    assert [h["id"] for h in hits] == [h["id"] for h in expected]
    torch.testing.assert_close(torch.tensor([h["teacher_score"] for h in hits[:4]]),
                               torch.tensor([h["teacher_score"] for h in expected[:4]]))
    assert all(h["teacher_score"] is None for h in hits[4:])
    assert r.json()["timings_ms"]["rerank"] > 0


def test_concurrent_requests_share_a_batch(client, gallery):
    answers = [None] * 6
    start = threading.Barrier(6)

    def ask(n):
        start.wait()
        answers[n] = client.post("/search", json={"text": gallery["captions"][n], "k": 3, "rerank": 3 * (n % 2)})

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(a is not None and a.status_code == 200 for a in answers)
    assert max(a.json()["batch_size"] for a in answers) > 1
    for n, a in enumerate(answers):  # each request gets its own answer, reranked or not as it asked
        assert (a.json()["results"][0]["teacher_score"] is not None) == bool(n % 2)


def test_health(client, gallery, models):
    doc = client.get("/health").json()
    assert doc["status"] == "ok" and doc["index_size"] == NUM_IMAGES and doc["index_modality"] == "image"
    assert doc["student_fingerprint"] == student_fingerprint(models[0]) and doc["teacher"] == "demo"
    assert doc["device"] == "cpu" and doc["query_modality"] == "text"


def test_page_and_items(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="results"' in page.text and "/search" in page.text
    thumb = client.get(f"/items/{ID_OFFSET + 3}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    from PIL import Image

    assert Image.open(io.BytesIO(thumb.content)).size == (32, 32)


@pytest.mark.parametrize("body, field, status", [
    ({"text": ""}, "text", 400),
    ({"text": "   "}, "text", 400),
    ({"text": "a" * 100_000}, "text", 413),
    ({"text": 3}, "text", 400),
    ({}, "text", 400),
    ({"text": "a red square", "k": 0}, "k", 400),
    ({"text": "a red square", "k": -2}, "k", 400),
    ({"text": "a red square", "k": NUM_IMAGES + 1}, "k", 400),
    ({"text": "a red square", "k": "5"}, "k", 400),
    ({"text": "a red square", "k": True}, "k", 400),
    ({"text": "a red square", "k": 3, "rerank": -1}, "rerank", 400),
    ({"text": "a red square", "k": 3, "rerank": NUM_IMAGES + 1}, "rerank", 400),
    ({"text": "a red square", "k": 3, "limit": 3}, "limit", 400),
    ({"image": "AAAA"}, "image", 400),
    ([1, 2], "body", 400),
])
def test_bad_search_requests_name_the_field(client, body, field, status):
    r = client.post("/search", json=body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and r.json()["error"].startswith(field + ":")


def test_bad_bodies_and_ids(client):
    r = client.post("/search", content=b"text=red", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and r.json()["field"] == "content-type"
    r = client.post("/search", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "body"
    r = client.post("/search", content=b"x" * (9 * 1024 * 1024), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"
    r = client.get("/items/12345")
    assert r.status_code == 404 and r.json()["field"] == "id"
    r = client.get("/items/abc")
    assert r.status_code == 400 and r.json()["field"] == "id"
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.json()["field"] == "path"
    r = client.get("/search")
    assert r.status_code == 405 and r.json()["field"] == "method"


def test_no_teacher_refuses_rerank(gallery, models):
    with TestClient(build_app(engine_for(gallery, models, teacher=False), window_ms=0, max_batch=1)) as c:
        r = c.post("/search", json={"text": "a red square", "k": 3, "rerank": 3})
        assert r.status_code == 400 and r.json()["field"] == "rerank"
        assert c.get("/health").json()["teacher"] is None
        assert c.post("/search", json={"text": "a red square", "k": 3}).json()["batch_size"] == 1


def test_image_queries_against_a_text_index(gallery, models):
    with TestClient(build_app(engine_for(gallery, models, "text_index"), window_ms=0, max_batch=4)) as c:
        r = c.post("/search", json={"image": png_base64(gallery, 2), "k": 3, "rerank": 3})
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        expected = search_index(load_index(gallery["text_index"]), models[0],
                                [f"{gallery['image_dir']}/scene_2.png"], "image", k=3, teacher=models[1],
                                rerank_depth=3)[0]
        assert [h["id"] for h in hits] == [h["id"] for h in expected]
        r = c.post("/search", json={"image": "data:image/png;base64," + png_base64(gallery, 1), "k": 2})
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        r = c.post("/search", json={"text": "a red square", "k": 3})
        assert r.status_code == 400 and r.json()["field"] == "text"
        doc = c.get("/items/0").json()
        assert doc["caption"] == gallery["captions"][0]


def test_internal_failure_is_a_500_with_an_id_and_the_service_goes_on(gallery, models, caplog):
    engine = engine_for(gallery, models, teacher=False)
    real = engine.search_batch
    calls = {"n": 0}

    def flaky(queries):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real(queries)

    engine.search_batch = flaky
    with caplog.at_level(logging.ERROR, logger="dcd_ext.serve"):
        with TestClient(build_app(engine, window_ms=0, max_batch=1)) as c:
            r = c.post("/search", json={"text": "a red square", "k": 3})
            assert r.status_code == 500
            error_id = r.json()["id"]
            assert error_id in r.json()["error"]
            assert c.post("/search", json={"text": "a red square", "k": 3}).status_code == 200
    assert any(error_id in rec.getMessage() for rec in caplog.records)
