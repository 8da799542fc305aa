"""Student tokenizers: the small student's word-level one (lower-cased words, a [CLS] first, padded to a fixed
length) and :class:`HFTokenizer`, a Hugging Face tokenizer called the same way."""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

import torch
from torch import Tensor

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
TEXT_MAX_LENGTH = 40  # the teachers' text length (docs/design.md section 5.1)
WORD = re.compile(r"[a-z0-9]+")


def split_words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def build_vocab(captions: Iterable[str], max_size: int = 30000, min_count: int = 1) -> list[str]:
    """The special tokens, then words by descending frequency (ties alphabetical)."""
    counts = Counter(w for c in captions for w in split_words(c))
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return [PAD, UNK, CLS] + words[:max(0, max_size - 3)]


class WordTokenizer:
    def __init__(self, vocab: list[str], max_length: int = 32):
        if vocab[:3] != [PAD, UNK, CLS]:
            raise ValueError(f"vocab must start with {[PAD, UNK, CLS]}; got {vocab[:3]}")
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2; got {max_length}")
        self.vocab = list(vocab)
        self.max_length = max_length
        self.index = {w: i for i, w in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Token ids and attention mask, both [len(texts), L] with L the longest (capped) text."""
        unk, cls = self.index[UNK], self.index[CLS]
        rows = [[cls] + [self.index.get(w, unk) for w in split_words(t)][: self.max_length - 1] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.int64)
        mask = torch.zeros(len(rows), width, dtype=torch.int64)
        for n, r in enumerate(rows):
            ids[n, : len(r)] = torch.tensor(r)
            mask[n, : len(r)] = 1
        return ids, mask


class HFTokenizer:
    """A Hugging Face tokenizer called the way the students call theirs: texts in, (ids, mask) out.

    ``padding``: ``"longest"`` (the batch's longest text) or ``"max_length"`` (always ``max_length``)."""

    def __init__(self, tokenizer, max_length: int = TEXT_MAX_LENGTH, padding: str = "longest"):
        self.tokenizer, self.max_length, self.padding = tokenizer, max_length, padding

    def __call__(self, texts: list[str]):
        enc = self.tokenizer(list(texts), padding=self.padding, truncation=True, max_length=self.max_length,
                             return_attention_mask=True, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def save(self, out_dir: str) -> None:
        self.tokenizer.save_pretrained(out_dir)
