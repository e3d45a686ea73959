from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tasks_support import texts

from core.errors import ConfigError, CoreError, Problem, UnknownTask
from core.tasks import TASKS, Task, TaskSpec, Verbaliser, get_task
from core.tasks.augmented import align, analyse, key_string, parse, split_words, write
from core.tasks.verbaliser import default_words


def test_registry_lists_the_five_tasks() -> None:
    assert set(TASKS) == {"ner", "joint_er", "relation_classification", "srl", "dst"}
    for name, task in TASKS.items():
        assert isinstance(task, Task)
        assert task.name == name
        assert get_task(name) is task
    assert [n for n, t in TASKS.items() if t.text_key == "text"] == ["ner", "joint_er"]


def test_unknown_task_lists_known_names() -> None:
    with pytest.raises(UnknownTask, match="known: dst, joint_er, ner"):
        get_task("pos")
    assert issubclass(UnknownTask, CoreError)


def test_spec_round_trips_and_is_hashable() -> None:
    d = {
        "type": "joint_er",
        "labels": ["Peop", "Loc"],
        "relation_labels": ["Live_In"],
        "label_words": {"Peop": "human"},
    }
    spec = TaskSpec.from_dict(d)
    assert spec.labels == ("Peop", "Loc")
    assert spec.label_words == {"Peop": "human"}
    assert spec.to_dict() == d
    assert TaskSpec.from_dict(spec.to_dict()) == spec
    assert hash(spec) == hash(TaskSpec.from_dict(d))
    assert {spec: 1}[TaskSpec.from_dict(d)] == 1
    ner = TaskSpec.from_dict({"type": "ner", "labels": ["PER"]})
    assert ner.to_dict() == {"type": "ner", "labels": ["PER"], "label_words": {}}


def test_spec_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        TaskSpec.from_dict(
            {"type": "nerr", "labels": ["a", "", "a", 3], "label_words": {"zz": "x"}, "colour": "red"}
        )
    locs = [p.loc for p in info.value.problems]
    assert locs == ["/colour", "/type", "/labels/1", "/labels/2", "/labels/3", "/label_words/zz"]
    assert "known: dst" in info.value.problems[1].message


@pytest.mark.parametrize(
    ("d", "loc"),
    [
        ({"type": "ner"}, "/labels"),
        ({"type": "ner", "labels": []}, "/labels"),
        ({"type": "ner", "labels": "PER"}, "/labels"),
        ({"type": "joint_er", "labels": ["PER"]}, "/relation_labels"),
        ({"type": "ner", "labels": ["PER"], "relation_labels": ["x"]}, "/relation_labels"),
        ({"type": "ner", "labels": ["PER"], "label_words": {"PER": ""}}, "/label_words/PER"),
        ({"type": "ner", "labels": ["PER"], "label_words": {"PER": "a | b"}}, "/label_words/PER"),
        ({"type": "ner", "labels": ["PER", "Peop"]}, "/labels/1"),  # both read "person"
        ({"type": "ner", "labels": ["PER", "LOC"], "label_words": {"LOC": "Person"}}, "/label_words/LOC"),
        ({"type": "ner", "labels": ["|||"]}, "/labels/0"),
        (
            {"type": "joint_er", "labels": ["PER"], "relation_labels": ["Live_In", "lives-in"]},
            "/relation_labels/1",
        ),
        (
            {"type": "dst", "labels": ["hotel/area"], "label_words": {"hotel/area": "a=b"}},
            "/label_words/hotel~1area",
        ),
    ],
)
def test_spec_problem_classes(d: dict[str, object], loc: str) -> None:
    with pytest.raises(ConfigError) as info:
        TaskSpec.from_dict(d)
    assert [p.loc for p in info.value.problems] == [loc]
    assert isinstance(info.value.problems[0], Problem)


def test_default_words() -> None:
    assert default_words("PER") == "person"
    assert default_words("Work_For") == "works for"
    assert default_words("ARGM-TMP") == "temporal"
    assert default_words("creative-work") == "creative work"
    assert default_words("hotel-price range") == "hotel price range"
    assert default_words("foundedBy") == "founded by"
    assert default_words("HTTPServer_Name") == "http server name"


def test_verbaliser_is_a_case_insensitive_bijection() -> None:
    v = Verbaliser(["PER", "Work_For", "x"], {"x": "Écrit Par"})
    assert v.words("Work_For") == "works for"
    assert v.label("  Works   FOR ") == "Work_For"
    assert v.label("ecrit par") == "x"
    assert v.label("works") is None
    assert v.problems("/labels") == []


def test_split_words_offsets() -> None:
    text = "Obama's  e\u0301te\u0301 東京 (U.S.)😀ok 1½"
    words = split_words(text)
    assert [w.text for w in words] == [
        "Obama",
        "'",
        "s",
        "e\u0301te\u0301",
        "東",
        "京",
        "(",
        "U",
        ".",
        "S",
        ".",
        ")",
        "😀",
        "ok",
        "1½",
    ]
    assert all(text[w.start : w.end] == w.text for w in words)


def test_keys_normalise_case_accents_and_compatibility_forms() -> None:
    assert key_string("São  PAULO") == "sao paulo"
    assert key_string("ﬁne…") == "fine . . ."
    assert key_string("a=b") == key_string("a : b")
    assert analyse("…").key_word == (0, 0, 0)


def test_align_prefers_matches_and_tolerates_edits() -> None:
    source = tuple(["the", "cat", "ate", "the", "fish"])
    assert align(["the", "cat", "ate", "the", "fish"], source) == [0, 1, 2, 3, 4]
    assert align(["cat", "eats", "fish"], source) == [1, None, 4]
    assert align(["cat", "atee", "fish"], source) == [1, 2, 4]  # a near-copy substitution still aligns
    assert align([], source) == []
    assert align(["x"], ()) == [None]


def test_parse_reads_groups_and_segments() -> None:
    parsed = parse("[ a b | x | r = c d ] e [ f")
    assert parsed.keys == ["a", "b", "e", "f"]
    assert [(g.first, g.last, g.segments) for g in parsed.groups] == [
        (0, 2, [" x ", " r = c d "]),
        (3, 4, []),
    ]
    assert (parsed.groups[1].out_start, parsed.groups[1].out_end) == (24, 27)


def test_write_brackets_words() -> None:
    from core.tasks.augmented import Group

    words = split_words("a b c d")
    assert (
        write(words, [Group(0, 2, ("x",)), Group(3, 4, ("y", "r = a"))]) == "[ a b | x ] c [ d | y | r = a ]"
    )
    assert write(words, [Group(0, 3, ()), Group(1, 2, ())]) == "[ a [ b ] c ] d"


@settings(max_examples=100, deadline=None)
@given(texts(), st.text(max_size=30))
def test_parse_and_align_never_raise(text: str, generated: str) -> None:
    parsed = parse(generated)
    source = analyse(text)
    mapping = align(parsed.keys, source.keys)
    assert len(mapping) == len(parsed.keys)
    hits = [m for m in mapping if m is not None]
    assert hits == sorted(set(hits))
