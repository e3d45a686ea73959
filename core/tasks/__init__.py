"""The task registry: each task is one module; adding one is a module plus one line below."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ..errors import UnknownTask
from .base import Decoded, Task, TaskSpec, ValidationResult
from .dst import DstTask
from .joint_er import JointErTask
from .ner import NerTask
from .relation_classification import RelationClassificationTask
from .srl import SrlTask
from .verbaliser import Verbaliser

_TASKS: dict[str, Task] = {
    task.name: task for task in (NerTask(), JointErTask(), RelationClassificationTask(), SrlTask(), DstTask())
}
TASKS: Mapping[str, Task] = MappingProxyType(_TASKS)


def get_task(name: str) -> Task:
    """The task registered under ``name``; UnknownTask lists the known names otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise UnknownTask(f"unknown task type {name!r}; known: {', '.join(sorted(TASKS))}") from None


__all__ = ["TASKS", "Decoded", "Task", "TaskSpec", "ValidationResult", "Verbaliser", "get_task"]
