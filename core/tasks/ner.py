"""Named entity recognition: `[ Barack Obama | person ] visited [ Paris | location ] .`"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..errors import Problem
from . import metrics
from .augmented import analyse, write
from .base import Decoded, Task, TaskSpec, ValidationResult
from .checks import Collector, check_max_chars, check_object, entities_of, run_validation
from .spans import gold_spans, read_spans, unique_spans, write_spans


class NerTask(Task):
    name: ClassVar[str] = "ner"
    text_key: ClassVar[str | None] = "text"

    def validate(self, spec: TaskSpec, raw: Sequence[Any]) -> ValidationResult:
        def one(c: Collector, item: Any, loc: str) -> dict[str, Any] | None:
            found = entities_of(c, item, loc, spec.labels)
            if found is None or any(e is None for e in found[1]):
                return None
            return {"text": found[0], "entities": found[1]}

        return run_validation(raw, one, lambda ex: [e["label"] for e in ex["entities"]])

    def source(self, inp: Mapping[str, Any], spec: TaskSpec) -> str:
        return write(analyse(str(inp["text"])).words, [])

    def target(self, example: Mapping[str, Any], spec: TaskSpec) -> str:
        return write_spans(str(example["text"]), example.get("entities") or [], self.verbaliser(spec))

    def decode(self, generated: str, inp: Mapping[str, Any], spec: TaskSpec) -> Decoded:
        text = str(inp["text"])
        read, dropped = read_spans(generated, analyse(text), self.verbaliser(spec))
        entities, ranges, _ = unique_spans(read, text)
        return Decoded({"entities": entities}, dropped, ranges)

    def gold(self, example: Mapping[str, Any]) -> dict[str, Any]:
        return {"entities": gold_spans(str(example["text"]), example.get("entities") or [])}

    def metric(
        self, spec: TaskSpec, golds: Sequence[Mapping[str, Any]], preds: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        return metrics.span_metric(spec.labels, golds, preds, "entities")

    def input_from_text(self, text: str) -> dict[str, Any]:
        return {"text": text}

    def validate_inputs(self, raw: Sequence[Any], max_chars: int) -> list[Problem]:
        return text_inputs_problems(raw, max_chars)


def text_inputs_problems(raw: Sequence[Any], max_chars: int) -> list[Problem]:
    """Extraction inputs that are strings or ``{"text": ...}`` objects."""
    c = Collector()
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        return [Problem("", "inputs must be a list")]
    for i, item in enumerate(raw):
        if isinstance(item, str):
            check_max_chars(c, item, f"/{i}", max_chars)
            continue
        obj = check_object(c, item, f"/{i}", "input (a string or an object with 'text')")
        text = None if obj is None else obj.get("text")
        if obj is not None and not isinstance(text, str):
            c.add(f"/{i}/text", "text must be a string")
        elif isinstance(text, str):
            check_max_chars(c, text, f"/{i}/text", max_chars)
    return c.problems
