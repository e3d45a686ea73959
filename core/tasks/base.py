"""The task interface: a spec, validation of examples, source/target formatting, decoding, metric."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import ConfigError, Problem, pointer
from .verbaliser import Verbaliser

MAX_PROBLEMS = 100
MAX_WARNINGS = 100


class FrozenMap(Mapping[str, str]):
    """An immutable, hashable str -> str mapping, so that TaskSpec stays hashable."""

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items = tuple(sorted((items or {}).items()))
        self._dict = dict(self._items)

    def __getitem__(self, key: str) -> str:
        return self._dict[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)

    def __len__(self) -> int:
        return len(self._dict)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._items) == dict(other.items())

    def __repr__(self) -> str:
        return f"FrozenMap({self._dict!r})"


@dataclass(frozen=True)
class TaskSpec:
    type: str
    labels: tuple[str, ...]
    relation_labels: tuple[str, ...] = ()
    label_words: Mapping[str, str] = field(default_factory=FrozenMap)

    def __post_init__(self) -> None:
        # Accept lists and dicts from callers while keeping the frozen dataclass hashable.
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "relation_labels", tuple(self.relation_labels))
        if not isinstance(self.label_words, FrozenMap):
            object.__setattr__(self, "label_words", FrozenMap(self.label_words))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskSpec:
        """Build a spec from JSON, raising ConfigError that lists every problem found."""
        from . import TASKS  # the registry imports this module

        if not isinstance(d, Mapping):
            raise ConfigError([Problem("", "task must be an object")])
        problems = [Problem(pointer(k), f"unknown field {k!r}") for k in d if k not in _SPEC_FIELDS]
        task_type = d.get("type")
        if not isinstance(task_type, str) or task_type not in TASKS:
            problems.append(
                Problem("/type", f"unknown task type {task_type!r}; known: {', '.join(sorted(TASKS))}")
            )
        labels = _string_list(d, "labels", problems, required=True)
        relation_labels = _string_list(d, "relation_labels", problems, required=task_type == "joint_er")
        if relation_labels and task_type != "joint_er" and task_type in TASKS:
            problems.append(
                Problem("/relation_labels", f"relation_labels only apply to joint_er, not {task_type}")
            )
        label_words = _label_words(d, set(labels) | set(relation_labels), problems)
        if problems:
            raise ConfigError(problems)
        spec = cls(str(task_type), tuple(labels), tuple(relation_labels), FrozenMap(label_words))
        problems = TASKS[spec.type].validate_spec(spec)
        if problems:
            raise ConfigError(problems)
        return spec

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "labels": list(self.labels)}
        if self.type == "joint_er" or self.relation_labels:
            out["relation_labels"] = list(self.relation_labels)
        out["label_words"] = dict(self.label_words)
        return out


_SPEC_FIELDS = ("type", "labels", "relation_labels", "label_words")


def _string_list(d: Mapping[str, Any], key: str, problems: list[Problem], *, required: bool) -> list[str]:
    value = d.get(key)
    if value is None:
        if required:
            problems.append(Problem(pointer(key), f"{key} is required: a non-empty list of names"))
        return []
    if not isinstance(value, (list, tuple)):
        problems.append(Problem(pointer(key), f"{key} must be a list of names"))
        return []
    if required and not value:
        problems.append(Problem(pointer(key), f"{key} must not be empty"))
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            problems.append(Problem(pointer(key, i), "must be a non-empty string"))
        elif item in out:
            problems.append(Problem(pointer(key, i), f"duplicate name {item!r}"))
        else:
            out.append(item)
    return out


def _label_words(d: Mapping[str, Any], names: set[str], problems: list[Problem]) -> dict[str, str]:
    value = d.get("label_words") or {}
    if not isinstance(value, Mapping):
        problems.append(Problem("/label_words", "label_words must be an object mapping a label to its words"))
        return {}
    out: dict[str, str] = {}
    for label, words in value.items():
        loc = pointer("label_words", str(label))
        if label not in names:
            problems.append(Problem(loc, f"{label!r} is not one of the task's labels"))
        elif not isinstance(words, str) or not words.strip():
            problems.append(Problem(loc, "must be a non-empty string"))
        else:
            out[label] = words.strip()
    return out


@dataclass
class ValidationResult:
    examples: list[dict[str, Any]]
    problems: list[Problem]
    label_counts: dict[str, int]
    warnings: list[str]


@dataclass
class Decoded:
    prediction: dict[str, Any]
    dropped: int
    spans_in_output: list[tuple[int, int]] = field(default_factory=list)


class Task(ABC):
    name: ClassVar[str]
    text_key: ClassVar[str | None] = None

    def validate_spec(self, spec: TaskSpec) -> list[Problem]:
        return self.verbaliser(spec).problems("/labels", spec.label_words)

    def verbaliser(self, spec: TaskSpec) -> Verbaliser:
        return _verbaliser(spec.labels, spec.label_words)

    @abstractmethod
    def validate(self, spec: TaskSpec, raw: Sequence[Any]) -> ValidationResult: ...

    @abstractmethod
    def source(self, inp: Mapping[str, Any], spec: TaskSpec) -> str: ...

    @abstractmethod
    def target(self, example: Mapping[str, Any], spec: TaskSpec) -> str: ...

    @abstractmethod
    def decode(self, generated: str, inp: Mapping[str, Any], spec: TaskSpec) -> Decoded: ...

    @abstractmethod
    def gold(self, example: Mapping[str, Any]) -> dict[str, Any]: ...

    @abstractmethod
    def metric(
        self, spec: TaskSpec, golds: Sequence[Mapping[str, Any]], preds: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]: ...

    @abstractmethod
    def validate_inputs(self, raw: Sequence[Any], max_chars: int) -> list[Problem]: ...

    def input_from_text(self, text: str) -> dict[str, Any]:
        raise ValueError(f"{self.name} needs structured inputs, not plain text")

    def candidates(self, inp: Mapping[str, Any], spec: TaskSpec) -> list[str] | None:
        return None

    def label_of_candidate(self, index: int, spec: TaskSpec) -> str:
        raise ValueError(f"{self.name} does not score candidates")


_VERBALISERS: dict[tuple[tuple[str, ...], FrozenMap], Verbaliser] = {}


def _verbaliser(labels: tuple[str, ...], overrides: Mapping[str, str]) -> Verbaliser:
    """Verbalisers are cached because decode() runs once per generated string."""
    key = (labels, overrides if isinstance(overrides, FrozenMap) else FrozenMap(overrides))
    found = _VERBALISERS.get(key)
    if found is None:
        if len(_VERBALISERS) > 256:
            _VERBALISERS.clear()
        found = _VERBALISERS[key] = Verbaliser(labels, overrides)
    return found
