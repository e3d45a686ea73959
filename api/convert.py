"""ORM rows to response schemas."""

from __future__ import annotations

from datetime import datetime

from api.schemas import (
    ArtifactInfo,
    DatasetRead,
    EventRead,
    JobErrorInfo,
    JobMetrics,
    JobRead,
    ModelRead,
    Progress,
    utc,
)
from store.models import Dataset, Job, JobEvent, Model


def _req_utc(value: datetime) -> datetime:
    """For columns that are never null."""
    out = utc(value)
    assert out is not None
    return out


def job_read(job: Job) -> JobRead:
    total = job.total_steps or 0
    step = job.step or 0
    metrics = job.metrics or {}
    error = None
    if job.error:
        error = JobErrorInfo(
            code=str(job.error.get("code", "error")), message=str(job.error.get("message", ""))
        )
    train_loss = metrics.get("train_loss")
    validation = metrics.get("validation")
    return JobRead(
        id=job.id,
        status=job.status,
        created_at=_req_utc(job.created_at),
        started_at=utc(job.started_at),
        finished_at=utc(job.finished_at),
        task=job.task,
        base_model=job.base_model,
        method=job.method,
        hyperparameters=job.hyperparameters,
        seed=job.seed,
        progress=Progress(
            step=step,
            total_steps=total,
            fraction=round(min(1.0, step / total), 6) if total else 0.0,
            eta_seconds=job.eta_seconds,
        ),
        metrics=JobMetrics(
            train_loss=float(train_loss) if isinstance(train_loss, (int, float)) else None,
            validation=validation if isinstance(validation, dict) else None,
        ),
        model_id=job.model_id,
        error=error,
        metadata=job.metadata_ or {},
        validation_source=job.validation_source,
        training_dataset_id=job.training_dataset_id,
        validation_dataset_id=job.validation_dataset_id,
    )


def event_read(event: JobEvent) -> EventRead:
    return EventRead(
        id=event.id,
        job_id=event.job_id,
        type=event.type,
        created_at=_req_utc(event.created_at),
        data=event.data,
    )


def dataset_read(dataset: Dataset, include_examples: bool = False) -> DatasetRead:
    return DatasetRead(
        id=dataset.id,
        task_type=dataset.task_type,
        n_examples=dataset.n_examples,
        label_counts=dataset.label_counts or {},
        warnings=dataset.warnings or [],
        created_at=_req_utc(dataset.created_at),
        examples=list(dataset.examples) if include_examples else None,
    )


def model_read(model: Model) -> ModelRead:
    return ModelRead(
        id=model.id,
        job_id=model.job_id,
        base_model=model.base_model,
        task=model.task,
        metrics=model.metrics or {},
        artifact=ArtifactInfo(
            bytes=model.artifact_bytes, parameters_changed=model.parameters_changed, sha256=model.sha256
        ),
        created_at=_req_utc(model.created_at),
    )
