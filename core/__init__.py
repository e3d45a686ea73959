"""fishdip core: FISH-DIP sample-aware dynamic sparse fine-tuning for extraction tasks.

A library with no server: it never reads settings, never touches a database, and reports
through callbacks. Typical use::

    import core
    base = core.load_base("tiny-t5")
    spec = core.TaskSpec.from_dict({"type": "ner", "labels": ["person", "location"]})
    train = core.get_task("ner").validate(spec, raw_examples).examples
    result = core.fit(base, spec, train, method=core.MethodConfig(type="fish_dip"))
    core.save_delta(result, base, "model.safetensors")
    model = core.apply_delta(base, core.load_delta("model.safetensors"))
    core.extract(model, spec, ["Barack Obama visited Paris ."])
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import MethodConfig, TrainConfig, resolve_config
    from .delta import DeltaInfo, SharedBase, SparseDelta, apply_delta, load_delta, read_manifest, save_delta
    from .errors import BaseMismatch, ConfigError, CoreError, FitCancelled, Problem, UnknownBase, UnknownTask
    from .extraction import extract
    from .models import BaseInfo, LoadedBase, is_known_base, list_bases, load_base
    from .tasks import TASKS, Decoded, Task, TaskSpec, ValidationResult, get_task
    from .training import Callbacks, EvalInfo, FitResult, MaskRefreshInfo, StepInfo, evaluate, fit
    from .version import __version__

# The public names and the submodule each comes from. They are imported on first use (PEP 562),
# so that a torch-free submodule (core.memory, core.errors) can be imported without paying for
# torch and transformers: the worker's allocator re-execution imports core.memory, then
# replaces its process, and an eager torch import there was 2-3 s thrown away per worker start.
_SOURCES = {
    "config": "MethodConfig TrainConfig resolve_config",
    "delta": "DeltaInfo SharedBase SparseDelta apply_delta load_delta read_manifest save_delta",
    "errors": "BaseMismatch ConfigError CoreError FitCancelled Problem UnknownBase UnknownTask",
    "extraction": "extract",
    "models": "BaseInfo LoadedBase is_known_base list_bases load_base",
    "tasks": "TASKS Decoded Task TaskSpec ValidationResult get_task",
    "training": "Callbacks EvalInfo FitResult MaskRefreshInfo StepInfo evaluate fit",
    "version": "__version__",
}
_EXPORTS = {name: module for module, names in _SOURCES.items() for name in names.split()}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def extract_with(
    base: LoadedBase | SharedBase,
    delta: SparseDelta,
    inputs: Sequence[str | Mapping[str, Any]],
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """Extract with a delta on a base: swapped into a :class:`SharedBase`, or applied to a copy."""
    from .delta import SharedBase, apply_delta
    from .extraction import extract

    if isinstance(base, SharedBase):
        with base.use(delta) as run:
            return extract(run, delta.spec, inputs, batch_size=batch_size)
    return extract(apply_delta(base, delta), delta.spec, inputs, batch_size=batch_size)


__all__ = [
    "TASKS",
    "BaseInfo",
    "BaseMismatch",
    "Callbacks",
    "ConfigError",
    "CoreError",
    "Decoded",
    "DeltaInfo",
    "EvalInfo",
    "FitCancelled",
    "FitResult",
    "LoadedBase",
    "MaskRefreshInfo",
    "MethodConfig",
    "Problem",
    "SharedBase",
    "SparseDelta",
    "StepInfo",
    "Task",
    "TaskSpec",
    "TrainConfig",
    "UnknownBase",
    "UnknownTask",
    "ValidationResult",
    "__version__",
    "apply_delta",
    "evaluate",
    "extract",
    "extract_with",
    "fit",
    "get_task",
    "is_known_base",
    "list_bases",
    "load_base",
    "load_delta",
    "read_manifest",
    "resolve_config",
    "save_delta",
]
