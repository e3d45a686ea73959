"""The augmented-language format shared by the span tasks: words, rendering, parsing, alignment.

A text is cut into words (runs of letters/digits; every other visible character, and every CJK
ideograph, is a word of its own) so that the words survive a round trip through a WordPiece
tokenizer, which lowercases, strips accents, drops unknown characters and moves spaces around
punctuation. Matching is done on *keys*: each word normalised (NFKD, combining marks dropped,
casefolded) and cut again, so that both sides of a comparison go through the same pipeline.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from functools import lru_cache

OPEN, CLOSE, SEP, EQ = "[", "]", "|", "="
MARKERS = OPEN + CLOSE + SEP + EQ
# Marker characters inside the user's text would be read back as structure; they are written
# as look-alike punctuation instead, and compared under the same substitution.
ESCAPES = {OPEN: "(", CLOSE: ")", SEP: "/", EQ: ":"}
_ESCAPE_TABLE = str.maketrans(ESCAPES)
_MARKER_SPLIT = re.compile(r"([\[\]|=])")


@dataclass(frozen=True)
class Word:
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Tokens:
    """A text's words plus its key sequence; ``key_word[k]`` is the word that key ``k`` came from."""

    words: tuple[Word, ...]
    keys: tuple[str, ...]
    key_word: tuple[int, ...]


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _kind(ch: str) -> str:
    """'s' space, 'j' joins the previous character (marks, format chars), 'w' word char, 'p' alone."""
    if ch.isspace():
        return "s"
    cat = unicodedata.category(ch)
    if cat[0] == "M" or cat == "Cf":
        return "j"
    if cat[0] in "LN" and not _is_cjk(ord(ch)):
        return "w"
    return "p"


def split_words(text: str) -> list[Word]:
    """Words of ``text`` with their character offsets (end exclusive)."""
    words: list[Word] = []
    start = -1
    prev = "s"
    for i, ch in enumerate(text):
        kind = _kind(ch)
        if kind == "j" and prev != "s":
            continue
        if start >= 0 and (kind != "w" or prev != "w"):
            words.append(Word(start, i, text[start:i]))
            start = -1
        if kind != "s" and start < 0:
            start = i
        prev = kind if kind != "j" else "p"
    if start >= 0:
        words.append(Word(start, len(text), text[start:]))
    return words


def render(word: str) -> str:
    """A word as written in a source or target string: marker characters escaped."""
    return word.translate(_ESCAPE_TABLE)


@lru_cache(maxsize=65536)
def normalise(word: str) -> str:
    """The comparison form of a word: escaped, NFKD, marks and control/format chars dropped, casefolded."""
    decomposed = unicodedata.normalize("NFKD", render(word))
    kept = "".join(c for c in decomposed if unicodedata.category(c) not in ("Mn", "Me", "Mc", "Cf", "Cc"))
    return render(kept.casefold())


def analyse(text: str) -> Tokens:
    words = split_words(text)
    keys: list[str] = []
    key_word: list[int] = []
    for index, word in enumerate(words):
        for part in split_words(normalise(word.text)):
            keys.append(part.text)
            key_word.append(index)
    return Tokens(tuple(words), tuple(keys), tuple(key_word))


def keys_of(text: str) -> tuple[str, ...]:
    return analyse(text).keys


def key_string(text: str) -> str:
    """A whitespace-, case- and accent-insensitive form for comparing short strings (labels, values)."""
    return " ".join(keys_of(text))


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class Group:
    """A bracket group to write: words ``first..last-1`` then `` | segment`` for each segment."""

    first: int
    last: int
    segments: tuple[str, ...]


def word_range(words: tuple[Word, ...] | list[Word], start: int, end: int) -> tuple[int, int] | None:
    """Indices ``[i, j)`` of the words that overlap characters ``[start, end)``; None if none do."""
    hit = [i for i, w in enumerate(words) if w.start < end and w.end > start]
    return (hit[0], hit[-1] + 1) if hit else None


def write(words: tuple[Word, ...] | list[Word], groups: list[Group]) -> str:
    """Words joined by single spaces with the groups bracketed (outer groups open first)."""
    out: list[str] = []
    for i, word in enumerate(words):
        opening = sorted((g for g in groups if g.first == i), key=lambda g: -g.last)
        out.extend(OPEN for _ in opening)
        out.append(render(word.text))
        for group in sorted((g for g in groups if g.last == i + 1), key=lambda g: -g.first):
            out.extend(f"{SEP} {segment}" for segment in group.segments)
            out.append(CLOSE)
    return " ".join(out)


def surface(words: tuple[Word, ...] | list[Word], first: int, last: int) -> str:
    return " ".join(render(w.text) for w in words[first:last])


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass
class ParsedGroup:
    """A bracket group read from generated text.

    ``first..last`` index the sentence keys written inside the group before its first ``|``;
    ``segments`` are the raw texts of the later ``|`` segments; ``out_start..out_end`` is the
    group's character range in the generated string.
    """

    out_start: int
    first: int
    last: int = -1
    segments: list[str] = field(default_factory=list)
    out_end: int = -1


@dataclass
class Parsed:
    keys: list[str]
    groups: list[ParsedGroup]


def parse(generated: str) -> Parsed:
    """Read words and bracket groups, tolerating any sequence of markers."""
    keys: list[str] = []
    groups: list[ParsedGroup] = []
    stack: list[ParsedGroup] = []
    pos = 0
    for piece in _MARKER_SPLIT.split(generated):
        if piece == OPEN:
            group = ParsedGroup(out_start=pos, first=len(keys))
            stack.append(group)
            groups.append(group)
        elif piece == CLOSE and stack:
            group = stack.pop()
            _close_segment_zero(group, len(keys))
            group.out_end = pos + 1
        elif piece == SEP and stack:
            _close_segment_zero(stack[-1], len(keys))
            stack[-1].segments.append("")
        elif stack and stack[-1].segments:
            stack[-1].segments[-1] += piece
        elif piece not in MARKERS:
            keys.extend(keys_of(piece))
        pos += len(piece)
    for group in stack:
        _close_segment_zero(group, len(keys))
        group.out_end = len(generated)
    return Parsed(keys, groups)


def _close_segment_zero(group: ParsedGroup, n_keys: int) -> None:
    if group.last < 0:
        group.last = n_keys


@lru_cache(maxsize=65536)
def _similar(a: str, b: str) -> bool:
    """Whether a substituted word is a near-copy (a typo or inflection) rather than a different word."""
    if abs(len(a) - len(b)) > max(len(a), len(b)) // 2:
        return False
    return SequenceMatcher(None, a, b).ratio() >= 0.75


# Costs in half units: a near-copy substitution costs half an edit, so that among alignments
# with the same number of edits the one that keeps near-copies together wins.
_EXACT, _NEAR, _EDIT = 0, 1, 2


def _sub_cost(a: str, b: str) -> int:
    if a == b:
        return _EXACT
    return _NEAR if _similar(a, b) else _EDIT


def align(generated: list[str] | tuple[str, ...], source: tuple[str, ...]) -> list[int | None]:
    """For each generated key, the index of the source key it aligns to (or None).

    Word-level Levenshtein alignment (substitution, insertion, deletion all cost 1; a near-copy
    substitution 1/2). Only exact and near-copy pairs count as aligned. A common prefix and
    suffix are matched first, which is optimal for these costs and keeps the quadratic part
    small when the model copied its input faithfully.
    """
    n, m = len(generated), len(source)
    result: list[int | None] = [None] * n
    lo = 0
    while lo < n and lo < m and generated[lo] == source[lo]:
        result[lo] = lo
        lo += 1
    hi = 0
    while hi < n - lo and hi < m - lo and generated[n - 1 - hi] == source[m - 1 - hi]:
        result[n - 1 - hi] = m - 1 - hi
        hi += 1
    middle = _align_dp(generated[lo : n - hi], source[lo : m - hi])
    for i, j in enumerate(middle):
        result[lo + i] = None if j is None else lo + j
    return result


def _align_dp(a: list[str] | tuple[str, ...], b: list[str] | tuple[str, ...]) -> list[int | None]:
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return [None] * n
    cost = [[_EDIT * j for j in range(m + 1)]]
    for i in range(1, n + 1):
        row = [_EDIT * i] + [0] * m
        prev = cost[i - 1]
        ai = a[i - 1]
        for j in range(1, m + 1):
            row[j] = min(prev[j - 1] + _sub_cost(ai, b[j - 1]), prev[j] + _EDIT, row[j - 1] + _EDIT)
        cost.append(row)
    result: list[int | None] = [None] * n
    i, j = n, m
    while i > 0 and j > 0:
        sub = _sub_cost(a[i - 1], b[j - 1])
        if cost[i][j] == cost[i - 1][j - 1] + sub:
            if sub != _EDIT:
                result[i - 1] = j - 1
            i, j = i - 1, j - 1
        elif cost[i][j] == cost[i - 1][j] + _EDIT:
            i -= 1
        else:
            j -= 1
    return result


@dataclass(frozen=True)
class Span:
    """A group mapped back onto the input: character offsets plus the source word range."""

    start: int
    end: int
    first_word: int
    last_word: int


def locate(groups: list[ParsedGroup], parsed_keys: list[str], source: Tokens) -> list[Span | None]:
    """Each group's span in the source text, or None where none of its words aligned."""
    mapping = align(parsed_keys, source.keys)
    spans: list[Span | None] = []
    for group in groups:
        hits = [mapping[k] for k in range(group.first, group.last) if mapping[k] is not None]
        if not hits:
            spans.append(None)
            continue
        first = source.key_word[min(h for h in hits if h is not None)]
        last = source.key_word[max(h for h in hits if h is not None)]
        spans.append(Span(source.words[first].start, source.words[last].end, first, last + 1))
    return spans
