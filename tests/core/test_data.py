from __future__ import annotations

from pathlib import Path

import pytest

from core.data import conll04_labels, read_conll, read_conll04, wnut17_labels
from core.tasks import TaskSpec, get_task

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
if not DATA.is_dir():
    DATA = Path("/work/shared/datasets")
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="shared datasets not present")


@pytest.mark.parametrize(
    ("name", "n"),
    [("wnut17train.conll", 3394), ("emerging.dev.conll", 1009), ("emerging.test.annotated", 1287)],
)
def test_wnut17_reads_and_validates(name: str, n: int) -> None:
    raw = read_conll(DATA / "wnut17" / name)
    assert len(raw) == n
    spec = TaskSpec("ner", tuple(wnut17_labels()))
    ner = get_task("ner")
    res = ner.validate(spec, raw)
    assert res.problems == []
    assert len(res.examples) == n
    assert set(res.label_counts) == set(wnut17_labels())
    for example in res.examples[:300]:
        assert ner.decode(ner.target(example, spec), example, spec).prediction == ner.gold(example)


@pytest.mark.parametrize(("split", "n"), [("train", 922), ("dev", 231), ("test", 288)])
def test_conll04_reads_and_validates(split: str, n: int) -> None:
    raw = read_conll04(DATA / "conll04" / f"conll04_{split}.json")
    assert len(raw) == n
    entity_labels, relation_labels = conll04_labels()
    spec = TaskSpec("joint_er", tuple(entity_labels), tuple(relation_labels))
    task = get_task("joint_er")
    res = task.validate(spec, raw)
    assert res.problems == []
    assert len(res.examples) == n
    assert set(res.label_counts) == set(entity_labels) | set(relation_labels)
    # Relation tails are written by surface text; the only losses are same-text entities farther away.
    exact = sum(
        task.decode(task.target(ex, spec), ex, spec).prediction == task.gold(ex) for ex in res.examples
    )
    assert exact >= 0.98 * n


def test_read_conll_handles_tab_only_breaks(tmp_path: Path) -> None:
    path = tmp_path / "x.conll"
    path.write_text("a\tB-person\nb\tI-person\n\t\n\nc\tO\n", encoding="utf-8")
    assert read_conll(path) == [
        {"tokens": ["a", "b"], "tags": ["B-person", "I-person"]},
        {"tokens": ["c"], "tags": ["O"]},
    ]
    path.write_text("broken line\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"x\.conll:1"):
        read_conll(path)
