"""Request and response bodies (Pydantic). ORM rows are converted here, never returned raw."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T")

TASK_EXAMPLE = {"type": "ner", "labels": ["person", "location"], "label_words": {"person": "person"}}


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool


class DataRef(BaseModel):
    """Inline examples or a stored dataset: exactly one of the two."""

    model_config = ConfigDict(extra="forbid")

    examples: list[dict[str, Any]] | None = Field(
        default=None, description="examples in the task's format (character offsets, end exclusive)"
    )
    dataset_id: str | None = Field(default=None, description="a dataset of this project (ds_...)")

    @model_validator(mode="after")
    def _exactly_one(self) -> DataRef:
        if (self.examples is None) == (self.dataset_id is None):
            raise ValueError("give exactly one of 'examples' or 'dataset_id'")
        return self


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: dict[str, Any] = Field(
        description="task spec: type (ner, joint_er, relation_classification, srl, dst), labels, "
        "label_words, relation_labels (joint_er)",
        examples=[TASK_EXAMPLE],
    )
    base_model: str = Field(description="a name from GET /v1/base-models", examples=["gemma-3-270m"])
    training_data: DataRef
    validation_data: DataRef | None = Field(
        default=None,
        description="optional; when absent and there are >= 20 training examples, 10% of them "
        "(seeded) are held out and the job's validation_source is 'held_out'",
    )
    method: dict[str, Any] | None = Field(
        default=None,
        description="type fish_dip (default) | fish | random | full; sparsity, refresh_every, "
        "regressing_examples ('auto' or an integer)",
        examples=[
            {"type": "fish_dip", "sparsity": 0.01, "refresh_every": 100, "regressing_examples": "auto"}
        ],
    )
    hyperparameters: dict[str, Any] | None = Field(
        default=None,
        description="epochs, max_steps, batch_size, learning_rate ('auto' or a value), optimizer, ...",
        examples=[{"epochs": "auto", "batch_size": "auto", "learning_rate": "auto"}],
    )
    seed: int = Field(default=7, ge=0, le=2**63 - 1)
    metadata: dict[str, Any] = Field(default_factory=dict, description="free-form, returned as given")


class Progress(BaseModel):
    step: int
    total_steps: int
    fraction: float
    eta_seconds: float | None


class JobMetrics(BaseModel):
    train_loss: float | None = None
    validation: dict[str, Any] | None = None


class JobErrorInfo(BaseModel):
    code: str
    message: str


JobStatus = Literal["validating", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"]


class JobRead(BaseModel):
    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    task: dict[str, Any]
    base_model: str
    method: dict[str, Any]
    hyperparameters: dict[str, Any] = Field(description="resolved: every 'auto' replaced by its value")
    seed: int
    progress: Progress
    metrics: JobMetrics
    model_id: str | None
    error: JobErrorInfo | None
    metadata: dict[str, Any]
    validation_source: Literal["given", "held_out", "none"] = Field(
        description="where validation examples came from"
    )
    training_dataset_id: str | None = None
    validation_dataset_id: str | None = None


class EventRead(BaseModel):
    id: str
    job_id: str
    type: Literal["status", "metrics", "evaluation", "mask_refresh", "examples"] | str
    created_at: datetime
    data: dict[str, Any] = Field(
        description="status: {status, ...}; metrics: {step, loss, lr}; evaluation: {step, metrics}; "
        "mask_refresh: {step, selected, overlap, per_module_share, example_ids, example_losses}; "
        "examples: {final_losses}"
    )


class RefreshLoss(BaseModel):
    step: int | None
    loss: float


class ExampleStats(BaseModel):
    index: int = Field(description="position in the job's training examples")
    refresh_losses: list[RefreshLoss]
    times_chosen: int = Field(description="how often it was among the most regressing examples")
    final_loss: float | None


class ExamplesRead(BaseModel):
    job_id: str
    data: list[ExampleStats]


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_type: str = Field(examples=["ner"])
    task: dict[str, Any] | None = Field(
        default=None, description="optional task spec; when given, labels are checked against it"
    )
    examples: list[dict[str, Any]]


class DatasetRead(BaseModel):
    id: str
    task_type: str
    n_examples: int
    label_counts: dict[str, Any]
    warnings: list[Any]
    created_at: datetime
    examples: list[dict[str, Any]] | None = Field(default=None, description="only with ?include_examples=1")


class ArtifactInfo(BaseModel):
    bytes: int
    parameters_changed: int
    sha256: str


class ModelRead(BaseModel):
    id: str
    job_id: str
    base_model: str
    task: dict[str, Any]
    metrics: dict[str, Any]
    artifact: ArtifactInfo
    created_at: datetime


class ExtractRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str] | None = Field(default=None, description="plain texts (ner, joint_er)")
    inputs: list[Any] | None = Field(default=None, description="inputs of the task's input shape")

    @model_validator(mode="after")
    def _exactly_one(self) -> ExtractRequest:
        if (self.texts is None) == (self.inputs is None):
            raise ValueError("give exactly one of 'texts' or 'inputs'")
        return self


class ExtractResponse(BaseModel):
    model_id: str
    results: list[dict[str, Any]]


class BaseModelInfo(BaseModel):
    name: str
    family: str
    parameters: int | None
    loaded: bool


class BaseModelList(BaseModel):
    data: list[BaseModelInfo]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value
