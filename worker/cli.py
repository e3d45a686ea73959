"""``fishdip worker``, ``fishdip serve`` and ``fishdip allocator``.

``worker``: one Celery worker process, solo pool, one job at a time. Training saturates the
device, so parallelism comes from more worker processes (one per GPU), never from threads.
It runs under jemalloc where that is installed (``FISHDIP_ALLOCATOR``; ``allocator`` prints
which malloc a worker started now would use).

``serve``: the embedded mode for one machine: migrate the settings database, then run the
API (uvicorn) and one worker subprocess side by side; Ctrl-C stops both.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

API_APP = "api.app:app"
# Set in the environment of a worker re-executed with jemalloc preloaded: never twice.
PRELOADED_MARK = "FISHDIP_ALLOCATOR_PRELOADED"


def preload_allocator(argv: Sequence[str]) -> None:
    """Run this ``worker.cli`` command under jemalloc when the settings ask for it
    (``FISHDIP_ALLOCATOR``, see store.settings): re-executes the process once, same pid and
    arguments, with the library in ``LD_PRELOAD``; returns where there is nothing to do.
    A preload must happen before the process starts, hence the re-execution."""
    from store.settings import get_settings

    choice = get_settings().allocator
    if choice == "system" or os.environ.get(PRELOADED_MARK):
        return
    from core.memory import allocator, jemalloc_path

    if allocator() == "jemalloc":
        return
    lib = jemalloc_path()
    if lib is None:
        if choice == "jemalloc":
            raise SystemExit(
                "FISHDIP_ALLOCATOR=jemalloc, but libjemalloc.so.2 is not installed (libjemalloc2)"
            )
        log.info("libjemalloc.so.2 not found: the worker uses the system allocator")
        return
    preload = " ".join(p for p in (lib, os.environ.get("LD_PRELOAD", "")) if p)
    env = {**os.environ, "LD_PRELOAD": preload, PRELOADED_MARK: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "worker.cli", *argv], env)


def worker_argv(loglevel: str = "INFO") -> list[str]:
    from store.queue import QUEUE_NAME

    return [
        "worker",
        "--pool=solo",
        "--concurrency=1",
        f"--queues={QUEUE_NAME}",
        f"--loglevel={loglevel}",
        # Liveness is the job row's heartbeat; Celery's own cluster chatter is not needed.
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        f"--hostname=fishdip-worker-{os.getpid()}@%h",
    ]


def run_worker(loglevel: str = "INFO") -> int:
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    preload_allocator(["worker", f"--loglevel={loglevel}"])
    from core.memory import allocator
    from worker.app import app

    log.info("allocator: %s", allocator())
    app.worker_main(worker_argv(loglevel))
    return 0


def migrate() -> int:
    from store.migrate import upgrade_head
    from store.settings import get_settings

    upgrade_head(get_settings().database_url)
    return 0


def bootstrap_key() -> None:
    """First start of a fresh embedded service: create project "default" and one API key,
    print it and keep it in ``<data_dir>/api-key`` (mode 600), so a new user can call the API
    at once. Does nothing once any key exists; production creates keys with
    ``fishdip keys create``."""
    from sqlalchemy import func, select

    from store.db import make_engine, make_session_factory, session_scope
    from store.keys import create_key
    from store.models import ApiKey
    from store.settings import get_settings

    settings = get_settings()
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            if session.scalar(select(func.count()).select_from(ApiKey)):
                return
            created = create_key(session, "default", "embedded bootstrap")
    finally:
        engine.dispose()
    path = settings.data_dir / "api-key"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(created.secret + "\n")
    log.warning("created API key %s for project 'default'; its secret is in %s", created.key_id, path)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # Celery: warm shutdown; uvicorn: graceful
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve(host: str, port: int, loglevel: str = "INFO") -> int:
    """Embedded mode. Both children inherit the environment, so one settings source."""
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    migrate()
    bootstrap_key()
    python = sys.executable
    worker = subprocess.Popen([python, "-m", "worker.cli", "worker", f"--loglevel={loglevel}"])
    api = subprocess.Popen(
        [
            python,
            "-m",
            "uvicorn",
            API_APP,
            "--host",
            host,
            "--port",
            str(port),
            "--log-level",
            loglevel.lower(),
        ]
    )
    children = (api, worker)
    try:
        # Whichever child exits first takes the service down: a half-running service
        # (API accepting jobs nobody trains) is worse than none.
        while all(p.poll() is None for p in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        for proc in children:
            _stop(proc)
    return 0 if api.returncode in (0, -signal.SIGTERM, None) else int(api.returncode)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fishdip")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run a training worker (one job at a time)")
    w.add_argument("--loglevel", default="INFO")
    s = sub.add_parser("serve", help="embedded mode: migrate, then API and one worker")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--loglevel", default="INFO")
    sub.add_parser("migrate", help="alembic upgrade head on the settings database")
    sub.add_parser("allocator", help="print the malloc a worker started now would use (FISHDIP_ALLOCATOR)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "worker":
        return run_worker(args.loglevel)
    if args.command == "serve":
        return serve(args.host, args.port, args.loglevel)
    if args.command == "allocator":
        preload_allocator(["allocator"])
        from core.memory import allocator

        sys.stdout.write(allocator() + "\n")
        return 0
    return migrate()


if __name__ == "__main__":
    sys.exit(main())
