"""Joint entity and relation extraction: relations ride in the head entity's group,
`[ John Wilkes Booth | person | kills = President Lincoln ] , who ...`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..errors import Problem
from . import metrics
from .augmented import EQ, analyse, key_string, surface, word_range, write
from .base import Decoded, Task, TaskSpec, ValidationResult
from .checks import Collector, check_label, check_list, check_object, entities_of, is_int, run_validation
from .ner import text_inputs_problems
from .spans import ReadSpan, read_spans, span_groups, unique_spans
from .verbaliser import Verbaliser


class JointErTask(Task):
    name: ClassVar[str] = "joint_er"
    text_key: ClassVar[str | None] = "text"

    def validate_spec(self, spec: TaskSpec) -> list[Problem]:
        relation_problems = self.relation_verbaliser(spec).problems("/relation_labels", spec.label_words)
        return super().validate_spec(spec) + relation_problems

    def relation_verbaliser(self, spec: TaskSpec) -> Verbaliser:
        return Verbaliser(spec.relation_labels, spec.label_words)

    def validate(self, spec: TaskSpec, raw: Sequence[Any]) -> ValidationResult:
        def one(c: Collector, item: Any, loc: str) -> dict[str, Any] | None:
            found = entities_of(c, item, loc, spec.labels)
            if found is None:
                return None
            text, entities = found
            relations = _relations(c, item, loc, len(entities), spec.relation_labels)
            if any(e is None for e in entities) or relations is None:
                return None
            return {"text": text, "entities": entities, "relations": relations}

        def labels_of(ex: dict[str, Any]) -> list[str]:
            return [e["label"] for e in ex["entities"]] + [r["type"] for r in ex["relations"]]

        return run_validation(raw, one, labels_of)

    def source(self, inp: Mapping[str, Any], spec: TaskSpec) -> str:
        return write(analyse(str(inp["text"])).words, [])

    def target(self, example: Mapping[str, Any], spec: TaskSpec) -> str:
        tokens = analyse(str(example["text"]))
        entities = list(example.get("entities") or [])
        words, rel_words = self.verbaliser(spec), self.relation_verbaliser(spec)
        tails: list[str] = []
        for entity in entities:
            found = word_range(tokens.words, int(entity["start"]), int(entity["end"]))
            tails.append(surface(tokens.words, *found) if found else "")
        segments: list[tuple[str, ...]] = []
        for index, entity in enumerate(entities):
            mine = sorted(
                (r for r in example.get("relations") or [] if int(r["head"]) == index),
                key=lambda r: (int(entities[int(r["tail"])]["start"]), str(r["type"])),
            )
            relation_segments = tuple(
                f"{rel_words.words(str(r['type']))} {EQ} {tails[int(r['tail'])]}" for r in mine
            )
            segments.append((words.words(str(entity["label"])), *relation_segments))
        return write(tokens.words, span_groups(tokens, entities, segments))

    def decode(self, generated: str, inp: Mapping[str, Any], spec: TaskSpec) -> Decoded:
        text = str(inp["text"])
        read, dropped = read_spans(generated, analyse(text), self.verbaliser(spec))
        entities, ranges, where = unique_spans(read, text)
        relations, rel_dropped = _read_relations(read, where, entities, self.relation_verbaliser(spec))
        return Decoded({"entities": entities, "relations": relations}, dropped + rel_dropped, ranges)

    def gold(self, example: Mapping[str, Any]) -> dict[str, Any]:
        text = str(example["text"])
        raw = list(example.get("entities") or [])
        order = sorted(
            range(len(raw)), key=lambda i: (int(raw[i]["start"]), int(raw[i]["end"]), str(raw[i]["label"]))
        )
        new_index = {old: new for new, old in enumerate(order)}
        entities = [
            {
                "start": int(e["start"]),
                "end": int(e["end"]),
                "text": text[int(e["start"]) : int(e["end"])],
                "label": e["label"],
            }
            for e in (raw[i] for i in order)
        ]
        relations = sorted(
            {
                (new_index[int(r["head"])], new_index[int(r["tail"])], str(r["type"]))
                for r in example.get("relations") or []
            }
        )
        return {
            "entities": entities,
            "relations": [{"head": h, "tail": t, "type": y} for h, t, y in relations],
        }

    def metric(
        self, spec: TaskSpec, golds: Sequence[Mapping[str, Any]], preds: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        return metrics.joint_er_metric(spec.labels, spec.relation_labels, golds, preds)

    def input_from_text(self, text: str) -> dict[str, Any]:
        return {"text": text}

    def validate_inputs(self, raw: Sequence[Any], max_chars: int) -> list[Problem]:
        return text_inputs_problems(raw, max_chars)


def _relations(
    c: Collector, item: Any, loc: str, n_entities: int, allowed: Sequence[str]
) -> list[dict[str, Any]] | None:
    if not isinstance(item, Mapping):
        return None
    before = c.count()
    out: list[dict[str, Any]] = []
    seen: dict[tuple[int, int, str], int] = {}
    for k, raw in enumerate(check_list(c, item, "relations", loc)):
        rloc = f"{loc}/relations/{k}"
        rel = check_object(c, raw, rloc, "relation")
        if rel is None:
            continue
        ends = [_entity_index(c, rel, key, rloc, n_entities) for key in ("head", "tail")]
        kind = check_label(c, rel.get("type"), allowed, f"{rloc}/type", "relation type")
        if ends[0] is not None and ends[0] == ends[1]:
            c.add(f"{rloc}/tail", f"head and tail are the same entity ({ends[0]})")
        elif ends[0] is not None and ends[1] is not None and kind is not None:
            key = (ends[0], ends[1], kind)
            if key in seen:
                c.add(rloc, f"duplicate of relation {seen[key]}")
            seen[key] = k
            out.append({"head": ends[0], "tail": ends[1], "type": kind})
    return out if c.count() == before else None


def _entity_index(c: Collector, rel: Mapping[str, Any], key: str, loc: str, n: int) -> int | None:
    value = rel.get(key)
    if not is_int(value):
        c.add(f"{loc}/{key}", f"{key} must be an entity index (integer), got {value!r}")
        return None
    if not 0 <= int(value) < n:
        c.add(f"{loc}/{key}", f"{key} {value} is out of range: the example has {n} entities")
        return None
    return int(value)


def _read_relations(
    read: list[ReadSpan], where: list[int], entities: list[dict[str, Any]], verbaliser: Verbaliser
) -> tuple[list[dict[str, Any]], int]:
    """Relations written in each head's group; the tail is the nearest other entity with that text
    not already taken by the same head and relation."""
    entity_keys = [key_string(e["text"]) for e in entities]
    found: set[tuple[int, int, str]] = set()
    dropped = 0
    for item, head in zip(read, where, strict=True):
        for segment in item.group.segments:
            if EQ not in segment:
                continue
            words, _, tail_text = segment.partition(EQ)
            label = verbaliser.label(words)
            tail_key = key_string(tail_text)
            # A repeated segment (same relation, same tail text) means the next-nearest such entity.
            options = [
                k
                for k, key in enumerate(entity_keys)
                if key and key == tail_key and k != head and (head, k, label) not in found
            ]
            if label is None or not options:
                dropped += 1
                continue
            start = entities[head]["start"]
            tail = min(options, key=lambda k: (abs(entities[k]["start"] - start), entities[k]["start"]))
            found.add((head, tail, label))
    return [{"head": h, "tail": t, "type": y} for h, t, y in sorted(found)], dropped
