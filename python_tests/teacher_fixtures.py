"""Shared helpers for the teacher tests: synthetic shape scenes and random test images."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle", "triangle")
VOCAB_WORDS = list(COLORS) + list(SHAPES) + ["a", "left", "right", "of", "two", "one", "and", "above", "below"]


def _draw(draw: ImageDraw.ImageDraw, shape: str, color, box) -> None:
    x0, y0, x1, y1 = box
    if shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "circle":
        draw.ellipse(box, fill=color)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=color)


def shape_scene(first: tuple[str, str], second: tuple[str, str], size: int = 64,
                vertical: bool = False) -> Image.Image:
    """A grey image with (colour, shape) ``first`` left of (or above) ``second``."""
    image = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    pad, half, quarter = size // 10, size // 2, size // 4
    boxes = [(pad, quarter, half - pad, 3 * quarter), (half + pad, quarter, size - pad, 3 * quarter)]
    if vertical:
        boxes = [(y0, x0, y1, x1) for x0, y0, x1, y1 in boxes]
    _draw(draw, first[1], COLORS[first[0]], boxes[0])
    _draw(draw, second[1], COLORS[second[0]], boxes[1])
    return image


def shape_dataset(num_images: int, size: int = 64, seed: int = 0):
    """Distinct two-object scenes with one caption each, e.g. "a red square left of a blue circle"
    or "a green triangle above a red circle". Returns (images, captions, image_index)."""
    objects = [(c, s) for c in COLORS for s in SHAPES]
    scenes = [(a, b, v) for a in objects for b in objects if a != b for v in (False, True)]
    if num_images > len(scenes):
        raise ValueError(f"at most {len(scenes)} distinct scenes, asked for {num_images}")
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for k in rng.permutation(len(scenes))[:num_images]:
        (c1, s1), (c2, s2), vertical = scenes[k]
        images.append(shape_scene((c1, s1), (c2, s2), size, vertical))
        captions.append(f"a {c1} {s1} {'above' if vertical else 'left of'} a {c2} {s2}")
    return images, captions, list(range(num_images))


def random_images(sizes, seed: int = 0) -> list[Image.Image]:
    """Noise images of the given (height, width) sizes."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
