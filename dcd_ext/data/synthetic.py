"""The built-in synthetic demo set: rendered scenes of coloured shapes with compositional captions.

Scenes come in families whose members differ in one compositional detail, so every split holds its own
hard negatives: a pair scene ("a red circle left of a blue square") comes with its colour swap ("a blue
circle left of a red square") and its relation swap ("a red circle right of a blue square"); a count
scene ("two green triangles") with another count; a single object ("a small red circle") with the other
size. Word overlap between a caption and its hard negatives is total or nearly so, which is what a bag of
words cannot separate and a cross-encoder can. Everything is generated from the seed alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .retrieval_set import RetrievalSet

COLOURS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 85, 225), "yellow": (235, 205, 30),
           "purple": (145, 55, 190), "orange": (245, 135, 25)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.17, "large": 0.34}  # object extent as a fraction of the canvas
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
FAMILY_KINDS = (("pair", 0.5), ("count", 0.25), ("single", 0.25))


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    size: float  # extent in canvas fractions
    x: float  # centre, canvas fractions
    y: float


def vocabulary() -> list[str]:
    """Every word a synthetic caption can use."""
    words = {"a", "there", "is", "are", "of", *COLOURS, *SHAPES, *(s + "s" for s in SHAPES), *SIZES,
             *COUNT_WORDS.values()}
    for rel in INVERSE:
        words.update(rel.split())
    return sorted(words)


def draw_thing(draw: ImageDraw.ImageDraw, t: Thing, canvas: int) -> None:
    half = t.size * canvas / 2
    cx, cy = t.x * canvas, t.y * canvas
    box = (cx - half, cy - half, cx + half, cy + half)
    fill = COLOURS[t.colour]
    if t.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif t.shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)


def render(things: list[Thing], canvas: int, background: int) -> Image.Image:
    image = Image.new("RGB", (canvas, canvas), (background,) * 3)
    draw = ImageDraw.Draw(image)
    for t in things:
        draw_thing(draw, t, canvas)
    return image


def pair_layout(rng: random.Random, relation: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """Centres of the subject and the object of ``relation``."""
    near, far = rng.uniform(0.22, 0.34), rng.uniform(0.66, 0.78)
    across1, across2 = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
    if relation == "left of":
        return (near, across1), (far, across2)
    if relation == "right of":
        return (far, across1), (near, across2)
    if relation == "above":
        return (across1, near), (across2, far)
    return (across1, far), (across2, near)


def pair_scene(rng, c1, s1, c2, s2, relation):
    (x1, y1), (x2, y2) = pair_layout(rng, relation)
    size1, size2 = rng.uniform(0.22, 0.3), rng.uniform(0.22, 0.3)
    things = [Thing(s1, c1, size1, x1, y1), Thing(s2, c2, size2, x2, y2)]
    captions = [f"a {c1} {s1} {relation} a {c2} {s2}", f"a {c2} {s2} {INVERSE[relation]} a {c1} {s1}"]
    return things, captions


def count_scene(rng, colour, shape, count):
    cells = rng.sample([(cx, cy) for cx in range(3) for cy in range(3)], count)
    size = rng.uniform(0.17, 0.22)
    things = [Thing(shape, colour, size, (cx + 0.5 + rng.uniform(-0.12, 0.12)) / 3,
                    (cy + 0.5 + rng.uniform(-0.12, 0.12)) / 3) for cx, cy in cells]
    noun = shape if count == 1 else shape + "s"
    verb = "is" if count == 1 else "are"
    word = COUNT_WORDS[count]
    return things, [f"{word} {colour} {noun}", f"there {verb} {word} {colour} {noun}"]


def single_scene(rng, colour, shape, size_word):
    size = SIZES[size_word] * rng.uniform(0.9, 1.1)
    x, y = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
    return [Thing(shape, colour, size, x, y)], [f"a {size_word} {colour} {shape}",
                                                 f"there is a {size_word} {colour} {shape}"]


def family(rng: random.Random) -> list[tuple[list[Thing], list[str]]]:
    """One scene and its hard-negative variants."""
    kind = rng.choices([k for k, _ in FAMILY_KINDS], weights=[w for _, w in FAMILY_KINDS])[0]
    colours = list(COLOURS)
    if kind == "pair":
        c1, c2 = rng.sample(colours, 2)
        s1, s2 = rng.choice(SHAPES), rng.choice(SHAPES)
        relation = rng.choice(list(INVERSE))
        return [pair_scene(rng, c1, s1, c2, s2, relation),
                pair_scene(rng, c2, s1, c1, s2, relation),
                pair_scene(rng, c1, s1, c2, s2, INVERSE[relation])]
    colour, shape = rng.choice(colours), rng.choice(SHAPES)
    if kind == "count":
        n1, n2 = rng.sample(sorted(COUNT_WORDS), 2)
        return [count_scene(rng, colour, shape, n1), count_scene(rng, colour, shape, n2)]
    return [single_scene(rng, colour, shape, "small"), single_scene(rng, colour, shape, "large")]


def make_synthetic_split(split: str, num_images: int, seed: int = 0, image_size: int = 32) -> RetrievalSet:
    """``num_images`` rendered scenes with two captions each; the same (split, seed) gives the same set."""
    if num_images < 2:
        raise ValueError(f"num_images must be at least 2; got {num_images}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels; got {image_size}")
    rng = random.Random(f"dcd-synthetic:{seed}:{split}")
    images, captions, caption_image = [], [], []
    while len(images) < num_images:
        for things, texts in family(rng):
            if len(images) == num_images:
                break
            background = rng.randint(200, 250)
            captions.extend(texts)
            caption_image.extend([len(images)] * len(texts))
            images.append(render(things, image_size, background))
    names = [f"{split}_{i:05d}" for i in range(num_images)]
    return RetrievalSet(f"synthetic:{split}", images, captions, caption_image, names)
