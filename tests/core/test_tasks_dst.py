from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tasks_support import garbage, through_tokenizer

from core.tasks import TaskSpec, get_task

SLOTS = ["hotel-area", "hotel-price range", "hotel-name", "train-day", "train-leave at", "taxi-to"]
SPEC = TaskSpec("dst", tuple(SLOTS))
DST = get_task("dst")
VALUE = st.text(st.sampled_from("abcxyzÉé0129:'-/ "), min_size=1, max_size=12).map(
    lambda v: " ".join(v.split())
)


@st.composite
def examples(draw: st.DrawFn) -> dict[str, Any]:
    state = draw(
        st.dictionaries(st.sampled_from(SLOTS), VALUE.filter(lambda v: v and v != "not given"), max_size=4)
    )
    turns = draw(
        st.lists(st.text(max_size=20), min_size=1, max_size=3).filter(lambda t: any(x.strip() for x in t))
    )
    return {"turns": turns, "state": state}


EXAMPLE = {
    "turns": ["i need a cheap hotel", "in which area?", "the north"],
    "state": {"hotel-price range": "cheap", "hotel-area": "north"},
}


def test_source_and_target() -> None:
    assert DST.source(EXAMPLE, SPEC) == "i need a cheap hotel ; in which area? ; the north"
    assert DST.target(EXAMPLE, SPEC) == (
        "[belief] hotel area north , hotel name not given , hotel price range cheap [belief]"
    )
    assert DST.target({"turns": ["hi"], "state": {}}, SPEC) == "[belief] [belief]"


@settings(max_examples=150, deadline=None)
@given(examples())
def test_target_decodes_to_gold(example: dict[str, Any]) -> None:
    assert DST.validate(SPEC, [example]).problems == []
    decoded = DST.decode(DST.target(example, SPEC), example, SPEC)
    assert decoded.prediction == DST.gold(example)
    assert decoded.dropped == 0


@settings(max_examples=100, deadline=None)
@given(examples())
def test_target_through_wordpiece_scores_as_gold(example: dict[str, Any]) -> None:
    decoded = DST.decode(through_tokenizer(DST.target(example, SPEC)), example, SPEC)
    assert set(decoded.prediction["state"]) == set(example["state"])
    assert DST.metric(SPEC, [DST.gold(example)], [decoded.prediction])["score"] == 1.0


@settings(max_examples=100, deadline=None)
@given(garbage())
def test_malformed_generation_never_raises(generated: str) -> None:
    decoded = DST.decode(generated, EXAMPLE, SPEC)
    assert set(decoded.prediction["state"]) <= set(SLOTS)


def test_longest_slot_name_wins_and_junk_is_counted() -> None:
    spec = TaskSpec("dst", ("hotel-book", "hotel-book day"))
    decoded = DST.decode(
        "[belief] hotel book day monday , hotel book yes , nonsense , hotel book [belief]", {}, spec
    )
    assert decoded.prediction == {"state": {"hotel-book": "yes", "hotel-book day": "monday"}}
    assert decoded.dropped == 2


@pytest.mark.parametrize(
    ("example", "loc"),
    [
        ({"turns": [], "state": {}}, "/0/turns"),
        ({"turns": ["a", 3], "state": {}}, "/0/turns/1"),
        ({"turns": ["a"], "state": {"spa-area": "x"}}, "/0/state/spa-area"),
        ({"turns": ["a"], "state": {"hotel-area": ""}}, "/0/state/hotel-area"),
        ({"turns": ["a"], "state": {"hotel-area": "north, east"}}, "/0/state/hotel-area"),
        ({"turns": ["a"], "state": {"hotel-area": "Not Given"}}, "/0/state/hotel-area"),
        ({"turns": ["a"], "state": []}, "/0/state"),
    ],
)
def test_problems(example: dict[str, Any], loc: str) -> None:
    assert [p.loc for p in DST.validate(SPEC, [example]).problems] == [loc]


def test_metric_and_inputs() -> None:
    golds = [{"state": {"hotel-area": "North"}}, {"state": {}}, {"state": {"taxi-to": "x"}}]
    preds = [{"state": {"hotel-area": "north "}}, {"state": {"hotel-area": "x"}}, {"state": {"taxi-to": "x"}}]
    assert DST.metric(SPEC, golds, preds) == {"joint_goal_accuracy": 2 / 3, "n": 3, "score": 2 / 3}
    assert [p.loc for p in DST.validate_inputs([{"turns": ["ab", "cd"]}, {"turns": "x"}], 5)] == [
        "/0/turns",
        "/1/turns",
    ]
