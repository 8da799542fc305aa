"""Local tokenizer directories: loading them with clear errors, and writing tiny ones for tests/demos.

ViLT and BLIP use BERT's uncased WordPiece tokenizer (``vocab.txt``), METER RoBERTa's byte-level BPE
(``vocab.json`` + ``merges.txt``); either may instead come as a ``tokenizer.json``. The tiny CLIP and
SigLIP folders of the tests use :func:`clip_bpe_tokenizer` (CLIP's lower-cased byte-level BPE with
``</w>`` word ends) and :func:`gemma_char_tokenizer` (the Gemma BPE with byte fallback that SigLIP 2
folders ship as ``tokenizer.json``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "load_bert_tokenizer",
    "load_roberta_tokenizer",
    "write_wordpiece_vocab",
    "write_byte_bpe_vocab",
    "clip_bpe_tokenizer",
    "gemma_char_tokenizer",
]

_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} directory not found: {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"{what} must be a directory, got a file: {path}")
    return path


def _has_any(path: Path, file_sets: list[tuple[str, ...]]) -> bool:
    return any(all((path / name).is_file() for name in names) for names in file_sets)


def load_bert_tokenizer(path: str | Path, *, do_lower_case: bool = True):
    """BERT WordPiece tokenizer from a local directory (``tokenizer.json`` or ``vocab.txt``)."""
    path = _require_dir(path, "BERT tokenizer")
    if not _has_any(path, [("tokenizer.json",), ("vocab.txt",)]):
        raise FileNotFoundError(
            f"no BERT tokenizer files in {path}: expected tokenizer.json or vocab.txt"
        )
    from transformers import BertTokenizer

    kwargs = {} if (path / "tokenizer_config.json").is_file() else {"do_lower_case": do_lower_case}
    return BertTokenizer.from_pretrained(str(path), local_files_only=True, **kwargs)


def load_roberta_tokenizer(path: str | Path):
    """RoBERTa byte-level BPE tokenizer from a local directory."""
    path = _require_dir(path, "RoBERTa tokenizer")
    if not _has_any(path, [("tokenizer.json",), ("vocab.json", "merges.txt")]):
        raise FileNotFoundError(
            f"no RoBERTa tokenizer files in {path}: expected tokenizer.json or vocab.json + merges.txt"
        )
    from transformers import RobertaTokenizer

    return RobertaTokenizer.from_pretrained(str(path), local_files_only=True)


def _words(words: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for word in words:
        for part in str(word).lower().split():
            seen.setdefault(part, None)
    return list(seen)


def write_wordpiece_vocab(out_dir: str | Path, words: Iterable[str]) -> Path:
    """Write an uncased WordPiece ``vocab.txt``: specials, the given words, and single characters
    (with ``##`` continuations) so that any lower-case ASCII word still tokenises without [UNK]."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    vocab = list(dict.fromkeys(_BERT_SPECIALS + _words(words) + chars + ["##" + c for c in chars]))
    path = out_dir / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path


def tiny_wordpiece_folder(out_dir: str | Path, words: Iterable[str], image_size: int, patch_size: int):
    """(folder, BERT tokenizer) for a tiny random-init teacher: the folder created, a WordPiece vocabulary of
    ``words`` written into it, after checking that ``image_size`` is a whole number of patches."""
    if image_size % patch_size:
        raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_wordpiece_vocab(out_dir, words)
    return out_dir, load_bert_tokenizer(out_dir)


def write_byte_bpe_vocab(out_dir: str | Path, words: Iterable[str]) -> tuple[Path, Path]:
    """Write a RoBERTa-style byte-level BPE ``vocab.json`` + ``merges.txt`` learnt from the given words
    (specials first, ``<pad>`` = 1 as in RoBERTa); any other text still tokenises, byte by byte."""
    from tokenizers import ByteLevelBPETokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_words = _words(words)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [" ".join(vocab_words)] * 2,
        vocab_size=256 + len(_ROBERTA_SPECIALS) + 8 * max(1, len(vocab_words)),
        min_frequency=1,
        special_tokens=_ROBERTA_SPECIALS,
        show_progress=False,
    )
    bpe.save_model(str(out_dir))
    return out_dir / "vocab.json", out_dir / "merges.txt"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable symbol table (printable Latin-1 bytes map to themselves)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) \
        + list(range(ord("\xae"), ord("\xff") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _clip_bpe(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-style BPE tables: the 256 byte symbols alone and as word ends (``x</w>``), then one merge per
    step that spells each given word left to right, so that every word is one token."""
    byte_symbol = _bytes_to_unicode()
    symbols = list(byte_symbol.values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    merges: list[tuple[str, str]] = []
    for word in _words(words):
        parts = [byte_symbol[b] for b in word.encode("utf-8")]
        parts[-1] += "</w>"
        while len(parts) > 1:
            merge = (parts[0], parts[1])
            if merge not in merges:
                merges.append(merge)
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    return vocab, merges


def clip_bpe_tokenizer(words: Iterable[str]):
    """A ``transformers.CLIPTokenizer`` over a tiny BPE vocabulary: every given word is one token, any
    other text falls back to byte symbols (no unknown tokens). ``save_pretrained`` writes what CLIP
    folders ship (``vocab.json``, ``merges.txt``, ``tokenizer.json``, ``tokenizer_config.json``)."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_bpe(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def gemma_char_tokenizer(extra_chars: str = "", model_max_length: int = 64):
    """A ``transformers.GemmaTokenizer`` (the tokenizer of SigLIP 2 folders) whose vocabulary is the
    specials, the 256 byte-fallback tokens and single characters: every character is one token, padding
    on the right (as SigLIP needs: it pools the last position)."""
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    chars = [chr(c) for c in range(33, 127)] + ["\u2581"] + list(extra_chars)
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + [f"<0x{b:02X}>" for b in range(256)] + chars))}
    return GemmaTokenizer(vocab=vocab, merges=[], padding_side="right", model_max_length=model_max_length)
