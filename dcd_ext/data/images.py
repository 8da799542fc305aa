"""The one way the package opens an image file (RGB, fully decoded, errors naming the file), and the quick
check of many files before a long run reads them."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

from PIL import Image

# PIL reports a damaged file with many types besides OSError (SyntaxError for broken PNG chunks, ValueError,
# EOFError, struct.error, IndexError, DecompressionBombError): any of them means the file cannot be read
DECODE_ERRORS = (Exception,)


def open_image(path: str, what: str = "image") -> Image.Image:
    """The image at ``path`` as RGB, fully decoded. FileNotFoundError / OSError name ``path`` and ``what`` it
    was for (a split and the table line or Karpathy entry that names it, a query, a gallery item)."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: image file not found: {path}") from None
    except MemoryError:
        raise
    except DECODE_ERRORS as e:  # PIL's errors (truncated, unknown format) do not say which file
        raise OSError(f"{what}: cannot read image file {path}: {e or type(e).__name__}") from None


def image_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be read as an image, or None. Fast: the header and, for PNG, the chunk checksums
    (``verify``); a JPEG must end with its end-of-image marker. Files that look odd to those checks
    (e.g. a JPEG with trailing bytes) are decoded in full before they are called bad."""
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.verify()
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 64))
                tail = f.read().rstrip(b"\x00\r\n\t ")
            if not tail.endswith(b"\xff\xd9"):
                with Image.open(path) as im:
                    im.load()
        return None
    except FileNotFoundError:
        return "file not found"
    except MemoryError:
        raise
    except DECODE_ERRORS as e:
        return str(e) or type(e).__name__


def find_bad_images(paths: Sequence[str], progress: bool = False, desc: str = "checking images",
                    threads: int = 8) -> dict[int, str]:
    """{position: reason} of the files in ``paths`` that :func:`image_problem` rejects (a progress bar on
    stderr when ``progress``, for large sets)."""
    from tqdm.auto import tqdm

    bad: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths)))) as pool, \
            tqdm(total=len(paths), desc=desc, unit="image", disable=None if progress else True, leave=False) as bar:
        for i, problem in enumerate(pool.map(image_problem, paths, chunksize=64)):
            if problem is not None:
                bad[i] = problem
            bar.update(1)
    return bad
