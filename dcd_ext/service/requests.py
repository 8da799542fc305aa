"""Checking a ``POST /search`` body: each mistake is a :class:`RequestError` naming the field and the HTTP
status (400 a bad value, 413 too large, 415 not JSON)."""

from __future__ import annotations

import base64
import binascii
import io
import json

from PIL import Image, UnidentifiedImageError

from .engine import Query

MAX_TEXT_CHARS = 1000  # a caption, not a document: longer text is refused, not silently truncated
MAX_BODY_BYTES = 8 * 1024 * 1024  # a base64 image query fits
FIELDS = ("text", "image", "k", "rerank")


class RequestError(ValueError):
    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status

    def body(self) -> dict:
        return {"error": str(self), "field": self.field}


def parse_json(content_type: str, raw: bytes) -> dict:
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise RequestError("content-type", f"send application/json; got {content_type or 'none'!r}", 415)
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError("body", f"{len(raw)} bytes is more than the {MAX_BODY_BYTES} allowed", 413)
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError("body", f"not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise RequestError("body", f"must be a JSON object; got {type(doc).__name__}")
    unknown = sorted(set(doc) - set(FIELDS))
    if unknown:
        raise RequestError(unknown[0], f"unknown field (known: {', '.join(FIELDS)})")
    return doc


def whole_number(doc: dict, field: str, default: int) -> int:
    value = doc.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(field, f"must be an integer; got {json.dumps(value)[:40]}")
    return value


def decode_image(value) -> Image.Image:
    if not isinstance(value, str) or not value:
        raise RequestError("image", "must be a non-empty base64 string of a PNG or JPEG file")
    if value.startswith("data:") and "," in value:  # a data: URL as a browser's FileReader makes it
        value = value.split(",", 1)[1]
    try:
        data = base64.b64decode(value, validate=True)
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as e:
        raise RequestError("image", f"not a base64-encoded image ({e})") from None


def parse_query(doc: dict, query_modality: str, gallery_size: int, has_teacher: bool) -> Query:
    """The :class:`Query` a checked body asks for; ``query_modality`` is what the served index answers."""
    field = "text" if query_modality == "text" else "image"
    other = "image" if field == "text" else "text"
    if other in doc:
        raise RequestError(other, f"this service's index holds {'images' if field == 'text' else 'captions'}: "
                                  f"query it with {field!r}")
    if field not in doc:
        raise RequestError(field, "missing")
    if field == "text":
        item = doc["text"]
        if not isinstance(item, str) or not item.strip():
            raise RequestError("text", "must be a non-empty string")
        if len(item) > MAX_TEXT_CHARS:
            raise RequestError("text", f"{len(item)} characters is more than the {MAX_TEXT_CHARS} allowed", 413)
    else:
        item = decode_image(doc["image"])
    k = whole_number(doc, "k", min(10, gallery_size))  # the default fits a small gallery
    if not 1 <= k <= gallery_size:
        raise RequestError("k", f"must be between 1 and the gallery's {gallery_size} items; got {k}")
    depth = whole_number(doc, "rerank", 0)
    if depth < 0 or depth > gallery_size:
        raise RequestError("rerank", f"must be between 0 (none) and the gallery's {gallery_size} items; got {depth}")
    if depth and not has_teacher:
        raise RequestError("rerank", "this service has no teacher (start it with --teacher)")
    return Query(item, k, depth)
