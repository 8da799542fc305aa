"""How well a tokenizer covers a set of captions: how many words (or sub-word tokens) it maps to its unknown
token, and how many captions it truncates. Commands warn once, with counts, when either is large, because a
student or teacher that sees ``[UNK]`` for a tenth of the words, or only the first 32 tokens of a long
caption, trains and retrieves worse without any error.

Only a caption's own tokens are counted, never the special tokens the tokenizer adds around them (CLIP's
unknown token is also its end-of-text token: counting it made every CLIP caption look partly unreadable). A
sub-word tokenizer that maps at least half of the tokens to its unknown token does not read these captions at
all (a model folder missing its tokenizer files): :func:`coverage_warnings` raises a ValueError instead of
warning. A word-level vocabulary (the small students') only warns: words it never saw in training are expected.

Works with the small students' :class:`~dcd_ext.students.WordTokenizer`, the students' Hugging Face wrapper
(``HFTokenizer``) and a teacher (its ``tokenizer`` and ``max_text_len``).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence

# warn when at least this share of the words (tokens) is unknown, or of the captions is truncated
WARN_UNKNOWN_SHARE = 0.01
WARN_TRUNCATED_SHARE = 0.01
# a sub-word tokenizer mapping at least this share of the tokens to its unknown token is an error
ERROR_UNKNOWN_SHARE = 0.5
SAMPLE = 50_000  # captions examined at most (a seeded sample of larger sets)


@dataclass
class Coverage:
    who: str  # "student tokenizer", "teacher tokenizer"
    unit: str  # "words" (word-level vocabulary) or "tokens" (sub-word tokenizers)
    unknown: int
    total: int
    texts_with_unknown: int
    truncated: int
    texts: int
    max_length: int
    unknown_token: str
    sampled_from: int = 0  # the number of captions the sample was drawn from (0: every caption was examined)
    examples: list[str] = field(default_factory=list)  # the most frequent unknown words

    @property
    def unknown_share(self) -> float:
        return self.unknown / max(1, self.total)

    @property
    def truncated_share(self) -> float:
        return self.truncated / max(1, self.texts)

    @property
    def unusable(self) -> bool:
        """A sub-word tokenizer that reads most tokens as unknown: the wrong or a broken tokenizer."""
        return self.unit == "tokens" and self.unknown_share >= ERROR_UNKNOWN_SHARE

    @property
    def worth_warning(self) -> bool:
        return self.unknown_share >= WARN_UNKNOWN_SHARE or self.truncated_share >= WARN_TRUNCATED_SHARE

    def message(self, what: str = "captions") -> str:
        scope = f"{self.texts:,} {what}" + (f" (a sample of {self.sampled_from:,})" if self.sampled_from else "")
        parts = [f"{self.who}: in {scope}, {self.unknown:,} of {self.total:,} {self.unit} "
                 f"({100 * self.unknown_share:.1f}%) map to the unknown token {self.unknown_token}"
                 + (f" (in {self.texts_with_unknown:,} of them" if self.unknown else "")
                 + (f"; e.g. {', '.join(repr(w) for w in self.examples)}" if self.examples else "")
                 + (")" if self.unknown else ""),
                 f"{self.truncated:,} {what} ({100 * self.truncated_share:.1f}%) are longer than its "
                 f"{self.max_length} tokens and are truncated"]
        return "; ".join(parts)


def _sample(texts: Sequence[str], limit: int, seed: int = 0) -> tuple[list[str], int]:
    if len(texts) <= limit:
        return list(texts), 0
    return random.Random(seed).sample(list(texts), limit), len(texts)


def word_coverage(tokenizer, texts: Sequence[str], who: str, limit: int = SAMPLE) -> Coverage:
    """A :class:`~dcd_ext.students.WordTokenizer`: words outside its vocabulary; more than max_length - 1
    words (the first slot is [CLS]) are truncated."""
    from .students.tokenizer import UNK, split_words

    texts, sampled_from = _sample(texts, limit)
    unknown_words: Counter = Counter()
    total = with_unknown = truncated = 0
    for text in texts:
        words = split_words(text)
        total += len(words)
        missing = [w for w in words if w not in tokenizer.index]
        unknown_words.update(missing)
        with_unknown += bool(missing)
        truncated += len(words) + 1 > tokenizer.max_length
    return Coverage(who, "words", sum(unknown_words.values()), total, with_unknown, truncated, len(texts),
                    tokenizer.max_length, UNK, sampled_from, [w for w, _ in unknown_words.most_common(5)])


def hf_coverage(tokenizer, max_length: int, texts: Sequence[str], who: str, limit: int = SAMPLE) -> Coverage:
    """A Hugging Face tokenizer: a caption's own tokens (not the special tokens the tokenizer adds) equal to
    its unknown token; captions whose tokens, with the special ones, exceed ``max_length``."""
    texts, sampled_from = _sample(texts, limit)
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    try:
        specials = tokenizer.num_special_tokens_to_add(pair=False)
    except (AttributeError, NotImplementedError):
        specials = 0
    unk = tokenizer.unk_token_id
    total = unknown = with_unknown = truncated = 0
    examples: Counter = Counter()
    looked = 0  # captions searched for example words (each word tokenized alone): a few suffice
    for text, ids in zip(texts, encoded):
        count = sum(1 for t in ids if t == unk) if unk is not None else 0
        total += len(ids)
        unknown += count
        with_unknown += count > 0
        truncated += len(ids) + specials > max_length
        if count and looked < 100:
            looked += 1
            examples.update(w for w in text.split() if unk in tokenizer(w, add_special_tokens=False)["input_ids"])
    return Coverage(who, "tokens", unknown, total, with_unknown, truncated, len(texts), max_length,
                    str(tokenizer.unk_token), sampled_from, [w for w, _ in examples.most_common(5)])


def student_coverage(student, texts: Sequence[str], limit: int = SAMPLE) -> Optional[Coverage]:
    """Coverage of a :class:`~dcd_ext.students.DualEncoder`'s tokenizer, or None for a tokenizer of another kind."""
    from .students.factory import HFTokenizer
    from .students.tokenizer import WordTokenizer

    tok = student.tokenizer
    if isinstance(tok, WordTokenizer):
        return word_coverage(tok, texts, "student tokenizer", limit)
    if isinstance(tok, HFTokenizer):
        return hf_coverage(tok.tokenizer, tok.max_length, texts, "student tokenizer", limit)
    return None


def teacher_coverage(teacher, texts: Sequence[str], limit: int = SAMPLE) -> Optional[Coverage]:
    """Coverage of a cross-encoder teacher's tokenizer (``tokenizer``, ``max_text_len``), or None."""
    tok, max_length = getattr(teacher, "tokenizer", None), getattr(teacher, "max_text_len", None)
    if tok is None or max_length is None or not callable(tok):
        return None
    return hf_coverage(tok, int(max_length), texts, "teacher tokenizer", limit)


def coverage_warnings(texts: Sequence[str], student=None, teacher=None, what: str = "captions") -> list[str]:
    """The warnings (at most one per tokenizer) for ``texts``: empty when both cover them well. A sub-word
    tokenizer that reads most of them as unknown tokens is a ValueError naming the model (see
    :data:`ERROR_UNKNOWN_SHARE`)."""
    out = []
    for cov in (student_coverage(student, texts) if student is not None else None,
                teacher_coverage(teacher, texts) if teacher is not None else None):
        if cov is not None and cov.unusable:
            raise ValueError(f"{cov.who.split()[0]}: its tokenizer does not read these {what}: "
                             f"{cov.message(what).split(': ', 1)[1]}. Is its tokenizer missing or not the model's "
                             "(a folder without tokenizer.json, or vocab.json + merges.txt, as the hub ships it)?")
        if cov is not None and cov.worth_warning:
            out.append(cov.message(what))
    return out
