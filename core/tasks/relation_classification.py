"""Relation classification: the relation between two marked mentions, chosen among candidates.

source: `[ Jobs ] founded [ Apple ] . The relationship between [ Jobs ] and [ Apple ] is`
target: `relationship between [ Jobs ] and [ Apple ] = founded by`
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..errors import Problem
from . import metrics
from .augmented import CLOSE, EQ, OPEN, Group, Tokens, analyse, surface, word_range, write
from .base import Decoded, Task, TaskSpec, ValidationResult
from .checks import (
    Collector,
    check_label,
    check_object,
    check_span,
    check_text,
    run_validation,
    structured_inputs_problems,
)


class RelationClassificationTask(Task):
    name: ClassVar[str] = "relation_classification"

    def validate(self, spec: TaskSpec, raw: Sequence[Any]) -> ValidationResult:
        def one(c: Collector, item: Any, loc: str) -> dict[str, Any] | None:
            found = _mentions(c, item, loc)
            if found is None or not isinstance(item, Mapping):
                return None
            relation = check_label(c, item.get("relation"), spec.labels, f"{loc}/relation", "relation")
            return None if relation is None else {**found, "relation": relation}

        return run_validation(raw, one, lambda ex: [ex["relation"]])

    def source(self, inp: Mapping[str, Any], spec: TaskSpec) -> str:
        tokens, head, tail = _ranges(inp)
        groups = [Group(r[0], r[1], ()) for r in (head, tail) if r is not None]
        return f"{write(tokens.words, groups)} The {_between(tokens, head, tail)} is"

    def target(self, example: Mapping[str, Any], spec: TaskSpec) -> str:
        return self._target(example, spec.labels.index(str(example["relation"])), spec)

    def _target(self, inp: Mapping[str, Any], index: int, spec: TaskSpec) -> str:
        tokens, head, tail = _ranges(inp)
        return f"{_between(tokens, head, tail)} {EQ} {self.verbaliser(spec).words(spec.labels[index])}"

    def decode(self, generated: str, inp: Mapping[str, Any], spec: TaskSpec) -> Decoded:
        answer = generated.rpartition(EQ)[2]
        relation = self.verbaliser(spec).label(answer)
        return Decoded({"relation": relation}, 0 if relation is not None else 1, [])

    def gold(self, example: Mapping[str, Any]) -> dict[str, Any]:
        return {"relation": example["relation"]}

    def metric(
        self, spec: TaskSpec, golds: Sequence[Mapping[str, Any]], preds: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        return metrics.accuracy(golds, preds, "relation")

    def candidates(self, inp: Mapping[str, Any], spec: TaskSpec) -> list[str] | None:
        return [self._target(inp, i, spec) for i in range(len(spec.labels))]

    def label_of_candidate(self, index: int, spec: TaskSpec) -> str:
        return spec.labels[index]

    def validate_inputs(self, raw: Sequence[Any], max_chars: int) -> list[Problem]:
        return structured_inputs_problems(raw, max_chars, _mentions, lambda x: (x["text"], "/text"))


def _mentions(c: Collector, item: Any, loc: str) -> dict[str, Any] | None:
    ex = check_object(c, item, loc)
    text = None if ex is None else check_text(c, ex, loc)
    if ex is None or text is None:
        return None
    head = check_span(c, ex.get("head"), f"{loc}/head", text, "head")
    tail = check_span(c, ex.get("tail"), f"{loc}/tail", text, "tail")
    if head is None or tail is None:
        return None
    if head[0] < tail[1] and tail[0] < head[1]:
        c.warn(f"{loc}: head and tail overlap")
    return {
        "text": text,
        "head": {"start": head[0], "end": head[1]},
        "tail": {"start": tail[0], "end": tail[1]},
    }


def _ranges(inp: Mapping[str, Any]) -> tuple[Tokens, tuple[int, int] | None, tuple[int, int] | None]:
    tokens = analyse(str(inp["text"]))
    head, tail = (
        word_range(tokens.words, int(inp[k]["start"]), int(inp[k]["end"])) for k in ("head", "tail")
    )
    return tokens, head, tail


def _between(tokens: Tokens, head: tuple[int, int] | None, tail: tuple[int, int] | None) -> str:
    h = surface(tokens.words, *head) if head else ""
    t = surface(tokens.words, *tail) if tail else ""
    return f"relationship between {OPEN} {h} {CLOSE} and {OPEN} {t} {CLOSE}"
