"""The Celery app the workers run: ``celery -A worker.app worker`` or ``fishdip worker``.

Delivery guarantees come from the job row, not from the broker: a task is acknowledged
only after it finishes (acks_late), a worker takes one message at a time (prefetch 1),
and a task delivered twice is a no-op (``store.lifecycle.claim``). A worker that dies
mid-job is detected by its stale heartbeat; the reaper, a thread inside every worker
process, puts the job back in the queue. So no separate beat process is needed.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from store.settings import get_settings

log = logging.getLogger(__name__)


def create_app() -> Celery:
    from store.queue import celery_config

    settings = get_settings()
    app = Celery("fishdip", include=["worker.tasks"])
    app.conf.update(celery_config(settings))
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A failed task is recorded on the job row; acking it stops endless redelivery.
        task_acks_on_failure_or_timeout=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # Heartbeats between Celery workers (gossip/mingle) are not used: liveness is the
        # job row's heartbeat. Turning them off makes start-up fast and quiet.
        worker_enable_remote_control=settings.broker_url.startswith(("redis://", "rediss://")),
    )
    return app


app = create_app()


class Reaper:
    """Runs ``lifecycle.requeue_stale`` every ``reaper_interval_seconds`` on a daemon thread."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fishdip-reaper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        from store import lifecycle, queue
        from store.db import engine_from_settings, make_session_factory

        settings = get_settings()
        factory = make_session_factory(engine_from_settings(settings))

        def send(job_id: str) -> None:
            queue.enqueue_training(job_id, settings)

        while not self._stop.wait(settings.reaper_interval_seconds):
            try:
                done = lifecycle.requeue_stale(factory, settings, send, lambda: queue.queue_depth(settings))
            except Exception:  # a failed sweep is retried on the next tick
                log.exception("reaper sweep failed")
                continue
            if any(done.values()):
                log.warning("reaper: %s", {k: v for k, v in done.items() if v})


reaper = Reaper()


def _start_reaper(**_: Any) -> None:
    reaper.start()


def _stop_reaper(**_: Any) -> None:
    reaper.stop()


# Only a worker process fires these signals: the API's sending client never starts a reaper.
worker_ready.connect(_start_reaper, weak=False)
worker_shutdown.connect(_stop_reaper, weak=False)
