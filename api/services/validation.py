"""Bridges user input to ``core`` validation, turning core Problems into API error details.

Every check appends to one list so that a request's every problem is reported at once,
each with a JSON pointer relative to the request body.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import core
from api.errors import ErrorDetail
from store.settings import Settings


@dataclass
class Problems:
    items: list[ErrorDetail] = field(default_factory=list)

    def add(self, loc: str, message: str) -> None:
        self.items.append(ErrorDetail(loc=loc, message=message))

    def extend(self, prefix: str, problems: Sequence[Any]) -> None:
        for p in problems:
            self.add(prefix + str(p.loc), str(p.message))

    def __bool__(self) -> bool:
        return bool(self.items)


def parse_task(task: dict[str, Any], settings: Settings, problems: Problems, prefix: str = "/task") -> Any:
    """A validated ``core.TaskSpec``, or None with the reasons added to ``problems``."""
    labels = task.get("labels")
    if isinstance(labels, list) and len(labels) > settings.max_labels:
        problems.add(f"{prefix}/labels", f"at most {settings.max_labels} labels per task, got {len(labels)}")
        return None
    try:
        return core.TaskSpec.from_dict(task)
    except core.ConfigError as exc:
        problems.extend(prefix, exc.problems)
    except core.CoreError as exc:
        problems.add(prefix, str(exc))
    return None


@dataclass
class CheckedExamples:
    examples: list[dict[str, Any]]
    label_counts: dict[str, int]
    warnings: list[str]


def check_examples(
    spec: Any, raw: Sequence[Any], settings: Settings, problems: Problems, prefix: str
) -> CheckedExamples | None:
    """Validate ``raw`` against ``spec`` with the task's own rules plus the service limits."""
    if not raw:
        problems.add(prefix, "at least one example is needed")
        return None
    if len(raw) > settings.max_examples:
        problems.add(prefix, f"at most {settings.max_examples} examples, got {len(raw)}")
        return None
    before = len(problems.items)
    for i, example in enumerate(raw):
        if isinstance(example, dict):
            _check_lengths(example, settings.max_text_chars, problems, f"{prefix}/{i}")
    result = core.get_task(spec.type).validate(spec, list(raw))
    problems.extend(prefix, result.problems)
    if len(problems.items) > before:
        return None
    return CheckedExamples(list(result.examples), dict(result.label_counts), list(result.warnings))


def _check_lengths(example: dict[str, Any], max_chars: int, problems: Problems, loc: str) -> None:
    text = example.get("text")
    if isinstance(text, str) and len(text) > max_chars:
        problems.add(f"{loc}/text", f"text is {len(text)} characters; the limit is {max_chars}")
    turns = example.get("turns")
    if isinstance(turns, list):
        total = sum(len(t) for t in turns if isinstance(t, str))
        if total > max_chars:
            problems.add(f"{loc}/turns", f"turns total {total} characters; the limit is {max_chars}")


def check_base_model(name: str, settings: Settings, problems: Problems) -> None:
    offered = settings.base_models
    if offered and name not in offered:
        problems.add(
            "/base_model", f"unknown base model {name!r}; this deployment offers: {', '.join(offered)}"
        )
    elif not core.is_known_base(name):
        known = ", ".join(b.name for b in core.list_bases())
        problems.add("/base_model", f"unknown base model {name!r}; known: {known}")


def infer_spec(task_type: str, examples: Sequence[Any]) -> dict[str, Any]:
    """A task spec naming every label the examples use, for datasets uploaded without one.

    Labels are then checked against the job's own spec when the dataset is used.
    """
    labels: dict[str, None] = {}
    relations: dict[str, None] = {}
    for ex in examples:
        if not isinstance(ex, dict):
            continue
        for key in ("entities", "arguments"):
            for span in ex.get(key) or []:
                if isinstance(span, dict) and isinstance(span.get("label"), str):
                    labels[span["label"]] = None
        for tag in ex.get("tags") or []:
            if isinstance(tag, str) and tag != "O":
                labels[tag.split("-", 1)[-1]] = None
        for rel in ex.get("relations") or []:
            if isinstance(rel, dict) and isinstance(rel.get("type"), str):
                relations[rel["type"]] = None
        if isinstance(ex.get("relation"), str):
            labels[ex["relation"]] = None
        if isinstance(ex.get("state"), dict):
            labels.update((str(k), None) for k in ex["state"])
    spec: dict[str, Any] = {"type": task_type, "labels": list(labels) or ["none"]}
    if task_type == "joint_er":
        spec["relation_labels"] = list(relations) or ["none"]
    return spec
