"""Readers for the shared datasets (WNUT-17 CoNLL columns, CoNLL04 JSON) into raw task examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WNUT17_LABELS = ("person", "location", "group", "creative-work", "corporation", "product")
CONLL04_ENTITY_LABELS = ("Peop", "Loc", "Org", "Other")
CONLL04_RELATION_LABELS = ("Work_For", "Kill", "OrgBased_In", "Live_In", "Located_In")


def read_conll(path: str | Path) -> list[dict[str, Any]]:
    """``token<TAB>tag`` lines, a blank (or whitespace-only) line between sentences -> ``{"tokens","tags"}``.

    The tag is the last tab-separated column, so files with extra middle columns read too.
    """
    examples: list[dict[str, Any]] = []
    tokens: list[str] = []
    tags: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                if tokens:
                    examples.append({"tokens": tokens, "tags": tags})
                    tokens, tags = [], []
                continue
            columns = line.rstrip("\r\n").split("\t")
            if len(columns) < 2:
                raise ValueError(f"{path}:{number}: expected 'token<TAB>tag', got {line.rstrip()!r}")
            tokens.append(columns[0])
            tags.append(columns[-1].strip())
    if tokens:
        examples.append({"tokens": tokens, "tags": tags})
    return examples


def read_conll04(path: str | Path) -> list[dict[str, Any]]:
    """CoNLL04 (SpERT split) sentences as joint_er token-form examples ``{"tokens","tags","relations"}``."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of sentences")
    return [
        {
            "tokens": list(item["tokens"]),
            "tags": list(item["tags"]),
            "relations": [
                {"head": r["head"], "tail": r["tail"], "type": r["type"]} for r in item.get("relations", [])
            ],
        }
        for item in data
    ]


def wnut17_labels() -> list[str]:
    return list(WNUT17_LABELS)


def conll04_labels() -> tuple[list[str], list[str]]:
    """(entity labels, relation labels) as written in the data."""
    return list(CONLL04_ENTITY_LABELS), list(CONLL04_RELATION_LABELS)
