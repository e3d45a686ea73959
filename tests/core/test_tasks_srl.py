from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_tasks_support import garbage, texts, through_tokenizer, usable, word_spans

from core.tasks import TaskSpec, get_task
from core.tasks.augmented import split_words

LABELS = ["ARG0", "ARG1", "ARGM-TMP"]
SPEC = TaskSpec("srl", tuple(LABELS))
SRL = get_task("srl")


@st.composite
def examples(draw: st.DrawFn, *, wordpiece: bool = False) -> dict[str, Any]:
    text = draw(texts(wordpiece=wordpiece, min_words=2))
    spans = draw(word_spans(text, ["P", *LABELS]))
    predicates = [s for s in spans if s[2] == "P"]
    assume(predicates)
    pred = predicates[0]
    arguments = [{"start": s, "end": e, "label": lab} for s, e, lab in spans if lab != "P"]
    return {"text": text, "predicate": {"start": pred[0], "end": pred[1]}, "arguments": arguments}


@settings(max_examples=150, deadline=None)
@given(examples())
def test_target_decodes_to_gold(example: dict[str, Any]) -> None:
    assert SRL.validate(SPEC, [example]).problems == []
    decoded = SRL.decode(SRL.target(example, SPEC), example, SPEC)
    assert decoded.prediction == SRL.gold(example)
    assert decoded.dropped == 0
    assert len(decoded.spans_in_output) == len(example["arguments"])


@settings(max_examples=100, deadline=None)
@given(examples(wordpiece=True))
def test_target_through_wordpiece_decodes_to_gold(example: dict[str, Any]) -> None:
    generated = through_tokenizer(SRL.target(example, SPEC))
    assert SRL.decode(generated, example, SPEC).prediction == SRL.gold(example), generated


@settings(max_examples=100, deadline=None)
@given(garbage(), texts())
def test_malformed_generation_never_raises(generated: str, text: str) -> None:
    words = [w for w in split_words(text) if usable(w)]
    assume(words)
    inp = {"text": text, "predicate": {"start": words[0].start, "end": words[0].end}}
    decoded = SRL.decode(generated, inp, SPEC)
    assert all(a["label"] in LABELS for a in decoded.prediction["arguments"])


EXAMPLE = {
    "text": "The cat ate the fish yesterday.",
    "predicate": {"start": 8, "end": 11},
    "arguments": [
        {"start": 0, "end": 7, "label": "ARG0"},
        {"start": 12, "end": 20, "label": "ARG1"},
        {"start": 21, "end": 30, "label": "ARGM-TMP"},
    ],
}


def test_source_and_target_format() -> None:
    assert SRL.source(EXAMPLE, SPEC) == "The cat [ ate ] the fish yesterday ."
    assert SRL.target(EXAMPLE, SPEC) == (
        "[ The cat | first argument ] ate [ the fish | second argument ] [ yesterday | temporal ] ."
    )
    with pytest.raises(ValueError):
        SRL.input_from_text("The cat ate.")


@pytest.mark.parametrize(
    ("change", "loc", "fragment"),
    [
        ({"predicate": {"start": 8, "end": 99}}, "/0/predicate/end", "past the end"),
        ({"predicate": None}, "/0/predicate", "must be an object"),
        (
            {"arguments": [{"start": 4, "end": 11, "label": "ARG0"}]},
            "/0/arguments/0",
            "overlaps the predicate",
        ),
        (
            {"arguments": [{"start": 0, "end": 7, "label": "ARG0"}, {"start": 4, "end": 7, "label": "ARG1"}]},
            "/0/arguments/1",
            "overlaps",
        ),
        ({"arguments": [{"start": 0, "end": 7, "label": "ARG9"}]}, "/0/arguments/0/label", "not one of"),
    ],
)
def test_problems(change: dict[str, Any], loc: str, fragment: str) -> None:
    res = SRL.validate(SPEC, [{**EXAMPLE, **change}])
    assert [p.loc for p in res.problems] == [loc]
    assert fragment in res.problems[0].message


def test_validate_inputs() -> None:
    ok = {"text": "The cat ate.", "predicate": {"start": 8, "end": 11}}
    bad = {"text": "The cat ate.", "predicate": {"start": 8, "end": 30}}
    assert [p.loc for p in SRL.validate_inputs([ok, bad, "text"], max_chars=100)] == [
        "/1/predicate/end",
        "/2",
    ]
    assert [p.loc for p in SRL.validate_inputs([ok], max_chars=5)] == ["/0/text"]
