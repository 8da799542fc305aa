"""The web page in a real headless browser (Debian's chromium): after a query, the results are in the DOM.

``make test`` installs chromium where it can (as root, with apt); elsewhere this test skips and says why."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
from service_fixtures import make_gallery, running_server  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def headless_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless browser: install Debian's chromium package (make test does, as root with apt)")


def test_the_page_shows_the_results_of_a_query(tmp_path):
    browser = headless_browser()
    gallery = make_gallery(tmp_path)
    profile = tmp_path / "profile"
    with running_server(["--index", gallery["image_index"], "--teacher", gallery["teacher"]]) as (_, url, _):
        query = gallery["captions"][0]
        page = f"{url}/?q={query.replace(' ', '+')}&k=5&rerank=1"
        done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=15000",
                               "--dump-dom", page], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "HOME": str(tmp_path)})
    dom = done.stdout
    assert done.returncode == 0 and "<html" in dom, done.stderr[-2000:]
    cards = re.findall(r'<div class="hit" data-id="(\d+)">', dom)
    assert len(cards) == 5, dom[-3000:]
    assert re.search(r'<img src="/items/\d+" alt="scene_\d\.png">', dom)
    assert "5 results, re-ranked by the teacher" in dom
    assert re.search(r"embed [\d.]+ ms · top-k [\d.]+ ms · re-rank [\d.]+ ms", dom)
    assert dom.count("teacher ") >= 5  # every card shows its teacher score
    print("browser DOM:", re.sub(r"\s+", " ", dom[dom.find('<div id="status"'):])[:1500])
