from __future__ import annotations

import json

import pytest

from core.tasks import TaskSpec, get_task


def ent(start: int, end: int, label: str) -> dict[str, object]:
    return {"start": start, "end": end, "label": label}


def test_ner_micro_and_per_label_by_hand() -> None:
    spec = TaskSpec("ner", ("PER", "LOC", "ORG"))
    golds = [{"entities": [ent(0, 5, "PER"), ent(10, 15, "LOC")]}, {"entities": [ent(0, 3, "LOC")]}]
    preds = [
        {"entities": [ent(0, 5, "PER"), ent(10, 15, "PER")]},
        {"entities": [ent(0, 3, "LOC"), ent(5, 8, "LOC")]},
    ]
    m = get_task("ner").metric(spec, golds, preds)
    # tp 2 (PER 0-5, LOC 0-3); 4 predicted; 3 gold
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(4 / 7) == m["score"]
    assert m["support"] == 3
    assert m["per_label"]["PER"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": pytest.approx(2 / 3),
        "support": 1,
    }
    assert m["per_label"]["LOC"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_label"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    json.dumps(m)


def test_empty_metrics_are_zero() -> None:
    spec = TaskSpec("ner", ("PER",))
    assert get_task("ner").metric(spec, [], [])["score"] == 0.0
    assert get_task("relation_classification").metric(spec, [], []) == {"accuracy": 0.0, "n": 0, "score": 0.0}


def test_joint_er_relations_are_strict() -> None:
    spec = TaskSpec("joint_er", ("Peop", "Loc"), ("Live_In",))
    gold = {
        "entities": [ent(0, 4, "Peop"), ent(10, 15, "Loc")],
        "relations": [{"head": 0, "tail": 1, "type": "Live_In"}],
    }
    right = {
        "entities": [ent(10, 15, "Loc"), ent(0, 4, "Peop")],
        "relations": [{"head": 1, "tail": 0, "type": "Live_In"}],
    }
    wrong_label = {
        "entities": [ent(0, 4, "Loc"), ent(10, 15, "Loc")],
        "relations": [{"head": 0, "tail": 1, "type": "Live_In"}],
    }
    m = get_task("joint_er").metric(spec, [gold, gold], [right, wrong_label])
    assert m["relation"]["precision"] == 0.5 and m["relation"]["recall"] == 0.5
    assert m["f1"] == m["score"] == 0.5
    assert m["entity"]["f1"] == pytest.approx(3 / 4)
    json.dumps(m)


def test_rc_accuracy_and_srl_f1() -> None:
    spec = TaskSpec("relation_classification", ("a", "b"))
    m = get_task("relation_classification").metric(
        spec,
        [{"relation": "a"}, {"relation": "b"}, {"relation": "a"}],
        [{"relation": "a"}, {"relation": None}, {"relation": "b"}],
    )
    assert m == {"accuracy": pytest.approx(1 / 3), "n": 3, "score": pytest.approx(1 / 3)}
    srl = TaskSpec("srl", ("ARG0", "ARG1"))
    m = get_task("srl").metric(
        srl, [{"arguments": [ent(0, 3, "ARG0")]}], [{"arguments": [ent(0, 3, "ARG0"), ent(4, 5, "ARG1")]}]
    )
    assert (m["precision"], m["recall"], m["score"]) == (0.5, 1.0, pytest.approx(2 / 3))
