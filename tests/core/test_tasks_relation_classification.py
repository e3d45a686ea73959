from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tasks_support import garbage, texts, through_tokenizer, word_spans

from core.tasks import TaskSpec, get_task

LABELS = ["founded_by", "Located_In", "sibling"]
SPEC = TaskSpec("relation_classification", tuple(LABELS), label_words={"sibling": "brother or sister of"})
RC = get_task("relation_classification")
EXAMPLE = {
    "text": "Jobs founded Apple.",
    "head": {"start": 13, "end": 18},
    "tail": {"start": 0, "end": 4},
    "relation": "founded_by",
}


@st.composite
def examples(draw: st.DrawFn, *, wordpiece: bool = False) -> dict[str, Any]:
    text = draw(texts(wordpiece=wordpiece, min_words=2))
    spans = draw(word_spans(text, ["x"]))
    head = draw(st.sampled_from(spans)) if spans else (0, len(text), "x")
    tail = draw(st.sampled_from(spans)) if spans else head
    return {
        "text": text,
        "head": {"start": head[0], "end": head[1]},
        "tail": {"start": tail[0], "end": tail[1]},
        "relation": draw(st.sampled_from(LABELS)),
    }


def test_source_target_and_candidates() -> None:
    assert RC.source(EXAMPLE, SPEC) == (
        "[ Jobs ] founded [ Apple ] . The relationship between [ Apple ] and [ Jobs ] is"
    )
    assert RC.target(EXAMPLE, SPEC) == "relationship between [ Apple ] and [ Jobs ] = founded by"
    inp = {k: EXAMPLE[k] for k in ("text", "head", "tail")}
    candidates = RC.candidates(inp, SPEC)
    assert candidates is not None and len(candidates) == 3
    assert candidates[2].endswith("= brother or sister of")
    assert [RC.label_of_candidate(i, SPEC) for i in range(3)] == LABELS
    assert RC.text_key is None


@settings(max_examples=100, deadline=None)
@given(examples(), st.booleans())
def test_target_decodes_to_gold(example: dict[str, Any], wordpiece: bool) -> None:
    target = RC.target(example, SPEC)
    generated = through_tokenizer(target) if wordpiece else target
    decoded = RC.decode(generated, example, SPEC)
    assert decoded.prediction == RC.gold(example)
    assert decoded.dropped == 0


@settings(max_examples=100, deadline=None)
@given(garbage())
def test_malformed_generation_never_raises(generated: str) -> None:
    decoded = RC.decode(generated, EXAMPLE, SPEC)
    assert decoded.prediction["relation"] in [*LABELS, None]
    assert decoded.dropped == (decoded.prediction["relation"] is None)


@pytest.mark.parametrize(
    ("generated", "relation"),
    [
        ("relationship between [ apple ] and [ jobs ] = Founded  By", "founded_by"),
        ("= located in", "Located_In"),
        ("founded by", "founded_by"),
        ("relationship between [ apple ] and [ jobs ] = founder", None),
        ("", None),
    ],
)
def test_decode_cases(generated: str, relation: str | None) -> None:
    assert RC.decode(generated, EXAMPLE, SPEC).prediction == {"relation": relation}


def test_problems() -> None:
    bad = [
        {**EXAMPLE, "relation": "x"},
        {**EXAMPLE, "head": {"start": 0, "end": 50}},
        {"text": "a", "tail": {"start": 0, "end": 1}},
    ]
    res = RC.validate(SPEC, bad)
    assert [p.loc for p in res.problems] == ["/0/relation", "/1/head/end", "/2/head"]
    assert RC.validate(SPEC, [EXAMPLE]).label_counts == {"founded_by": 1}
    assert [p.loc for p in RC.validate_inputs([EXAMPLE, {"text": "a"}], max_chars=100)] == [
        "/1/head",
        "/1/tail",
    ]
