"""Shared fixtures for the core library tests: tiny bases and a small real NER set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import core

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"

# Short sentences written for these tests: a random-init tiny model can memorise them.
NER_EXAMPLES: list[dict[str, Any]] = [
    {
        "text": "Alice lives in Paris .",
        "entities": [
            {"start": 0, "end": 5, "label": "person"},
            {"start": 15, "end": 20, "label": "location"},
        ],
    },
    {
        "text": "Bob flew to Rome .",
        "entities": [
            {"start": 0, "end": 3, "label": "person"},
            {"start": 12, "end": 16, "label": "location"},
        ],
    },
    {
        "text": "Carol met Dave in Oslo .",
        "entities": [
            {"start": 0, "end": 5, "label": "person"},
            {"start": 10, "end": 14, "label": "person"},
            {"start": 18, "end": 22, "label": "location"},
        ],
    },
    {"text": "It rained all day .", "entities": []},
    {
        "text": "Eve visited Lima today .",
        "entities": [
            {"start": 0, "end": 3, "label": "person"},
            {"start": 12, "end": 16, "label": "location"},
        ],
    },
    {"text": "Frank stayed home .", "entities": [{"start": 0, "end": 5, "label": "person"}]},
]
NER_SPEC = {"type": "ner", "labels": ["person", "location"]}


@pytest.fixture(scope="session")
def ner_spec() -> core.TaskSpec:
    return core.TaskSpec.from_dict(NER_SPEC)


@pytest.fixture(scope="session")
def ner_train(ner_spec: core.TaskSpec) -> list[dict[str, Any]]:
    res = core.get_task("ner").validate(ner_spec, NER_EXAMPLES)
    assert not res.problems, res.problems
    return res.examples


@pytest.fixture(scope="session")
def tiny_t5() -> core.LoadedBase:
    return core.load_base("tiny-t5", device="cpu")


@pytest.fixture(scope="session")
def tiny_causal() -> core.LoadedBase:
    return core.load_base("tiny-causal", device="cpu")


@pytest.fixture(scope="session")
def wnut_small() -> tuple[core.TaskSpec, list[dict[str, Any]]]:
    """Twelve real WNUT-17 training sentences (shortest with an entity)."""
    from core.data import read_conll

    raw = read_conll(DATASETS / "wnut17" / "wnut17train.conll")
    picked = sorted((r for r in raw if any(t != "O" for t in r["tags"])), key=lambda r: len(r["tokens"]))[:12]
    labels = sorted({t[2:] for r in picked for t in r["tags"] if t != "O"})
    spec = core.TaskSpec.from_dict({"type": "ner", "labels": labels})
    res = core.get_task("ner").validate(spec, picked)
    assert not res.problems
    return spec, res.examples
