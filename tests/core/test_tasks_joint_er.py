from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_tasks_support import garbage, texts, through_tokenizer, word_spans

from core.tasks import TaskSpec, get_task
from core.tasks.augmented import key_string

LABELS = ["Peop", "Loc", "Org"]
RELATIONS = ["Work_For", "Kill", "Live_In"]
SPEC = TaskSpec("joint_er", tuple(LABELS), tuple(RELATIONS))
JER = get_task("joint_er")


def _decodable(entities: list[dict[str, Any]], text: str, relations: list[dict[str, Any]]) -> bool:
    """Whether each tail is what the reader picks: the nearest unused entity with the tail's text."""
    keys = [key_string(text[e["start"] : e["end"]]) for e in entities]
    for rel in relations:
        head, tail = rel["head"], rel["tail"]
        same = [k for k in range(len(entities)) if k != head and keys[k] == keys[tail]]
        taken = [
            r["tail"]
            for r in relations
            if r["head"] == head and r["type"] == rel["type"] and keys[r["tail"]] == keys[tail]
        ]
        start = entities[head]["start"]
        nearest = sorted(same, key=lambda k: (abs(entities[k]["start"] - start), entities[k]["start"]))
        if sorted(taken) != sorted(nearest[: len(taken)]):
            return False
    return True


@st.composite
def examples(draw: st.DrawFn, *, wordpiece: bool = False) -> dict[str, Any]:
    text = draw(texts(wordpiece=wordpiece))
    spans = draw(word_spans(text, LABELS))
    entities = [{"start": s, "end": e, "label": lab} for s, e, lab in spans]
    relations: list[dict[str, Any]] = []
    if len(entities) >= 2:
        pairs = draw(
            st.lists(
                st.tuples(
                    st.integers(0, len(entities) - 1),
                    st.integers(0, len(entities) - 1),
                    st.sampled_from(RELATIONS),
                ),
                max_size=4,
                unique=True,
            )
        )
        relations = [{"head": h, "tail": t, "type": y} for h, t, y in pairs if h != t]
    assume(_decodable(entities, text, relations))
    return {"text": text, "entities": entities, "relations": relations}


@settings(max_examples=150, deadline=None)
@given(examples())
def test_target_decodes_to_gold(example: dict[str, Any]) -> None:
    assert JER.validate(SPEC, [example]).problems == []
    decoded = JER.decode(JER.target(example, SPEC), example, SPEC)
    assert decoded.prediction == JER.gold(example)
    assert decoded.dropped == 0


@settings(max_examples=100, deadline=None)
@given(examples(wordpiece=True))
def test_target_through_wordpiece_decodes_to_gold(example: dict[str, Any]) -> None:
    generated = through_tokenizer(JER.target(example, SPEC))
    assert JER.decode(generated, example, SPEC).prediction == JER.gold(example), generated


@settings(max_examples=100, deadline=None)
@given(garbage(), texts())
def test_malformed_generation_never_raises(generated: str, text: str) -> None:
    decoded = JER.decode(generated, {"text": text}, SPEC)
    n = len(decoded.prediction["entities"])
    for rel in decoded.prediction["relations"]:
        assert 0 <= rel["head"] < n and 0 <= rel["tail"] < n and rel["head"] != rel["tail"]


TEXT = "John Wilkes Booth , who assassinated President Lincoln , was an actor ."
EXAMPLE = {
    "text": TEXT,
    "entities": [{"start": 37, "end": 54, "label": "Peop"}, {"start": 0, "end": 17, "label": "Peop"}],
    "relations": [{"head": 1, "tail": 0, "type": "Kill"}],
}


def test_target_writes_relations_in_the_head_group() -> None:
    assert JER.target(EXAMPLE, SPEC) == (
        "[ John Wilkes Booth | person | kills = President Lincoln ] , who assassinated "
        "[ President Lincoln | person ] , was an actor ."
    )
    gold = JER.gold(EXAMPLE)
    assert [e["text"] for e in gold["entities"]] == ["John Wilkes Booth", "President Lincoln"]
    assert gold["relations"] == [{"head": 0, "tail": 1, "type": "Kill"}]


@pytest.mark.parametrize(
    ("generated", "relations", "dropped"),
    [
        ("[ john wilkes booth | person | kills = lincoln ] who killed [ president lincoln | person ]", [], 1),
        ("[ john wilkes booth | person | shoots = president lincoln ] [ president lincoln | person ]", [], 1),
        ("[ john wilkes booth | person | kills ] [ president lincoln | person ]", [], 0),
        ("[ john wilkes booth | dog | kills = president lincoln ] [ president lincoln | person ]", [], 2),
        (
            "[ john wilkes booth | person | kills = president lincoln = x ] [ president lincoln | person ]",
            [],
            1,
        ),
        (
            "[ john wilkes booth | person | kills = president lincoln ] [ president lincoln | person ]",
            [(0, 1, "Kill")],
            0,
        ),
        ("[ john wilkes booth | person | kills = john wilkes booth ]", [], 1),  # no self-relation
    ],
)
def test_relation_reading(generated: str, relations: list[tuple[int, int, str]], dropped: int) -> None:
    decoded = JER.decode(generated, {"text": TEXT}, SPEC)
    assert [(r["head"], r["tail"], r["type"]) for r in decoded.prediction["relations"]] == relations
    assert decoded.dropped == dropped


def test_tail_is_the_nearest_entity_with_that_text() -> None:
    text = "Paris met Anna in Paris and Paris"
    generated = (
        "[ paris | location ] met [ anna | person | lives in = paris ] in [ paris | location ] "
        "and [ paris | location ]"
    )
    got = JER.decode(generated, {"text": text}, SPEC).prediction
    assert got["relations"] == [{"head": 1, "tail": 2, "type": "Live_In"}]


@pytest.mark.parametrize(
    ("relation", "loc", "fragment"),
    [
        ({"head": 0, "tail": 0, "type": "Kill"}, "/0/relations/0/tail", "same entity"),
        ({"head": 0, "tail": 5, "type": "Kill"}, "/0/relations/0/tail", "out of range"),
        ({"head": "0", "tail": 1, "type": "Kill"}, "/0/relations/0/head", "integer"),
        ({"head": 0, "tail": 1, "type": "Eats"}, "/0/relations/0/type", "not one of"),
        ("x", "/0/relations/0", "must be an object"),
    ],
)
def test_relation_problems(relation: Any, loc: str, fragment: str) -> None:
    res = JER.validate(SPEC, [{**EXAMPLE, "relations": [relation]}])
    assert [p.loc for p in res.problems] == [loc]
    assert fragment in res.problems[0].message


def test_duplicate_relation_is_a_problem() -> None:
    rel = {"head": 0, "tail": 1, "type": "Kill"}
    res = JER.validate(SPEC, [{**EXAMPLE, "relations": [rel, rel]}])
    assert [p.loc for p in res.problems] == ["/0/relations/1"]


def test_token_form_with_relations() -> None:
    raw = {
        "tokens": ["Anna", "lives", "in", "New", "York"],
        "tags": ["U-Peop", "O", "O", "B-Loc", "L-Loc"],
        "relations": [{"head": 0, "tail": 1, "type": "Live_In"}],
    }
    res = JER.validate(SPEC, [raw])
    assert res.problems == []
    assert res.examples[0]["entities"][1] == {"start": 14, "end": 22, "label": "Loc"}
    assert res.label_counts == {"Peop": 1, "Loc": 1, "Live_In": 1}
    assert (
        JER.target(res.examples[0], SPEC)
        == "[ Anna | person | lives in = New York ] lives in [ New York | location ]"
    )
