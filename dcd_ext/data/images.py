"""The one way the package opens an image file: RGB, fully decoded, errors naming the file."""

from __future__ import annotations

from PIL import Image


def open_image(path: str, what: str = "image") -> Image.Image:
    """The image at ``path`` as RGB. FileNotFoundError / OSError name ``path`` (and ``what`` it was for)."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: image file not found: {path}") from None
    except OSError as e:  # PIL's errors (truncated or unknown format) do not say which file
        raise OSError(f"{what}: cannot read image file {path}: {e}") from None
