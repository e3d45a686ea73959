"""Helpers for the API tests: valid request bodies and row counts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from store.models import ApiKey, Base, Dataset, Job, JobEvent, Model, Project

NER_TASK = {"type": "ner", "labels": ["person", "location"], "label_words": {"person": "person"}}


def ner_example(i: int = 0) -> dict[str, Any]:
    name = ["Barack Obama", "Angela Merkel", "Ada Lovelace", "Alan Turing"][i % 4]
    city = ["Paris", "Berlin", "London", "Rome"][i % 4]
    text = f"{name} visited {city} on day {i}."
    start = len(name) + len(" visited ")
    return {
        "text": text,
        "entities": [
            {"start": 0, "end": len(name), "label": "person"},
            {"start": start, "end": start + len(city), "label": "location"},
        ],
    }


def ner_job(n: int = 4, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": NER_TASK,
        "base_model": "tiny-t5",
        "training_data": {"examples": [ner_example(i) for i in range(n)]},
        "method": {"type": "fish_dip", "sparsity": 0.01, "refresh_every": 100, "regressing_examples": "auto"},
        "hyperparameters": {"epochs": "auto", "batch_size": "auto", "learning_rate": "auto"},
        "seed": 7,
        "metadata": {"team": "search"},
    }
    body.update(overrides)
    return body


TABLES = (Project, ApiKey, Dataset, Job, JobEvent, Model)


def count_rows(factory: sessionmaker[Session]) -> dict[str, int]:
    with factory() as session:
        return {
            t.__tablename__: int(session.scalar(select(func.count()).select_from(t)) or 0) for t in TABLES
        }


assert {t.__tablename__ for t in TABLES} == set(Base.metadata.tables)
