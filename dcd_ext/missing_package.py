"""The error for an optional package a folder or flag needs and this environment lacks (sentencepiece for a
SigLIP 1 tokenizer, open_clip for an open_clip student): an ImportError whose one-line message says what
needs it and how to install it. The commands print it as ``error: ...`` with exit status 2, like any user
error (:data:`dcd_ext.cli.USER_ERRORS`)."""

from __future__ import annotations


class MissingPackageError(ImportError):
    pass


def first_line(error: BaseException) -> str:
    """The first non-blank line of an error's message (transformers' are several lines long)."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
