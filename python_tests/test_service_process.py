"""``python -m dcd_ext.serve`` as a real server: a subprocess on a free loopback port, queried over HTTP, and
stopped by SIGTERM after it has answered what was in flight; its start-up checks as one-line errors."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
from service_fixtures import NUM_IMAGES, http_json, make_gallery, running_server  # noqa: E402


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    return make_gallery(tmp_path_factory.mktemp("service_process"))


def test_the_server_answers_over_http_and_drains_on_sigterm(gallery):
    with running_server(["--index", gallery["image_index"], "--teacher", gallery["teacher"]]) as (process, url, lines):
        status, health = http_json(url + "/health")
        assert status == 200 and health["index_size"] == NUM_IMAGES and health["teacher"] == gallery["teacher"]
        status, doc = http_json(url + "/search", {"text": gallery["captions"][0], "k": 4, "rerank": 4})
        assert status == 200 and len(doc["results"]) == 4
        assert all(h["teacher_score"] is not None for h in doc["results"])
        status, doc = http_json(url + "/search", {"text": "", "k": 4})
        assert status == 400 and doc["field"] == "text"
        # a request in flight when SIGTERM arrives is still answered
        answers = []
        slow = threading.Thread(target=lambda: answers.append(
            http_json(url + "/search", {"text": gallery["captions"][1], "k": 8, "rerank": 8})))
        slow.start()
        time.sleep(0.05)
        process.terminate()
        slow.join(60)
        assert process.wait(30) == 0
    assert answers and answers[0][0] == 200, answers
    log = "".join(lines)
    assert "serving 8 images (text queries) on http://127.0.0.1:" in log and "stopped" in log


def serve_error(args) -> str:
    done = subprocess.run([sys.executable, "-m", "dcd_ext.serve", *args, "--port", "0", "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_start_up_refuses_a_wrong_student_and_a_missing_index(gallery, tmp_path):
    from dcd_ext.data import vocabulary
    from dcd_ext.students import build_small_student, save_student

    other = build_small_student(captions=vocabulary(), image_size=32, width=32, embed_dim=16,
                                image_channels=[8, 8, 16], text_layers=1, heads=2)
    save_student(other, str(tmp_path / "other"))
    line = serve_error(["--index", gallery["image_index"], "--student", str(tmp_path / "other")])
    assert "is not the student that built the index" in line
    assert "no index file" in serve_error(["--index", str(tmp_path / "missing.idx")])


def test_connections_of_the_listening_socket_send_without_delay():
    """asyncio turns Nagle's algorithm off (TCP_NODELAY) only on connections of a socket whose proto is
    IPPROTO_TCP; with Nagle on, every response on a kept-alive connection waited ~40 ms for the client's
    delayed ACK (p50 52 ms instead of 8 ms at a 10k gallery)."""
    import asyncio
    import socket

    from dcd_ext.serve import listening_socket

    async def main() -> int:
        seen = asyncio.get_running_loop().create_future()

        async def handle(reader, writer):
            seen.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        sock = listening_socket("127.0.0.1", 0)
        server = await asyncio.start_server(handle, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
            value = await asyncio.wait_for(seen, 10)
            writer.close()
        return value

    assert asyncio.run(main()) != 0
