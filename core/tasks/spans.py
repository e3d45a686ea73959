"""Labelled spans in augmented text: writing gold spans and reading predicted ones back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .augmented import EQ, Group, ParsedGroup, Span, Tokens, analyse, locate, parse, word_range, write
from .verbaliser import Verbaliser


@dataclass(frozen=True)
class ReadSpan:
    """A group that survived decoding: its place in the output, its span and its label."""

    group: ParsedGroup
    span: Span
    label: str


def read_spans(generated: str, source: Tokens, verbaliser: Verbaliser) -> tuple[list[ReadSpan], int]:
    """Groups of ``generated`` mapped onto ``source``, plus how many groups were dropped."""
    parsed = parse(generated)
    located = locate(parsed.groups, parsed.keys, source)
    kept: list[ReadSpan] = []
    dropped = 0
    for group, span in zip(parsed.groups, located, strict=True):
        label = next(
            (
                found
                for seg in group.segments
                if EQ not in seg and (found := verbaliser.label(seg)) is not None
            ),
            None,
        )
        if span is None or label is None:
            dropped += 1 + sum(EQ in seg for seg in group.segments)
        else:
            kept.append(ReadSpan(group, span, label))
    return kept, dropped


def unique_spans(
    read: list[ReadSpan], text: str
) -> tuple[list[dict[str, Any]], list[tuple[int, int]], list[int]]:
    """Sorted, de-duplicated ``{"start","end","text","label"}`` dicts, their output ranges, and
    for each read span the index of the dict it became."""
    order = sorted(range(len(read)), key=lambda i: (read[i].span.start, read[i].span.end, read[i].label))
    spans: list[dict[str, Any]] = []
    ranges: list[tuple[int, int]] = []
    index_of: dict[tuple[int, int, str], int] = {}
    where = [0] * len(read)
    for i in order:
        item = read[i]
        key = (item.span.start, item.span.end, item.label)
        if key not in index_of:
            index_of[key] = len(spans)
            spans.append({"start": key[0], "end": key[1], "text": text[key[0] : key[1]], "label": key[2]})
            ranges.append((item.group.out_start, item.group.out_end))
        where[i] = index_of[key]
    return spans, ranges, where


def gold_spans(text: str, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = [
        {
            "start": int(e["start"]),
            "end": int(e["end"]),
            "text": text[int(e["start"]) : int(e["end"])],
            "label": e["label"],
        }
        for e in items
    ]
    return sorted(out, key=lambda e: (e["start"], e["end"], e["label"]))


def span_groups(
    tokens: Tokens, items: Sequence[Mapping[str, Any]], segments: Sequence[tuple[str, ...]]
) -> list[Group]:
    """Groups for gold spans (widened to whole words), with the given ``|`` segments each."""
    groups: list[Group] = []
    for item, segs in zip(items, segments, strict=True):
        found = word_range(tokens.words, int(item["start"]), int(item["end"]))
        if found is not None:
            groups.append(Group(found[0], found[1], segs))
    return groups


def write_spans(text: str, items: Sequence[Mapping[str, Any]], verbaliser: Verbaliser) -> str:
    tokens = analyse(text)
    segments = [(verbaliser.words(str(item["label"])),) for item in items]
    return write(tokens.words, span_groups(tokens, items, segments))
