"""Validation helpers shared by the tasks: problem collection, text, offsets, labels, BIO tags."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from ..errors import Problem
from .augmented import split_words
from .base import MAX_PROBLEMS, MAX_WARNINGS, ValidationResult


class Collector:
    """Gathers problems and warnings up to their caps, counting what was left out."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.extra_problems = 0
        self.extra_warnings = 0

    def add(self, loc: str, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(loc, message))
        else:
            self.extra_problems += 1

    def warn(self, message: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)
        else:
            self.extra_warnings += 1

    def count(self) -> int:
        return len(self.problems) + self.extra_problems

    def final_warnings(self) -> list[str]:
        out = list(self.warnings)
        if self.extra_problems:
            out.append(f"{self.extra_problems} more problems were found but not listed")
        if self.extra_warnings:
            out.append(f"{self.extra_warnings} more warnings were not listed")
        return out


def is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def check_object(c: Collector, value: Any, loc: str, what: str = "example") -> Mapping[str, Any] | None:
    if isinstance(value, Mapping):
        return value
    c.add(loc, f"{what} must be an object, got {type(value).__name__}")
    return None


def check_text(c: Collector, ex: Mapping[str, Any], loc: str, key: str = "text") -> str | None:
    text = ex.get(key)
    if text is None:
        c.add(f"{loc}/{key}", f"missing {key!r}")
    elif not isinstance(text, str):
        c.add(f"{loc}/{key}", f"{key} must be a string, got {type(text).__name__}")
    elif not text.strip():
        c.add(f"{loc}/{key}", f"{key} is empty")
    else:
        return text
    return None


def check_list(c: Collector, ex: Mapping[str, Any], key: str, loc: str) -> list[Any]:
    """A list field that may be absent (meaning empty)."""
    value = ex.get(key, [])
    if isinstance(value, list):
        return value
    c.add(f"{loc}/{key}", f"{key} must be a list")
    return []


def check_span(c: Collector, value: Any, loc: str, text: str, what: str) -> tuple[int, int] | None:
    """Offsets of a span object, trimmed of surrounding whitespace; None (with problems) if unusable."""
    obj = check_object(c, value, loc, what)
    if obj is None:
        return None
    ok = True
    for key in ("start", "end"):
        if key not in obj:
            c.add(f"{loc}/{key}", f"missing {key!r}")
            ok = False
        elif not is_int(obj[key]):
            c.add(f"{loc}/{key}", f"{key} must be an integer, got {obj[key]!r}")
            ok = False
    if not ok:
        return None
    start, end = int(obj["start"]), int(obj["end"])
    if start < 0:
        c.add(f"{loc}/start", f"start {start} is negative")
        return None
    if end > len(text):
        c.add(f"{loc}/end", f"end {end} is past the end of the text ({len(text)} chars)")
        return None
    if start >= end:
        c.add(f"{loc}/end", f"end {end} must be greater than start {start}")
        return None
    return _trim(c, text, start, end, loc, what)


def _trim(c: Collector, text: str, start: int, end: int, loc: str, what: str) -> tuple[int, int] | None:
    stripped = text[start:end].strip()
    if not stripped:
        c.add(loc, f"{what} [{start}, {end}) covers only whitespace")
        return None
    new_start = start + text[start:end].index(stripped)
    new_end = new_start + len(stripped)
    if (new_start, new_end) != (start, end):
        c.warn(f"{loc}: {what} [{start}, {end}) trimmed to [{new_start}, {new_end}) to drop whitespace")
    if _cuts_word(text, new_start, new_end):
        c.warn(f"{loc}: {what} {stripped!r} starts or ends inside a word; predictions are whole words")
    return new_start, new_end


def _cuts_word(text: str, start: int, end: int) -> bool:
    for word in split_words(text[max(0, start - 40) : end + 40]):
        offset = max(0, start - 40)
        ws, we = word.start + offset, word.end + offset
        if ws < start < we or ws < end < we:
            return True
    return False


def check_label(
    c: Collector, value: Any, allowed: Sequence[str], loc: str, what: str = "label"
) -> str | None:
    if not isinstance(value, str):
        c.add(loc, f"{what} must be a string, got {value!r}")
    elif value not in allowed:
        c.add(loc, f"{what} {value!r} is not one of the task's {what}s: {', '.join(allowed)}")
    else:
        return value
    return None


def check_no_overlap(
    c: Collector, spans: list[tuple[int, int, str] | None], loc: str, key: str, what: str
) -> None:
    """Duplicates and overlaps between the spans of one example (None entries are skipped)."""
    seen: dict[tuple[int, int, str], int] = {}
    for i, span in enumerate(spans):
        if span is None:
            continue
        if span in seen:
            c.add(f"{loc}/{key}/{i}", f"duplicate of {what} {seen[span]}")
            continue
        for j, other in enumerate(spans[:i]):
            if other is not None and other[0] < span[1] and span[0] < other[1]:
                c.add(
                    f"{loc}/{key}/{i}",
                    f"{what} [{span[0]}, {span[1]}) overlaps {what} {j} [{other[0]}, {other[1]})",
                )
                break
        seen[span] = i


@dataclass(frozen=True)
class TaggedSpan:
    first: int
    last: int
    label: str


_BEGIN, _INSIDE, _LAST, _UNIT = "B", "I", "LE", "US"


def decode_tags(c: Collector, tags: Sequence[Any], allowed: Sequence[str], loc: str) -> list[TaggedSpan]:
    """Spans of a BIO / IOB2 / BILOU / BIOES tag sequence; broken sequences are read leniently."""
    spans: list[TaggedSpan] = []
    open_span: tuple[int, str] | None = None

    def close(at: int) -> None:
        nonlocal open_span
        if open_span is not None:
            spans.append(TaggedSpan(open_span[0], at, open_span[1]))
            open_span = None

    for i, tag in enumerate(tags):
        parsed = _parse_tag(c, tag, allowed, f"{loc}/{i}")
        if parsed is None or parsed[0] == "O":
            close(i)
            continue
        prefix, label = parsed
        continues = open_span is not None and open_span[1] == label
        if prefix in _INSIDE + _LAST and not continues:
            c.warn(f"{loc}/{i}: tag {tag!r} does not continue an entity; read as its start")
        if prefix in _BEGIN + _UNIT or not continues:
            close(i)
            open_span = (i, label)
        if prefix in _LAST + _UNIT:
            close(i + 1)
    close(len(tags))
    return spans


def _parse_tag(c: Collector, tag: Any, allowed: Sequence[str], loc: str) -> tuple[str, str] | None:
    if not isinstance(tag, str):
        c.add(loc, f"tag must be a string, got {tag!r}")
        return None
    if tag == "O":
        return ("O", "")
    prefix, sep, label = tag.partition("-")
    if not sep or prefix not in ("B", "I", "L", "E", "U", "S") or not label:
        c.add(loc, f"tag {tag!r} is not O or B-/I-/L-/E-/U-/S- followed by a label")
        return None
    if label not in allowed:
        c.add(loc, f"label {label!r} is not one of the task's labels: {', '.join(allowed)}")
        return None
    return (prefix, label)


def tokens_to_text(c: Collector, ex: Mapping[str, Any], loc: str) -> tuple[str, list[tuple[int, int]]] | None:
    """Tokens joined by single spaces, with each token's character offsets."""
    tokens = ex.get("tokens")
    if not isinstance(tokens, list) or not tokens:
        c.add(f"{loc}/tokens", "tokens must be a non-empty list of strings")
        return None
    offsets: list[tuple[int, int]] = []
    pos = 0
    ok = True
    for i, token in enumerate(tokens):
        if not isinstance(token, str) or not token.strip():
            c.add(f"{loc}/tokens/{i}", f"token must be a non-empty string, got {token!r}")
            ok = False
            continue
        offsets.append((pos, pos + len(token)))
        pos += len(token) + 1
    if not ok:
        return None
    return " ".join(tokens), offsets


def tagged_entities(
    c: Collector, ex: Mapping[str, Any], allowed: Sequence[str], loc: str
) -> tuple[str, list[dict[str, Any]]] | None:
    """The text form ``(text, entities)`` of a ``{"tokens", "tags"}`` example."""
    joined = tokens_to_text(c, ex, loc)
    tags = ex.get("tags")
    if not isinstance(tags, list):
        c.add(f"{loc}/tags", "tags must be a list with one tag per token")
        return None
    if joined is None:
        return None
    text, offsets = joined
    if len(tags) != len(offsets):
        c.add(f"{loc}/tags", f"{len(tags)} tags for {len(offsets)} tokens")
        return None
    before = c.count()
    spans = decode_tags(c, tags, allowed, f"{loc}/tags")
    if c.count() != before:
        return None
    entities = [
        {"start": offsets[s.first][0], "end": offsets[s.last - 1][1], "label": s.label} for s in spans
    ]
    return text, entities


def run_validation(
    raw: Any,
    one: Callable[[Collector, Any, str], dict[str, Any] | None],
    labels_of: Callable[[dict[str, Any]], list[str]],
) -> ValidationResult:
    """Validate every example with ``one``; keep the normalised examples that had no problem."""
    c = Collector()
    examples: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        c.add("", "examples must be a list")
        raw = []
    for i, item in enumerate(raw):
        before = c.count()
        example = one(c, item, f"/{i}")
        if example is not None and c.count() == before:
            examples.append(example)
            counts.update(labels_of(example))
    return ValidationResult(examples, c.problems, dict(counts), c.final_warnings())


def entities_of(
    c: Collector, item: Any, loc: str, labels: Sequence[str]
) -> tuple[str, list[dict[str, Any] | None]] | None:
    """Text and entities (None where one is bad) of a ner-shaped example in text or token form."""
    ex = check_object(c, item, loc)
    if ex is None:
        return None
    if "tokens" in ex or "tags" in ex:
        if "text" in ex or "entities" in ex:
            c.add(loc, "give either text and entities, or tokens and tags, not both")
            return None
        tagged = tagged_entities(c, ex, labels, loc)
        return None if tagged is None else (tagged[0], list(tagged[1]))
    text = check_text(c, ex, loc)
    raw_entities = check_list(c, ex, "entities", loc)
    if text is None:
        return None
    entities: list[dict[str, Any] | None] = []
    for j, raw_entity in enumerate(raw_entities):
        eloc = f"{loc}/entities/{j}"
        span = check_span(c, raw_entity, eloc, text, "entity")
        label = check_label(c, raw_entity.get("label"), labels, f"{eloc}/label") if span else None
        entities.append(
            None if span is None or label is None else {"start": span[0], "end": span[1], "label": label}
        )
    check_no_overlap(
        c,
        [None if e is None else (e["start"], e["end"], e["label"]) for e in entities],
        loc,
        "entities",
        "entity",
    )
    return text, entities


def check_max_chars(c: Collector, text: str, loc: str, max_chars: int) -> None:
    if len(text) > max_chars:
        c.add(loc, f"text is {len(text)} chars; the limit is {max_chars}")


def structured_inputs_problems(
    raw: Sequence[Any],
    max_chars: int,
    parse: Callable[[Collector, Any, str], Any],
    text_of: Callable[[Any], tuple[str, str]],
) -> list[Problem]:
    """Extraction inputs in a task's own shape: ``parse`` checks one item (recording its
    problems) and returns it or None; ``text_of`` gives the text to length-check and the loc
    suffix to report it under."""
    c = Collector()
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        return [Problem("", "inputs must be a list")]
    for i, item in enumerate(raw):
        found = parse(c, item, f"/{i}")
        if found is not None:
            text, suffix = text_of(found)
            check_max_chars(c, text, f"/{i}{suffix}", max_chars)
    return c.problems
