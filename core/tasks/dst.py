"""Dialogue state tracking: `[belief] hotel area north , hotel price range cheap [belief]`.

Every slot of the active domains (those with a filled slot) is written, sorted by slot name,
unfilled ones as `not given`, so that the model learns to say which slots are empty.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..errors import Problem, pointer
from . import metrics
from .augmented import MARKERS, analyse, keys_of
from .base import Decoded, Task, TaskSpec, ValidationResult
from .checks import Collector, check_object, run_validation, structured_inputs_problems
from .verbaliser import Verbaliser

BELIEF = "[belief]"
NOT_GIVEN = "not given"
_BELIEF_RE = re.compile(r"\[\s*belief\s*\]", re.IGNORECASE)
_MARKERS_RE = re.compile(r"[\[\]|=]")
_NOT_GIVEN_KEYS = keys_of(NOT_GIVEN)


def domain(slot: str) -> str:
    return slot.split("-", 1)[0]


class DstTask(Task):
    name: ClassVar[str] = "dst"

    def validate(self, spec: TaskSpec, raw: Sequence[Any]) -> ValidationResult:
        def one(c: Collector, item: Any, loc: str) -> dict[str, Any] | None:
            turns = _turns(c, item, loc)
            state = _state(c, item, loc, spec.labels)
            return None if turns is None or state is None else {"turns": turns, "state": state}

        return run_validation(raw, one, lambda ex: list(ex["state"]))

    def source(self, inp: Mapping[str, Any], spec: TaskSpec) -> str:
        return " ; ".join(str(t) for t in inp["turns"])

    def target(self, example: Mapping[str, Any], spec: TaskSpec) -> str:
        state: Mapping[str, str] = example.get("state") or {}
        active = {domain(slot) for slot in state}
        verbaliser = self.verbaliser(spec)
        items = [
            f"{verbaliser.words(slot)} {state.get(slot) or NOT_GIVEN}"
            for slot in sorted(spec.labels)
            if domain(slot) in active
        ]
        return f"{BELIEF} {' , '.join(items)} {BELIEF}" if items else f"{BELIEF} {BELIEF}"

    def decode(self, generated: str, inp: Mapping[str, Any], spec: TaskSpec) -> Decoded:
        body = _MARKERS_RE.sub(" ", _BELIEF_RE.sub(" , ", generated))
        slots = _slot_keys(self.verbaliser(spec))
        state: dict[str, str] = {}
        dropped = 0
        for item in body.split(","):
            found = _read_item(item, slots)
            if found is None:
                dropped += bool(item.strip())
            elif found[1] is not None:
                if found[0] in state:
                    dropped += 1
                else:
                    state[found[0]] = found[1]
        return Decoded({"state": dict(sorted(state.items()))}, dropped, [])

    def gold(self, example: Mapping[str, Any]) -> dict[str, Any]:
        return {"state": dict(sorted((example.get("state") or {}).items()))}

    def metric(
        self, spec: TaskSpec, golds: Sequence[Mapping[str, Any]], preds: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        return metrics.joint_goal_accuracy(golds, preds)

    def validate_inputs(self, raw: Sequence[Any], max_chars: int) -> list[Problem]:
        return structured_inputs_problems(raw, max_chars, _turns, lambda turns: (" ; ".join(turns), "/turns"))


def _slot_keys(verbaliser: Verbaliser) -> list[tuple[tuple[str, ...], str]]:
    """(keys of the slot's words, slot), longest first so that the longest prefix wins."""
    pairs = [(keys_of(verbaliser.words(slot)), slot) for slot in verbaliser.labels]
    return sorted(pairs, key=lambda p: -len(p[0]))


def _read_item(item: str, slots: list[tuple[tuple[str, ...], str]]) -> tuple[str, str | None] | None:
    """(slot, value) of one `slot words value` item; value None for `not given`; None if unreadable."""
    tokens = analyse(item)
    for slot_keys, slot in slots:
        n = len(slot_keys)
        if tokens.keys[:n] != slot_keys or len(tokens.keys) == n:
            continue
        if tokens.keys[n:] == _NOT_GIVEN_KEYS:
            return slot, None
        value = item[tokens.words[tokens.key_word[n]].start :]
        return slot, " ".join(value.split())
    return None


def _turns(c: Collector, item: Any, loc: str) -> list[str] | None:
    ex = check_object(c, item, loc)
    if ex is None:
        return None
    turns = ex.get("turns")
    if not isinstance(turns, list) or not turns:
        c.add(f"{loc}/turns", "turns must be a non-empty list of strings")
        return None
    bad = [i for i, t in enumerate(turns) if not isinstance(t, str)]
    for i in bad:
        c.add(f"{loc}/turns/{i}", f"turn must be a string, got {turns[i]!r}")
    if not bad and not any(t.strip() for t in turns):
        c.add(f"{loc}/turns", "every turn is empty")
        return None
    return None if bad else list(turns)


def _state(c: Collector, item: Any, loc: str, slots: Sequence[str]) -> dict[str, str] | None:
    if not isinstance(item, Mapping):
        return None
    state = item.get("state", {})
    if not isinstance(state, Mapping):
        c.add(f"{loc}/state", "state must be an object mapping slot names to values")
        return None
    before = c.count()
    out: dict[str, str] = {}
    for slot, value in state.items():
        sloc = loc + pointer("state", str(slot))
        if slot not in slots:
            c.add(sloc, f"slot {slot!r} is not one of the task's labels")
        elif not isinstance(value, str) or not value.strip():
            c.add(sloc, f"value must be a non-empty string, got {value!r}")
        elif any(ch in value for ch in MARKERS + ","):
            c.add(sloc, f"value {value!r} contains one of , [ ] | = which the belief format reserves")
        elif keys_of(value) == _NOT_GIVEN_KEYS:
            c.add(sloc, f"value {value!r} is reserved for an unfilled slot")
        else:
            out[str(slot)] = " ".join(value.split())
    return out if c.count() == before else None
