"""Job rules: creation (validate everything, resolve the config, hold out validation data,
idempotency), cancellation, and the per-example view of a job's events."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

import core
from api.errors import Conflict, NotFound, ValidationFailed
from api.schemas import DataRef, JobCreate
from api.services.validation import Problems, check_base_model, check_examples, parse_task
from store.models import Job, new_id, utcnow
from store.repositories import DatasetRepo, EventRepo, JobRepo
from store.settings import Settings

HOLD_OUT_MIN_EXAMPLES = 20
HOLD_OUT_FRACTION = 0.1


def request_hash(body: JobCreate) -> str:
    """sha256 of the canonical JSON of the body (sorted keys, no whitespace)."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class _Data:
    examples: list[dict[str, Any]]
    dataset_id: str | None


def _load_data(
    session: Session,
    project_id: str,
    ref: DataRef,
    spec: Any,
    settings: Settings,
    problems: Problems,
    at: str,
) -> _Data | None:
    if ref.dataset_id is not None:
        dataset = DatasetRepo(session).get(project_id, ref.dataset_id)
        if dataset is None:
            problems.add(f"{at}/dataset_id", f"no dataset {ref.dataset_id!r} in this project")
            return None
        if spec is not None and dataset.task_type != spec.type:
            problems.add(f"{at}/dataset_id", f"dataset is for {dataset.task_type}, the task is {spec.type}")
            return None
        raw, prefix = list(dataset.examples), f"{at}/dataset_id/examples"
    else:
        raw, prefix = list(ref.examples or []), f"{at}/examples"
    if spec is None:
        return None
    checked = check_examples(spec, raw, settings, problems, prefix)
    return _Data(checked.examples, ref.dataset_id) if checked else None


def _configs(body: JobCreate, problems: Problems) -> tuple[Any, Any]:
    method = train = None
    try:
        method = core.MethodConfig.from_dict(body.method or {})
    except core.ConfigError as exc:
        problems.extend("/method", exc.problems)
    hyper = dict(body.hyperparameters or {})
    if "seed" in hyper:
        problems.add("/hyperparameters/seed", "set the seed at the top level of the job")
    try:
        train = core.TrainConfig.from_dict({**hyper, "seed": body.seed})
    except core.ConfigError as exc:
        problems.extend("/hyperparameters", exc.problems)
    return method, train


def _hold_out(examples: list[dict[str, Any]], seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(examples) * HOLD_OUT_FRACTION))
    held = set(order[:n_val])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    val = [ex for i, ex in enumerate(examples) if i in held]
    return train, val


def build_job(session: Session, project_id: str, body: JobCreate, settings: Settings) -> Job:
    """Validate the whole request and return an unsaved queued job; 422 lists every problem."""
    problems = Problems()
    spec = parse_task(body.task, settings, problems)
    check_base_model(body.base_model, settings, problems)
    method, train_cfg = _configs(body, problems)
    train = _load_data(session, project_id, body.training_data, spec, settings, problems, "/training_data")
    val = None
    if body.validation_data is not None:
        val = _load_data(
            session, project_id, body.validation_data, spec, settings, problems, "/validation_data"
        )
    if problems or train is None or method is None or train_cfg is None:
        raise ValidationFailed("the job request is invalid", problems.items)
    if body.validation_data is not None and val is not None:
        train_examples, val_examples, source = train.examples, val.examples, "given"
    elif len(train.examples) >= HOLD_OUT_MIN_EXAMPLES:
        train_examples, val_examples = _hold_out(train.examples, body.seed)
        source = "held_out"
    else:
        train_examples, val_examples, source = train.examples, None, "none"
    resolved = core.resolve_config(train_cfg, method, n_train=len(train_examples))
    return Job(
        id=new_id("job"),
        project_id=project_id,
        status="queued",
        task=spec.to_dict(),
        base_model=body.base_model,
        method=method.to_dict(),
        hyperparameters=resolved.to_dict(),
        seed=body.seed,
        metadata_=body.metadata,
        training_examples=train_examples,
        validation_examples=val_examples,
        training_dataset_id=train.dataset_id,
        validation_dataset_id=val.dataset_id if val else None,
        validation_source=source,
        step=0,
        total_steps=int(resolved.total_steps or 0),
        metrics={},
        cancel_requested=False,
        attempts=0,
        created_at=utcnow(),
        updated_at=utcnow(),
    )


def create_job(
    session: Session, project_id: str, body: JobCreate, settings: Settings, idempotency_key: str | None
) -> tuple[Job, bool]:
    """(job, created). With an idempotency key a repeat returns the first job; a different
    body under the same key is a 409. Concurrent repeats race on the unique constraint
    (project_id, idempotency_key): the loser's insert fails and it reads the winner's row."""
    repo = JobRepo(session)
    digest = request_hash(body) if idempotency_key else None
    if idempotency_key:
        existing = repo.by_idempotency_key(project_id, idempotency_key)
        if existing is not None:
            return _same_request(existing, digest), False
    job = build_job(session, project_id, body, settings)
    job.idempotency_key, job.request_hash = idempotency_key, digest
    if repo.insert(job):
        EventRepo(session).add(job.id, "status", {"status": "queued"}, when=job.created_at)
        return job, True
    assert idempotency_key is not None
    winner = repo.by_idempotency_key(project_id, idempotency_key)
    if winner is None:  # the winner rolled back after all; let the client retry
        raise Conflict("a request with this Idempotency-Key is in progress; retry")
    return _same_request(winner, digest), False


def _same_request(job: Job, digest: str | None) -> Job:
    if job.request_hash != digest:
        raise Conflict("this Idempotency-Key was used with a different request body")
    return job


def cancel_job(session: Session, project_id: str, job_id: str) -> Job:
    """queued -> cancelled now; running -> cancelling (the worker stops and marks it
    cancelled); cancelling -> unchanged; terminal -> 409. Conditional updates, because a
    worker may move the job at the same moment."""
    repo, events = JobRepo(session), EventRepo(session)
    for _ in range(5):
        job = repo.get(project_id, job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        now = utcnow()
        if job.status in ("queued", "validating"):
            values = {"status": "cancelled", "cancel_requested": True, "finished_at": now}
            if repo.transition(job.id, job.status, values):
                events.add(job.id, "status", {"status": "cancelled"})
                return repo.refresh(job)
        elif job.status == "running":
            if repo.transition(job.id, "running", {"status": "cancelling", "cancel_requested": True}):
                events.add(job.id, "status", {"status": "cancelling"})
                return repo.refresh(job)
        elif job.status == "cancelling":
            return job
        else:
            raise Conflict(f"job is already {job.status}")
        session.expire(job)
    raise Conflict("the job changed state while cancelling; retry")


def example_stats(session: Session, job: Job) -> list[dict[str, Any]]:
    """Per training example: its loss at each mask refresh, how often it was chosen as most
    regressing, and its final loss, from the job's mask_refresh and examples events."""
    n = len(job.training_examples or [])
    stats: list[dict[str, Any]] = [
        {"index": i, "refresh_losses": [], "times_chosen": 0, "final_loss": None} for i in range(n)
    ]
    for event in EventRepo(session).of_types(job.id, ("mask_refresh", "examples")):
        data = event.data or {}
        if event.type == "mask_refresh":
            for i, loss in _indexed(data.get("example_losses"), n):
                stats[i]["refresh_losses"].append({"step": data.get("step"), "loss": float(loss)})
            for i, _ in _indexed(data.get("example_ids"), n):
                stats[i]["times_chosen"] += 1
        else:
            for i, loss in _indexed(data.get("final_losses"), n):
                stats[i]["final_loss"] = float(loss)
    return stats


def _indexed(values: Any, n: int) -> list[tuple[int, Any]]:
    """Index/value pairs from a {index: value} mapping, a list of values, or a list of ids."""
    pairs: list[tuple[Any, Any]]
    if isinstance(values, dict):
        pairs = list(values.items())
    elif isinstance(values, list):
        if values and all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in values):
            pairs = [(v, None) for v in values]  # a list of example ids
        else:
            pairs = list(enumerate(values))
    else:
        return []
    out: list[tuple[int, Any]] = []
    for key, value in pairs:
        idx = _as_index(key)
        if idx is not None and 0 <= idx < n:
            out.append((idx, value))
    return out


def _as_index(key: Any) -> int | None:
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str):
        digits = key.rsplit("_", 1)[-1]
        return int(digits) if digits.isdigit() else None
    return None
