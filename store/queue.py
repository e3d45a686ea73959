"""The queue client: how the API (and the reaper) hand a job id to the workers.

A lightweight Celery app that only *sends*: it never imports the worker's task code, so
the API process does not pull in torch to enqueue. The task is addressed by its stable
name, ``finetune.run``, on one named queue that ``worker.app`` consumes.

Works for ``redis://`` brokers and for kombu's SQLAlchemy transport
(``sqla+sqlite:///var/broker.db``), the embedded mode's broker.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy.engine import make_url

from store.settings import Settings

log = logging.getLogger(__name__)

TASK_NAME = "finetune.run"
QUEUE_NAME = "fishdip.training"

# Redis re-delivers an unacknowledged message once this many seconds pass. Training jobs
# run for hours, and lost workers are handled by the heartbeat reaper, so re-delivery by
# the broker is only a last resort; a re-delivered task is a no-op anyway (see claim).
REDIS_VISIBILITY_TIMEOUT_S = 12 * 3600

_apps: dict[str, Celery] = {}
_apps_lock = threading.Lock()


def _ensure_sqlite_dir(broker_url: str) -> None:
    """kombu creates the broker's tables but not the directory of a SQLite file."""
    if not broker_url.startswith("sqla+"):
        return
    url = make_url(broker_url[len("sqla+") :])
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Settings shared by the sending client and the worker app."""
    transport_options: dict[str, Any] = {}
    if settings.broker_url.startswith(("redis://", "rediss://")):
        transport_options["visibility_timeout"] = REDIS_VISIBILITY_TIMEOUT_S
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # Results live on the job row; a result backend would be a second source of truth.
        "task_ignore_result": True,
        "task_default_queue": QUEUE_NAME,
        "task_routes": {TASK_NAME: {"queue": QUEUE_NAME}},
    }


def client_app(settings: Settings) -> Celery:
    """One sending app per broker URL, built on first use and shared by all threads."""
    with _apps_lock:
        app = _apps.get(settings.broker_url)
        if app is None:
            _ensure_sqlite_dir(settings.broker_url)
            app = Celery("fishdip-client", set_as_current=False)
            app.conf.update(celery_config(settings))
            _apps[settings.broker_url] = app
        return app


def enqueue_training(job_id: str, settings: Settings) -> None:
    """Send ``finetune.run(job_id)``. Call only after the job row is committed."""
    app = client_app(settings)
    app.send_task(TASK_NAME, args=[job_id], queue=QUEUE_NAME, retry=True)
    log.info("enqueued %s", job_id)


def queue_depth(settings: Settings) -> int | None:
    """Messages waiting in the training queue (not yet taken by a worker), or None when
    the broker cannot be asked (down, or a transport that does not count)."""
    app = client_app(settings)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            declared = conn.default_channel.queue_declare(queue=QUEUE_NAME, passive=False)
            return int(declared.message_count)
    except Exception:  # a metrics probe must never break its caller
        log.warning("queue depth unavailable", exc_info=True)
        return None


def broker_reachable(settings: Settings) -> bool:
    """For /readyz: can we open a connection to the broker right now?"""
    app = client_app(settings)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:  # noqa: BLE001 - readiness reports, it does not raise
        return False
