"""A bounded load test of ``python -m dcd_ext.serve`` on loopback: a gallery of random unit embeddings with
a demo-shaped student, the real server in a subprocess, and a fixed number of concurrent clients each sending
a fixed number of requests (then it stops)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

EMBED_DIM = 128  # the demo student's width (dcd_ext.train.demo_presets)
QUERIES = ["a red square left of a blue circle", "a small green triangle above a yellow square",
           "two blue circles", "a large purple square right of a red triangle", "a yellow circle below a green square"]


def demo_student(folder: Path) -> str:
    from dcd_ext.data import vocabulary
    from dcd_ext.students import build_small_student, save_student
    from dcd_ext.train.demo_presets import PRESETS

    preset = PRESETS["default"]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        student = build_small_student(captions=vocabulary(), width=preset.student_width, embed_dim=preset.embed_dim,
                                      image_size=preset.image_size, image_channels=list(preset.student_channels),
                                      text_layers=preset.student_layers)
    save_student(student, str(folder))
    return str(folder)


def random_index(folder: Path, student_dir: str, gallery: int, images: int = 16) -> str:
    """An index of ``gallery`` random unit rows; its items' files cycle through ``images`` scene images (so
    the teacher has pictures to re-rank)."""
    from dcd_ext.data import make_synthetic_split
    from dcd_ext.serving.index_file import GalleryIndex, save_index
    from dcd_ext.students import load_student, student_fingerprint

    scenes = make_synthetic_split("load", images, seed=5, image_size=32)
    paths = []
    for i, image in enumerate(scenes.images):
        paths.append(str(folder / f"scene_{i}.png"))
        image.save(paths[-1])
    g = torch.Generator().manual_seed(gallery)
    rows = torch.nn.functional.normalize(torch.randn(gallery, EMBED_DIM, generator=g), dim=1)
    index = GalleryIndex(rows, torch.arange(gallery), "image", student_dir, [f"item_{i}" for i in range(gallery)],
                         [paths[i % images] for i in range(gallery)],
                         student_fingerprint(load_student(student_dir)))
    out = str(folder / f"gallery_{gallery}.idx")
    save_index(index, out)
    return out


class Server:
    """``python -m dcd_ext.serve`` on a free 127.0.0.1 port; :meth:`stop` sends SIGTERM (SIGKILL after 30 s)."""

    def __init__(self, args: list[str], start_timeout: float = 300.0):
        command = [sys.executable, "-m", "dcd_ext.serve", *args, "--host", "127.0.0.1", "--port", "0",
                   "--device", "cpu"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + start_timeout
        self.port = None
        while self.port is None:
            line = self.process.stdout.readline()
            if not line or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start: {line}")
            found = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
            self.port = int(found.group(1)) if found else None
        threading.Thread(target=self.process.stdout.read, daemon=True).start()  # keep the pipe drained
        for _ in range(400):
            try:
                if request(self.port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)

    def rss_mib(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024.0

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def request(port: int, method: str, path: str, body=None, connection=None):
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    data = None if body is None else json.dumps(body)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    response = conn.getresponse()
    payload = response.read()
    if connection is None:
        conn.close()
    return response.status, payload


def load_round(port: int, clients: int, requests_per_client: int, k: int = 10, rerank: int = 0) -> dict:
    """Every client sends its requests one after another on one kept-alive connection; all start together."""
    latencies, errors = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine, bad = [], []
        barrier.wait()
        for r in range(requests_per_client):
            body = {"text": QUERIES[(n + r) % len(QUERIES)], "k": k, "rerank": rerank}
            start = time.perf_counter()
            try:
                status, payload = request(port, "POST", "/search", body, conn)
            except OSError as e:
                bad.append(str(e))
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                continue
            mine.append((time.perf_counter() - start) * 1000.0)
            if status != 200:
                bad.append(f"{status}: {payload[:200]!r}")
        conn.close()
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = torch.tensor(sorted(latencies), dtype=torch.float64) if latencies else torch.zeros(1, dtype=torch.float64)
    pct = lambda q: float(torch.quantile(ms, q))  # noqa: E731
    return {"requests": len(latencies), "errors": len(errors), "error_examples": errors[:3], "seconds": wall,
            "qps": len(latencies) / wall, "p50_ms": pct(0.5), "p95_ms": pct(0.95), "p99_ms": pct(0.99)}


def teacher_pairs_ms(teacher_dir: str, pairs: int = 10, repeats: int = 5) -> float:
    """The median time (ms) of the teacher scoring ``pairs`` (image, text) pairs of 32 px scenes."""
    from dcd_ext.data import make_synthetic_split
    from dcd_ext.teachers import load_teacher

    teacher = load_teacher("vilt", teacher_dir)
    scenes = make_synthetic_split("pairs", pairs, seed=7, image_size=32)
    images = list(scenes.images)
    pair_rows = torch.stack([torch.arange(pairs), torch.zeros(pairs, dtype=torch.long)], dim=1)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        teacher.score_pairs(images, [QUERIES[0]], pair_rows)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(torch.tensor(times[1:]).median())


def demo_teacher_dir() -> str:
    import dcd_ext

    return os.path.join(os.path.dirname(dcd_ext.__file__), "assets", "demo_teacher")
