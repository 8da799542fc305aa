"""The one in-memory shape every data source is read into: images, captions and who describes whom."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence, Union

from PIL import Image

from .images import open_image

ImageSource = Union[str, Image.Image]


class EmptySplitError(ValueError):
    """A data file holds no rows for the requested split (or cannot name splits at all)."""


@dataclass
class RetrievalSet:
    """Images and captions of one split.

    ``caption_image[j]`` is the index (into ``images``) of the image caption j describes. The image index is
    also the id that keeps captions of one image from being each other's negatives. ``images`` holds file
    paths (opened lazily) or PIL images (the synthetic set); ``image_names`` are labels for reports;
    ``image_origins`` say where each image was named (``pairs.csv line 7``, ``dataset_coco.json images[12]``),
    for error messages.
    """

    name: str
    images: list[ImageSource]
    captions: list[str]
    caption_image: list[int]
    image_names: list[str] = field(default_factory=list)
    image_origins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.caption_image):
            raise ValueError(f"{self.name}: {len(self.captions)} captions but {len(self.caption_image)} "
                             "caption_image entries")
        if not self.images or not self.captions:
            raise EmptySplitError(f"{self.name}: the split is empty ({len(self.images)} images, "
                             f"{len(self.captions)} captions)")
        n = len(self.images)
        bad = [i for i in self.caption_image if not 0 <= i < n]
        if bad:
            raise ValueError(f"{self.name}: caption_image holds {bad[0]}, outside [0, {n})")
        described = set(self.caption_image)
        if len(described) != n:
            missing = next(i for i in range(n) if i not in described)
            raise ValueError(f"{self.name}: image {missing} ({self._label(missing)}) has no caption")
        if not self.image_names:
            self.image_names = [self._label(i) for i in range(n)]
        if self.image_origins and len(self.image_origins) != n:
            raise ValueError(f"{self.name}: {len(self.image_origins)} image origins for {n} images")

    def _label(self, i: int) -> str:
        src = self.images[i]
        return os.path.basename(src) if isinstance(src, str) else f"image_{i}"

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    def describe(self, i: int) -> str:
        """Image i's split and, when known, the table line or Karpathy entry naming it (for messages)."""
        return f"{self.name}, {self.image_origins[i]}" if self.image_origins else self.name

    def load_image(self, i: int) -> Image.Image:
        src = self.images[i]
        return src if isinstance(src, Image.Image) else open_image(src, self.describe(i))

    def load_images(self, indices: Sequence[int]) -> list[Image.Image]:
        return [self.load_image(int(i)) for i in indices]

    def image_captions(self) -> list[list[int]]:
        """For every image, the indices of its captions."""
        out: list[list[int]] = [[] for _ in self.images]
        for j, i in enumerate(self.caption_image):
            out[i].append(j)
        return out

    def subset(self, image_indices: Sequence[int], name: str | None = None) -> "RetrievalSet":
        """The given images with all their captions, re-indexed from 0."""
        remap = {int(old): new for new, old in enumerate(image_indices)}
        captions, caption_image = [], []
        for j, i in enumerate(self.caption_image):
            if i in remap:
                captions.append(self.captions[j])
                caption_image.append(remap[i])
        return RetrievalSet(name or self.name, [self.images[int(i)] for i in image_indices], captions,
                            caption_image, [self.image_names[int(i)] for i in image_indices],
                            [self.image_origins[int(i)] for i in image_indices] if self.image_origins else [])


def check_image_files(split: RetrievalSet, limit: int = 5) -> None:
    """Raise FileNotFoundError naming the first missing image files of a path-based split (and where the
    data file names them)."""
    missing = [i for i, p in enumerate(split.images) if isinstance(p, str) and not os.path.isfile(p)]
    if missing:
        shown = ", ".join(split.images[i] + (f" ({split.image_origins[i]})" if split.image_origins else "")
                          for i in missing[:limit])
        more = f" (and {len(missing) - limit} more)" if len(missing) > limit else ""
        raise FileNotFoundError(f"{split.name}: {len(missing)} of {split.num_images} image files are "
                                f"missing: {shown}{more}")


def find_unreadable_images(split: RetrievalSet, progress: bool = False) -> list[tuple[int, str]]:
    """(image index, reason) for every file of a path-based split that cannot be read as an image (a fast
    header check, see :func:`dcd_ext.data.images.image_problem`); a progress bar on large sets."""
    from .images import find_bad_images

    files = [(i, p) for i, p in enumerate(split.images) if isinstance(p, str)]
    bad = find_bad_images([p for _, p in files], progress=progress and len(files) >= 1000,
                          desc=f"checking {split.name} images")
    return [(files[pos][0], reason) for pos, reason in sorted(bad.items())]


def describe_bad_images(split: RetrievalSet, bad: list[tuple[int, str]], limit: int = 5) -> str:
    shown = "; ".join(f"{split.images[i]} ({split.image_origins[i] if split.image_origins else 'image ' + str(i)}): "
                      f"{reason}" for i, reason in bad[:limit])
    more = f"; and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"{split.name}: {len(bad)} of {split.num_images} image files cannot be read: {shown}{more}"


def without_images(split: RetrievalSet, drop: set[int]) -> RetrievalSet:
    """The split without the images in ``drop`` and their captions."""
    keep = [i for i in range(split.num_images) if i not in drop]
    if not keep:
        raise EmptySplitError(f"{split.name}: no readable image is left")
    return split.subset(keep)
