"""A tiny gallery to serve: scene images, their captions, a small (untrained) student and both indexes; and a
``python -m dcd_ext.serve`` subprocess on a free loopback port that always stops."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import torch

NUM_IMAGES, ID_OFFSET = 8, 100
SHIPPED_TEACHER = os.path.join(os.path.dirname(__import__("dcd_ext").__file__), "assets", "demo_teacher")


def write_scenes(root, name: str):
    """NUM_IMAGES synthetic scenes saved as root/images/scene_I.png and one caption per image (the first of
    each) in root/captions.txt; returns the scenes, the image paths and the captions."""
    from dcd_ext.data import make_synthetic_split

    scenes = make_synthetic_split(name, NUM_IMAGES, seed=3, image_size=32)
    first = {}
    for j, i in enumerate(scenes.caption_image):
        first.setdefault(i, scenes.captions[j])
    captions = [first[i] for i in range(NUM_IMAGES)]
    image_dir = root / "images"
    image_dir.mkdir()
    paths = []
    for i, image in enumerate(scenes.images):
        paths.append(str(image_dir / f"scene_{i}.png"))
        image.save(paths[-1])
    (root / "captions.txt").write_text("\n".join(captions) + "\n")
    return scenes, paths, captions


def make_gallery(root) -> dict:
    from dcd_ext import index as index_cli
    from dcd_ext.data import vocabulary
    from dcd_ext.students import build_small_student, save_student

    _, _, captions = write_scenes(root, "service")
    image_dir = root / "images"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        student = build_small_student(captions=vocabulary(), image_size=32, width=32, embed_dim=16,
                                      image_channels=[8, 8, 16], text_layers=1, heads=2)
    save_student(student, str(root / "student"))
    image_index, text_index = str(root / "images.idx"), str(root / "captions.idx")
    index_cli.main(["--student", str(root / "student"), "--images", str(image_dir), "--out", image_index,
                    "--id-offset", str(ID_OFFSET), "--device", "cpu", "--no-progress"])
    index_cli.main(["--student", str(root / "student"), "--data", str(root / "captions.txt"), "--modality", "text",
                    "--out", text_index, "--device", "cpu", "--no-progress"])
    return {"root": root, "captions": captions, "image_dir": str(image_dir), "student_dir": str(root / "student"),
            "image_index": image_index, "text_index": text_index, "teacher": SHIPPED_TEACHER}


def http_json(url: str, body=None, timeout: float = 30.0):
    """(status, decoded JSON) of a GET (body None) or a JSON POST."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@contextlib.contextmanager
def running_server(args: list[str], start_timeout: float = 120.0, stop_timeout: float = 30.0):
    """Starts ``python -m dcd_ext.serve ARGS --host 127.0.0.1 --port 0`` and yields (process, base URL, log
    lines so far); SIGTERM at the end, SIGKILL if it has not stopped within ``stop_timeout``."""
    command = [sys.executable, "-m", "dcd_ext.serve", *args, "--host", "127.0.0.1", "--port", "0", "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=os.path.dirname(os.path.abspath(__file__)))
    lines = []
    try:
        deadline = time.monotonic() + start_timeout
        url = None
        while url is None:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"the server exited ({process.wait(5)}) before serving:\n" + "".join(lines))
            lines.append(line)
            found = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            url = found.group(1) if found else None
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start in time:\n" + "".join(lines))
        for _ in range(200):  # uvicorn takes the socket a moment after the line is printed
            try:
                if http_json(url + "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        yield process, url, lines
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        lines.extend(process.stdout.read().splitlines(keepends=True))
        process.stdout.close()
