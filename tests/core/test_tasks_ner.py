from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tasks_support import garbage, texts, through_tokenizer, word_spans

from core.tasks import TaskSpec, get_task

LABELS = ["PER", "LOC", "creative-work", "ORG"]
SPEC = TaskSpec("ner", tuple(LABELS))
NER = get_task("ner")


@st.composite
def examples(draw: st.DrawFn, *, wordpiece: bool = False) -> dict[str, Any]:
    text = draw(texts(wordpiece=wordpiece))
    spans = draw(word_spans(text, LABELS))
    return {"text": text, "entities": [{"start": s, "end": e, "label": lab} for s, e, lab in spans]}


@settings(max_examples=200, deadline=None)
@given(examples())
def test_target_decodes_to_gold(example: dict[str, Any]) -> None:
    assert NER.validate(SPEC, [example]).problems == []
    decoded = NER.decode(NER.target(example, SPEC), example, SPEC)
    assert decoded.prediction == NER.gold(example)
    assert decoded.dropped == 0
    assert len(decoded.spans_in_output) == len(example["entities"])


@settings(max_examples=150, deadline=None)
@given(examples(wordpiece=True))
def test_target_through_wordpiece_decodes_to_gold(example: dict[str, Any]) -> None:
    generated = through_tokenizer(NER.target(example, SPEC))
    decoded = NER.decode(generated, example, SPEC)
    assert decoded.prediction == NER.gold(example), generated
    assert decoded.dropped == 0


@settings(max_examples=200, deadline=None)
@given(garbage(), texts())
def test_malformed_generation_never_raises(generated: str, text: str) -> None:
    decoded = NER.decode(generated, {"text": text}, SPEC)
    assert decoded.dropped >= 0
    for entity, (start, end) in zip(decoded.prediction["entities"], decoded.spans_in_output, strict=True):
        assert text[entity["start"] : entity["end"]] == entity["text"]
        assert entity["label"] in LABELS
        assert 0 <= start < end <= len(generated)


def test_spans_in_output_cover_the_groups() -> None:
    ex = {"text": "Barack Obama visited Paris.", "entities": []}
    generated = "[ barack obama | person ] visited [ paris | location ]."
    decoded = NER.decode(generated, ex, SPEC)
    assert [generated[s:e] for s, e in decoded.spans_in_output] == [
        "[ barack obama | person ]",
        "[ paris | location ]",
    ]
    assert decoded.prediction["entities"] == [
        {"start": 0, "end": 12, "text": "Barack Obama", "label": "PER"},
        {"start": 21, "end": 26, "text": "Paris", "label": "LOC"},
    ]


@pytest.mark.parametrize(
    ("generated", "entities", "dropped"),
    [
        ("", [], 0),
        ("[ ] | = [[", [], 3),  # one empty group, two unclosed ones
        ("[ paris | city ] is nice", [], 1),  # label outside the task's set
        ("[ london | location ] is nice", [], 1),  # nothing aligns
        ("[ paris | location", [(0, 5, "LOC")], 0),  # unclosed at the end
        ("[ paris location ]", [], 1),  # missing |
        ("] paris | location ] is nice [", [], 1),
        ("[ [ paris | location ] | location ] is nice", [(0, 5, "LOC")], 0),  # duplicate removed
        (
            "[ paris | location ] [ paris | location ] is nice",
            [(0, 5, "LOC")],
            1,
        ),  # the repeat aligns nowhere
        ("[ paris | person | location ] is nice", [(0, 5, "PER")], 0),
        ("[ pariss | location ] is nice", [(0, 5, "LOC")], 0),  # a typo still aligns
    ],
)
def test_malformed_cases(generated: str, entities: list[tuple[int, int, str]], dropped: int) -> None:
    decoded = NER.decode(generated, {"text": "Paris is nice"}, SPEC)
    assert [(e["start"], e["end"], e["label"]) for e in decoded.prediction["entities"]] == entities
    assert decoded.dropped == dropped


def test_paraphrase_aligns_by_edit_distance() -> None:
    text = "Yesterday, Barack Obama visited the city of Paris in France."
    generated = "barack obama went to [ paris | location ] in [ france | location ]"
    got = NER.decode(generated, {"text": text}, SPEC).prediction["entities"]
    assert [(e["text"], e["label"]) for e in got] == [("Paris", "LOC"), ("France", "LOC")]


def test_marker_characters_in_text_are_escaped() -> None:
    ex = {"text": "a=b [x] | y", "entities": [{"start": 0, "end": 3, "label": "ORG"}]}
    target = NER.target(ex, SPEC)
    assert target == "[ a : b | organization ] ( x ) / y"
    assert NER.decode(target, ex, SPEC).prediction == NER.gold(ex)


def test_token_form_normalised_to_text() -> None:
    raw = [{"tokens": ["Barack", "Obama", "in", "Paris"], "tags": ["B-PER", "I-PER", "O", "U-LOC"]}]
    res = NER.validate(SPEC, raw)
    assert res.problems == []
    assert res.examples == [
        {
            "text": "Barack Obama in Paris",
            "entities": [{"start": 0, "end": 12, "label": "PER"}, {"start": 16, "end": 21, "label": "LOC"}],
        }
    ]
    assert res.label_counts == {"PER": 1, "LOC": 1}


@pytest.mark.parametrize(
    ("tags", "spans", "warned"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], [(0, 2, "PER"), (3, 4, "LOC")], False),  # BIO
        (["B-PER", "L-PER", "O", "U-LOC"], [(0, 2, "PER"), (3, 4, "LOC")], False),  # BILOU
        (["B-PER", "E-PER", "O", "S-LOC"], [(0, 2, "PER"), (3, 4, "LOC")], False),  # BIOES
        (["I-PER", "I-PER", "O", "I-LOC"], [(0, 2, "PER"), (3, 4, "LOC")], True),  # IOB1-like
        (["B-PER", "I-LOC", "O", "O"], [(0, 1, "PER"), (1, 2, "LOC")], True),  # type change
        (["B-PER", "B-PER", "O", "O"], [(0, 1, "PER"), (1, 2, "PER")], False),
    ],
)
def test_tag_schemes(tags: list[str], spans: list[tuple[int, int, str]], warned: bool) -> None:
    tokens = ["aa", "bb", "cc", "dd"]
    res = NER.validate(SPEC, [{"tokens": tokens, "tags": tags}])
    assert res.problems == []
    got = [(e["start"] // 3, (e["end"] + 1) // 3, e["label"]) for e in res.examples[0]["entities"]]
    assert got == spans
    assert bool(res.warnings) == warned


@pytest.mark.parametrize(
    ("example", "loc", "fragment"),
    [
        ("text", "/0", "must be an object"),
        ({"entities": []}, "/0/text", "missing"),
        ({"text": 5}, "/0/text", "must be a string"),
        ({"text": "   "}, "/0/text", "empty"),
        ({"text": "abc", "entities": 3}, "/0/entities", "must be a list"),
        (
            {"text": "abc", "entities": [{"start": 0, "end": 57, "label": "PER"}]},
            "/0/entities/0/end",
            "past the end",
        ),
        (
            {"text": "abc", "entities": [{"start": -1, "end": 2, "label": "PER"}]},
            "/0/entities/0/start",
            "negative",
        ),
        (
            {"text": "abc", "entities": [{"start": 2, "end": 1, "label": "PER"}]},
            "/0/entities/0/end",
            "greater than",
        ),
        (
            {"text": "abc", "entities": [{"start": 0, "end": 1.0, "label": "PER"}]},
            "/0/entities/0/end",
            "integer",
        ),
        (
            {"text": "abc", "entities": [{"start": True, "end": 1, "label": "PER"}]},
            "/0/entities/0/start",
            "integer",
        ),
        ({"text": "abc", "entities": [{"end": 1, "label": "PER"}]}, "/0/entities/0/start", "missing"),
        (
            {"text": "abc", "entities": [{"start": 0, "end": 1, "label": "DOG"}]},
            "/0/entities/0/label",
            "not one of",
        ),
        ({"text": "abc", "entities": [{"start": 0, "end": 1}]}, "/0/entities/0/label", "must be a string"),
        (
            {"text": "a  b", "entities": [{"start": 1, "end": 3, "label": "PER"}]},
            "/0/entities/0",
            "whitespace",
        ),
        (
            {
                "text": "ab cd",
                "entities": [{"start": 0, "end": 2, "label": "PER"}, {"start": 0, "end": 2, "label": "PER"}],
            },
            "/0/entities/1",
            "duplicate",
        ),
        (
            {
                "text": "ab cd",
                "entities": [{"start": 0, "end": 5, "label": "PER"}, {"start": 3, "end": 5, "label": "LOC"}],
            },
            "/0/entities/1",
            "overlaps",
        ),
        ({"tokens": ["a", "b"], "tags": ["O"]}, "/0/tags", "1 tags for 2 tokens"),
        ({"tokens": ["a", ""], "tags": ["O", "O"]}, "/0/tokens/1", "non-empty"),
        ({"tokens": ["a", "b"], "tags": ["O", "X-PER"]}, "/0/tags/1", "is not O or"),
        ({"tokens": ["a", "b"], "tags": ["O", "B-DOG"]}, "/0/tags/1", "not one of"),
        ({"text": "a", "tokens": ["a"], "tags": ["O"]}, "/0", "not both"),
    ],
)
def test_each_bad_input_gives_one_problem(example: Any, loc: str, fragment: str) -> None:
    res = NER.validate(SPEC, [example])
    assert len(res.problems) == 1, res.problems
    assert res.problems[0].loc == loc
    assert fragment in res.problems[0].message
    assert res.examples == []


def test_past_end_message_matches_the_api_contract() -> None:
    text = "x" * 52
    res = NER.validate(SPEC, [{"text": text, "entities": [{"start": 0, "end": 57, "label": "PER"}]}])
    assert res.problems[0].message == "end 57 is past the end of the text (52 chars)"


def test_every_problem_is_listed_and_capped() -> None:
    bad = {
        "text": "abc",
        "entities": [{"start": 0, "end": 9, "label": "DOG"}, {"start": 0, "end": 1, "label": "DOG"}],
    }
    res = NER.validate(SPEC, [{"text": "fine"}, bad, bad])
    assert [p.loc for p in res.problems] == [
        "/1/entities/0/end",
        "/1/entities/1/label",
        "/2/entities/0/end",
        "/2/entities/1/label",
    ]
    assert len(res.examples) == 1
    many = NER.validate(SPEC, [bad] * 80)
    assert len(many.problems) == 100
    assert any("60 more problems" in w for w in many.warnings)


def test_whitespace_is_trimmed_with_a_warning() -> None:
    res = NER.validate(SPEC, [{"text": "in  Paris ", "entities": [{"start": 3, "end": 10, "label": "LOC"}]}])
    assert res.problems == []
    assert res.examples[0]["entities"] == [{"start": 4, "end": 9, "label": "LOC"}]
    assert any("trimmed" in w for w in res.warnings)


def test_validate_inputs() -> None:
    problems = NER.validate_inputs(["ok", {"text": "fine"}, 3, {"text": 4}, "x" * 11], max_chars=10)
    assert [p.loc for p in problems] == ["/2", "/3/text", "/4"]
    assert NER.input_from_text("hi") == {"text": "hi"}
    assert NER.text_key == "text"
    assert NER.candidates({"text": "x"}, SPEC) is None
