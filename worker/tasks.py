"""``finetune.run``: a job id in; the trained delta, progress and events out.

The task is safe to receive twice: ``claim`` refuses a job that is finished, has a model,
or is alive on another worker. It records its own failures on the job and returns
normally, so the broker never re-delivers a job that failed for a reason of its own.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Any

import core
from store import lifecycle
from store.artifacts import ArtifactStore, artifact_store_from_settings
from store.db import engine_from_settings, make_session_factory
from store.lifecycle import ClaimedJob, ModelRecord, SessionFactory
from store.queue import TASK_NAME
from store.settings import Settings, get_settings
from worker.app import app

log = logging.getLogger(__name__)

METRICS_EVENT_MIN_INTERVAL_S = 1.0
CANCEL_POLL_INTERVAL_S = 0.5


def artifact_key(job_id: str) -> str:
    """Derived from the job, so a re-run overwrites its predecessor's upload."""
    return f"models/{job_id}.safetensors"


class _Resources:
    """Process-wide database and artifact handles, built on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._factory: SessionFactory | None = None
        self._artifacts: ArtifactStore | None = None
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def get(self, settings: Settings) -> tuple[SessionFactory, ArtifactStore]:
        with self._lock:
            if self._factory is None:
                self._factory = make_session_factory(engine_from_settings(settings))
            if self._artifacts is None:
                self._artifacts = artifact_store_from_settings(settings)
            return self._factory, self._artifacts


_resources = _Resources()


class Lease:
    """Heartbeats on a thread, and answers ``should_stop`` from a cached cancel poll."""

    def __init__(self, factory: SessionFactory, job: ClaimedJob, settings: Settings) -> None:
        self._factory = factory
        self._job = job
        self._interval = settings.heartbeat_seconds
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job.id}", daemon=True)
        self.lost = False
        self.cancel_requested = False
        self._last_poll = 0.0

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def _beat(self) -> None:
        while not self._done.wait(self._interval):
            try:
                if not lifecycle.heartbeat(self._factory, self._job.id, self._job.worker_id):
                    self.lost = True
            except Exception:  # a missed beat is retried; the timeout has slack
                log.warning("heartbeat for %s failed", self._job.id, exc_info=True)

    def should_stop(self) -> bool:
        now = time.monotonic()
        if now - self._last_poll >= CANCEL_POLL_INTERVAL_S:
            self._last_poll = now
            try:
                cancel, lost = lifecycle.should_stop(self._factory, self._job.id, self._job.worker_id)
                self.cancel_requested = self.cancel_requested or cancel
                self.lost = self.lost or lost
            except Exception:  # keep training through a database blip
                log.warning("cancel poll for %s failed", self._job.id, exc_info=True)
        return self.lost or self.cancel_requested


class StepRate:
    """Seconds per step as a moving average of recent steps. The time before the first step
    (base loading, the first mask) and mask refreshes would skew a whole-run average, so the
    ETA follows the steps themselves; refreshes still to come are not included."""

    def __init__(self, smoothing: float = 0.2) -> None:
        self.smoothing = smoothing
        self.per_step: float | None = None
        self._last: tuple[int, float] | None = None

    def update(self, step: int, elapsed_s: float) -> None:
        if self._last is not None and step > self._last[0]:
            sample = (elapsed_s - self._last[1]) / (step - self._last[0])
            a = self.smoothing
            self.per_step = sample if self.per_step is None else (1 - a) * self.per_step + a * sample
        self._last = (step, elapsed_s)

    def eta(self, step: int, total: int) -> float | None:
        return None if self.per_step is None else round(self.per_step * max(0, total - step), 1)


class JobCallbacks(core.Callbacks):
    """Streams progress into the job row and events, throttled to about one write a second."""

    def __init__(self, factory: SessionFactory, job: ClaimedJob) -> None:
        self._factory = factory
        self._job = job
        self._last_write = 0.0
        self.refreshes = 0
        self._rate = StepRate()

    def on_step(self, info: core.StepInfo) -> None:
        self._rate.update(info.step, info.elapsed_s)
        now = time.monotonic()
        last = info.step >= info.total_steps
        if not last and now - self._last_write < METRICS_EVENT_MIN_INTERVAL_S:
            return
        self._last_write = now
        eta = self._rate.eta(info.step, info.total_steps)
        loss = float(info.loss)
        lifecycle.progress(
            self._factory,
            self._job.id,
            self._job.worker_id,
            step=info.step,
            total_steps=info.total_steps,
            eta_seconds=eta,
            train_loss=loss,
        )
        data = {"step": info.step, "total_steps": info.total_steps, "loss": loss, "lr": float(info.lr)}
        lifecycle.add_event(self._factory, self._job.id, "metrics", data)

    def on_evaluation(self, info: core.EvalInfo) -> None:
        lifecycle.set_validation_metrics(self._factory, self._job.id, self._job.worker_id, dict(info.metrics))
        lifecycle.add_event(
            self._factory, self._job.id, "evaluation", {"step": info.step, "metrics": info.metrics}
        )

    def on_mask_refresh(self, info: core.MaskRefreshInfo) -> None:
        self.refreshes += 1
        data = {
            "step": info.step,
            "selected": info.selected,
            "total_parameters": info.total_parameters,
            "overlap": info.overlap,
            "touched": info.touched,
            "per_module_share": dict(info.per_module_share),
            "example_ids": list(info.example_ids),
            # Every example's loss at this refresh: the data behind GET /v1/jobs/{id}/examples.
            "example_losses": {str(k): float(v) for k, v in (info.example_losses or {}).items()},
            "seconds": info.seconds,
        }
        lifecycle.add_event(self._factory, self._job.id, "mask_refresh", data)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _train_config(job: ClaimedJob) -> core.TrainConfig:
    """The stored hyperparameters are the API's resolved values. Their total_steps is the
    step count the job promised; resolving epochs and max_steps together again could
    shorten it, so the promise is passed on as max_steps and epochs are left out."""
    known = {f.name for f in fields(core.TrainConfig)} - {"total_steps", "seed"}
    given = {k: v for k, v in job.hyperparameters.items() if k in known}
    if job.hyperparameters.get("total_steps"):
        given["max_steps"] = job.hyperparameters["total_steps"]
        given.pop("epochs", None)
    return core.TrainConfig.from_dict({**given, "seed": job.seed})


def _device(settings: Settings) -> str | None:
    return None if settings.device == "auto" else settings.device


def _train_and_store(
    job: ClaimedJob, factory: SessionFactory, artifacts: ArtifactStore, settings: Settings, lease: Lease
) -> None:
    base = core.load_base(job.base_model, device=_device(settings))  # cached per process
    spec = core.TaskSpec.from_dict(job.task)
    method = core.MethodConfig.from_dict(job.method)
    callbacks = JobCallbacks(factory, job)
    result = core.fit(
        base,
        spec,
        job.training_examples,
        validation_examples=job.validation_examples,
        method=method,
        config=_train_config(job),
        callbacks=callbacks,
        should_stop=lease.should_stop,
    )
    final_losses = {str(k): float(v) for k, v in (result.final_example_losses or {}).items()}
    summary = {"final_losses": final_losses, "refreshes": callbacks.refreshes, "stopped": result.stopped}
    lifecycle.add_event(factory, job.id, "examples", summary)
    with tempfile.TemporaryDirectory(prefix="fishdip-") as tmp:
        path = Path(tmp) / "model.safetensors"
        info = core.save_delta(result, base, str(path), spec=spec, method=method, metrics=result.metrics)
        if lease.lost:
            return  # the job is someone else's now; do not overwrite their upload
        key = artifact_key(job.id)
        artifacts.put_file(key, path)
    record = ModelRecord(
        artifact_key=key,
        artifact_bytes=int(info.bytes),
        parameters_changed=int(info.parameters_changed),
        sha256=info.sha256,
        metrics=_jsonable(dict(result.metrics or {})),
        steps=int(result.steps),
        train_loss=float(result.train_loss),
    )
    model_id = lifecycle.finish_success(factory, job.id, record)
    log.info("job %s finished: model %s", job.id, model_id)


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, core.ConfigError):
        return "invalid_config"
    if isinstance(exc, core.UnknownBase):
        return "unknown_base_model"
    if isinstance(exc, core.UnknownTask):
        return "unknown_task"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "out_of_memory"
    return "training_error"


def run_job(job_id: str, settings: Settings | None = None) -> str:
    """Run one job to a terminal state; returns what happened (for logs and tests)."""
    settings = settings or get_settings()
    factory, artifacts = _resources.get(settings)
    job = lifecycle.claim(factory, job_id, _resources.worker_id, settings)
    if job is None:
        log.info("job %s not claimable here (finished, has a model, or running elsewhere)", job_id)
        return "skipped"
    with Lease(factory, job, settings) as lease:
        try:
            _train_and_store(job, factory, artifacts, settings, lease)
        except core.FitCancelled:
            if lease.lost:
                return "lease_lost"
            lifecycle.mark_cancelled(factory, job.id)
            return "cancelled"
        except Exception as exc:  # recorded on the job instead of re-delivered
            log.exception("job %s failed", job_id)
            if not lease.lost:
                lifecycle.fail(factory, job.id, _error_code(exc), f"{type(exc).__name__}: {exc}")
            return "failed"
    return "lease_lost" if lease.lost else "succeeded"


def _finetune_run(job_id: str) -> str:
    return run_job(job_id)


finetune_run = app.task(name=TASK_NAME, ignore_result=True)(_finetune_run)
