"""Semantic role labelling for one marked predicate.

source: `The cat [ ate ] the fish yesterday .`
target: `[ The cat | first argument ] ate [ the fish | second argument ] [ yesterday | temporal ] .`
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..errors import Problem
from . import metrics
from .augmented import Group, analyse, word_range, write
from .base import Decoded, Task, TaskSpec, ValidationResult
from .checks import (
    Collector,
    check_label,
    check_list,
    check_no_overlap,
    check_object,
    check_span,
    check_text,
    run_validation,
    structured_inputs_problems,
)
from .spans import gold_spans, read_spans, unique_spans, write_spans


class SrlTask(Task):
    name: ClassVar[str] = "srl"

    def validate(self, spec: TaskSpec, raw: Sequence[Any]) -> ValidationResult:
        def one(c: Collector, item: Any, loc: str) -> dict[str, Any] | None:
            found = _predicate(c, item, loc)
            if found is None or not isinstance(item, Mapping):
                return None
            text, pred = found["text"], found["predicate"]
            arguments: list[dict[str, Any] | None] = []
            for j, raw_arg in enumerate(check_list(c, item, "arguments", loc)):
                aloc = f"{loc}/arguments/{j}"
                span = check_span(c, raw_arg, aloc, text, "argument")
                label = check_label(c, raw_arg.get("label"), spec.labels, f"{aloc}/label") if span else None
                arguments.append(
                    None
                    if span is None or label is None
                    else {"start": span[0], "end": span[1], "label": label}
                )
                if span is not None and span[0] < pred["end"] and pred["start"] < span[1]:
                    c.add(aloc, "argument overlaps the predicate")
            spans = [None if a is None else (a["start"], a["end"], a["label"]) for a in arguments]
            check_no_overlap(c, spans, loc, "arguments", "argument")
            return {**found, "arguments": arguments}

        return run_validation(raw, one, lambda ex: [a["label"] for a in ex["arguments"]])

    def source(self, inp: Mapping[str, Any], spec: TaskSpec) -> str:
        tokens = analyse(str(inp["text"]))
        found = word_range(tokens.words, int(inp["predicate"]["start"]), int(inp["predicate"]["end"]))
        return write(tokens.words, [Group(found[0], found[1], ())] if found else [])

    def target(self, example: Mapping[str, Any], spec: TaskSpec) -> str:
        return write_spans(str(example["text"]), example.get("arguments") or [], self.verbaliser(spec))

    def decode(self, generated: str, inp: Mapping[str, Any], spec: TaskSpec) -> Decoded:
        text = str(inp["text"])
        read, dropped = read_spans(generated, analyse(text), self.verbaliser(spec))
        arguments, ranges, _ = unique_spans(read, text)
        return Decoded({"arguments": arguments}, dropped, ranges)

    def gold(self, example: Mapping[str, Any]) -> dict[str, Any]:
        return {"arguments": gold_spans(str(example["text"]), example.get("arguments") or [])}

    def metric(
        self, spec: TaskSpec, golds: Sequence[Mapping[str, Any]], preds: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        return metrics.span_metric(spec.labels, golds, preds, "arguments")

    def validate_inputs(self, raw: Sequence[Any], max_chars: int) -> list[Problem]:
        return structured_inputs_problems(raw, max_chars, _predicate, lambda x: (x["text"], "/text"))


def _predicate(c: Collector, item: Any, loc: str) -> dict[str, Any] | None:
    ex = check_object(c, item, loc)
    text = None if ex is None else check_text(c, ex, loc)
    if ex is None or text is None:
        return None
    span = check_span(c, ex.get("predicate"), f"{loc}/predicate", text, "predicate")
    if span is None:
        return None
    return {"text": text, "predicate": {"start": span[0], "end": span[1]}}
