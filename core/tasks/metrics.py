"""Scores as plain JSON-able dicts; each has a top-level "score" used for model selection."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

from .augmented import key_string


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def prf(tp: int, n_pred: int, n_gold: int) -> dict[str, Any]:
    precision, recall = _ratio(tp, n_pred), _ratio(tp, n_gold)
    f1 = _ratio(2 * tp, n_pred + n_gold)
    return {"precision": precision, "recall": recall, "f1": f1, "support": n_gold}


def micro_prf(
    golds: Iterable[set[tuple[Hashable, ...]]],
    preds: Iterable[set[tuple[Hashable, ...]]],
    labels: Sequence[str],
    label_of: Callable[[tuple[Hashable, ...]], str],
) -> dict[str, Any]:
    """Micro P/R/F1 over sets of items per example, plus the same per label."""
    tp: Counter[str] = Counter()
    n_gold: Counter[str] = Counter()
    n_pred: Counter[str] = Counter()
    for gold, pred in zip(golds, preds, strict=True):
        tp.update(label_of(item) for item in gold & pred)
        n_gold.update(label_of(item) for item in gold)
        n_pred.update(label_of(item) for item in pred)
    all_labels = list(labels) + sorted((set(n_gold) | set(n_pred)) - set(labels))
    out = prf(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values()))
    out["per_label"] = {label: prf(tp[label], n_pred[label], n_gold[label]) for label in all_labels}
    out["score"] = out["f1"]
    return out


def _span_set(spans: Sequence[Mapping[str, Any]]) -> set[tuple[Hashable, ...]]:
    return {(str(s["label"]), int(s["start"]), int(s["end"])) for s in spans}


def span_metric(
    labels: Sequence[str], golds: Sequence[Mapping[str, Any]], preds: Sequence[Mapping[str, Any]], key: str
) -> dict[str, Any]:
    """Micro P/R/F1 over (label, start, end) of ``key`` ("entities" or "arguments")."""
    return micro_prf(
        [_span_set(g.get(key) or []) for g in golds],
        [_span_set(p.get(key) or []) for p in preds],
        labels,
        lambda item: str(item[0]),
    )


def _relation_set(example: Mapping[str, Any]) -> set[tuple[Hashable, ...]]:
    entities = example.get("entities") or []
    out: set[tuple[Hashable, ...]] = set()
    for rel in example.get("relations") or []:
        head, tail = entities[int(rel["head"])], entities[int(rel["tail"])]
        out.add(
            (
                str(rel["type"]),
                (int(head["start"]), int(head["end"]), str(head["label"])),
                (int(tail["start"]), int(tail["end"]), str(tail["label"])),
            )
        )
    return out


def joint_er_metric(
    labels: Sequence[str],
    relation_labels: Sequence[str],
    golds: Sequence[Mapping[str, Any]],
    preds: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """Entity P/R/F1 and strict relation P/R/F1 (type plus both typed spans)."""
    entity = span_metric(labels, golds, preds, "entities")
    relation = micro_prf(
        [_relation_set(g) for g in golds],
        [_relation_set(p) for p in preds],
        relation_labels,
        lambda i: str(i[0]),
    )
    return {"entity": entity, "relation": relation, "f1": relation["f1"], "score": relation["f1"]}


def accuracy(
    golds: Sequence[Mapping[str, Any]], preds: Sequence[Mapping[str, Any]], key: str
) -> dict[str, Any]:
    n = len(golds)
    correct = sum(
        1 for g, p in zip(golds, preds, strict=True) if p.get(key) is not None and p.get(key) == g.get(key)
    )
    value = _ratio(correct, n)
    return {"accuracy": value, "n": n, "score": value}


def _state_set(state: Mapping[str, Any]) -> frozenset[tuple[str, str]]:
    return frozenset(
        (str(slot), key_string(str(value))) for slot, value in state.items() if key_string(str(value))
    )


def joint_goal_accuracy(
    golds: Sequence[Mapping[str, Any]], preds: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Share of dialogues whose predicted filled slot-value set equals the gold one (case-insensitive)."""
    n = len(golds)
    correct = sum(
        1
        for g, p in zip(golds, preds, strict=True)
        if _state_set(g.get("state") or {}) == _state_set(p.get("state") or {})
    )
    value = _ratio(correct, n)
    return {"joint_goal_accuracy": value, "n": n, "score": value}
