"""Helpers for the API tests: valid request bodies and row counts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from store.artifacts import LocalArtifactStore
from store.models import ApiKey, Base, Dataset, Job, JobEvent, Model, Project, new_id

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


MANIFEST = {"format": 1, "base": {"name": "tiny-t5"}, "task": {"type": "ner", "labels": ["person"]}}


def add_model(factory: sessionmaker[Session], job_id: str, artifacts: LocalArtifactStore, tmp: Path) -> Model:
    path = tmp / f"{job_id}.safetensors"
    tensors = {"enc.w::index": np.arange(5, dtype=np.int64), "enc.w::value": np.ones(5, dtype=np.float32)}
    save_file(tensors, str(path), metadata={"fishdip_manifest": json.dumps(MANIFEST)})
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        model = Model(
            id=new_id("model"),
            project_id=job.project_id,
            job_id=job_id,
            base_model=job.base_model,
            task=job.task,
            metrics={"micro": {"f1": 0.5}},
            artifact_key=f"{job.project_id}/{job_id}.safetensors",
            artifact_bytes=path.stat().st_size,
            parameters_changed=5,
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        artifacts.put_file(model.artifact_key, path)
        job.model_id = model.id
        session.add(model)
        session.commit()
        return model
