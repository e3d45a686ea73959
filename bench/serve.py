"""Serving benchmark: the HTTP extraction path against core, measured in the same run.

    python bench/serve.py                          # tiny-t5, SQLite, a real uvicorn server
    python bench/serve.py --database-url postgresql://postgres@127.0.0.1:5432/bench

Trains two small models itself (core.fit, a few dozen steps each), stores them as the
worker would (artifact store + Model rows), starts ``uvicorn api.app:app`` on a free port
and prints, as ratios:

1. /extract latency p50/p99, one sentence, hot model, against core.extract_with called
   directly on the same SharedBase arrangement (target <= 1.3x);
2. one request of 32 texts against 32 sequential requests of one (target >= 4x);
3. switching between two models of one base (delta swap) against loading a full
   checkpoint of the fine-tuned model: (a) building the model and loading the checkpoint,
   as ``from_pretrained`` does (target >= 10x faster), and (b) the most favourable case,
   loading it into an already built model from a warm page cache;
4. GET /v1/jobs/{id} p50/p99 with 100 clients, closed loop (back to back: the server's
   throughput) and open loop (each polls once a second: the target, p99 < 50 ms), sent by
   a cheap raw-asyncio keep-alive client, with the CPU of client and server beside them.

``--parts`` runs a subset (extract, switch, jobs); the GET measurement wants Postgres.

Both sides run with the same torch thread count (--threads), so the ratios compare code
paths, not core counts.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SENTENCE = "Barack Obama visited Paris."
TEXTS_32 = [
    f"{name} visited {place}."
    for name, place in zip(
        ["Barack Obama", "Angela Merkel", "Marie Curie", "Ada Lovelace"] * 8,
        ["Paris", "Berlin", "Warsaw", "London", "Tokyo", "Lima", "Rome", "Oslo"] * 4,
        strict=True,
    )
]
TASK = {"type": "ner", "labels": ["person", "location"]}
TRAIN = [
    {"text": "Barack Obama visited Paris.", "entities": [
        {"start": 0, "end": 12, "label": "person"}, {"start": 21, "end": 26, "label": "location"}]},
    {"text": "Angela Merkel lives in Berlin.", "entities": [
        {"start": 0, "end": 13, "label": "person"}, {"start": 23, "end": 29, "label": "location"}]},
    {"text": "Marie Curie worked in Warsaw.", "entities": [
        {"start": 0, "end": 11, "label": "person"}, {"start": 22, "end": 28, "label": "location"}]},
    {"text": "Tokyo is far from Lima.", "entities": [
        {"start": 0, "end": 5, "label": "location"}, {"start": 18, "end": 22, "label": "location"}]},
]  # fmt: skip


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- setup: two models, stored as the worker stores them --------------------------------------


def train_models(base: Any, steps: int, tmp: Path, sparsity: float = 0.05) -> list[tuple[Path, Any]]:
    """Two models of one base (seeds 1 and 2). Tiny models get a 5% mask so that a few
    dozen steps teach them their four sentences; bigger ones get the paper's 1%."""
    import core

    spec = core.TaskSpec.from_dict(TASK)
    out = []
    for seed in (1, 2):
        result = core.fit(
            base, spec, TRAIN,
            method=core.MethodConfig(type="fish_dip", sparsity=sparsity, refresh_every=50),
            config=core.TrainConfig(max_steps=steps, batch_size=2, seed=seed),
        )  # fmt: skip
        path = tmp / f"{base.name}-{seed}.safetensors"
        info = core.save_delta(result, base, str(path), spec=spec, method=result.method, metrics={})
        out.append((path, info))
    return out


def store_models(
    database_url: str, artifact_dir: Path, base_name: str, models: list[tuple[Path, Any]]
) -> dict[str, Any]:
    from store.artifacts import artifact_store_from_settings
    from store.db import make_engine, make_session_factory, session_scope
    from store.keys import create_key
    from store.migrate import upgrade_head
    from store.models import Job, Model, new_id
    from store.settings import Settings

    upgrade_head(database_url)
    artifacts = artifact_store_from_settings(Settings(artifact_url=str(artifact_dir)))
    factory = make_session_factory(make_engine(database_url))
    ids: list[str] = []
    with session_scope(factory) as session:
        key = create_key(session, f"bench-{new_id('p')}")
        for path, info in models:
            job_id, model_id = new_id("job"), new_id("model")
            artifacts.put_file(f"models/{job_id}.safetensors", path)
            session.add(Job(
                id=job_id, project_id=key.project_id, status="succeeded", task=TASK, base_model=base_name,
                method={"type": "fish_dip"}, hyperparameters={}, seed=1, training_examples=TRAIN,
                model_id=model_id, step=1, total_steps=1,
            ))  # fmt: skip
            session.flush()
            session.add(Model(
                id=model_id, project_id=key.project_id, job_id=job_id, base_model=base_name, task=TASK,
                metrics={}, artifact_key=f"models/{job_id}.safetensors", artifact_bytes=info.bytes,
                parameters_changed=info.parameters_changed, sha256=info.sha256,
            ))  # fmt: skip
            ids.append(model_id)
            ids.append(job_id)
    return {"secret": key.secret, "models": ids[0::2], "jobs": ids[1::2]}


def start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.app:app", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


# --- measurements -----------------------------------------------------------------------------


def direct_extractor(base: Any, delta_path: Path) -> Callable[[], Any]:
    """core.extract_with on a SharedBase with the delta resident: what the cache does."""
    import core

    shared = core.SharedBase(base)
    delta = core.load_delta(str(delta_path))
    core.extract_with(shared, delta, [SENTENCE])
    return lambda: core.extract_with(shared, delta, [SENTENCE])


def bench_switch(base: Any, delta_paths: list[Path], n: int) -> dict[str, Any]:
    """A model switch: swap one delta out and the other in (what the serving cache does),
    against what a deployment without deltas does to switch to another fine-tuned model:

    (a) load it: build the model and read its full safetensors checkpoint
        (``from_pretrained`` of a saved fine-tuned model, the usual way; the target's baseline);
    (b) the most favourable case: ``load_state_dict`` of that checkpoint, read from a warm
        page cache, into a model that is already built.

    Both baselines read a file the bench has just written, so the page cache is warm: from
    cold storage they would only be slower.
    """
    import torch
    from safetensors.torch import load_model

    import core

    deltas = [core.load_delta(str(p)) for p in delta_paths]
    shared = core.SharedBase(base)

    swaps = []
    for i in range(1, 2 * n + 1):
        t0 = time.perf_counter()
        with shared.use(deltas[i % 2]):
            pass
        swaps.append(time.perf_counter() - t0)
    full = core.apply_delta(base, deltas[1])
    ckpt_dir = Path(delta_paths[0]).parent / f"{base.name}-full"
    ckpt = save_checkpoint(full.model, ckpt_dir)
    model_class = _auto_class(base.family)
    built = timed(lambda: model_class.from_pretrained(str(ckpt_dir), dtype=torch.float32), max(3, n // 20))
    loads = timed(lambda: load_model(full.model, str(ckpt), strict=False), max(5, n // 10))
    return {
        "swap_s": statistics.median(swaps),
        "build_and_load_s": statistics.median(built),
        "full_load_s": statistics.median(loads),
        "full_ckpt_bytes": ckpt.stat().st_size,
        "delta_bytes": [p.stat().st_size for p in delta_paths],
    }


def save_checkpoint(model: Any, directory: Path) -> Path:
    """A fine-tuned model as ``save_pretrained`` lays it out: config.json + model.safetensors
    (tied weights stored once). Written by hand because transformers refuses to save a model
    whose config still names the GGUF file Gemma was dequantised from; the weights are plain
    fp32, so the quantisation entry is dropped."""
    from safetensors.torch import save_model

    directory.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(str(directory))
    path = directory / "model.safetensors"
    save_model(model, str(path), metadata={"format": "pt"})
    return path


def _auto_class(family: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM


def bench_extract(
    port: int, secret: str, model_ids: list[str], n: int, direct: Callable[[], Any]
) -> dict[str, Any]:
    """HTTP measurements. The one-sentence latency alternates an HTTP call with a direct
    core call, so both see the same background load on a shared machine."""
    import httpx

    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120) as c:

        def extract(model: str, texts: list[str]) -> None:
            r = c.post(f"/v1/models/{model}/extract", json={"texts": texts})
            r.raise_for_status()

        for m in model_ids:  # load both deltas and the base
            extract(m, [SENTENCE])
        lat, direct_lat = [], []
        for _ in range(n):
            lat += timed(lambda: extract(model_ids[0], [SENTENCE]), 1)
            direct_lat += timed(direct, 1)
        one_of_32 = timed(lambda: extract(model_ids[0], TEXTS_32), 5)

        def singles_run() -> None:
            for t in TEXTS_32:
                extract(model_ids[0], [t])

        singles = timed(singles_run, 3)
        alternating = []
        for i in range(n):
            t0 = time.perf_counter()
            extract(model_ids[i % 2], [SENTENCE])
            alternating.append(time.perf_counter() - t0)
    concurrent_32 = asyncio.run(_concurrent_singles(port, headers, model_ids[0]))
    return {
        "p50": statistics.median(lat), "p99": pct(lat, 0.99),
        "direct_p50": statistics.median(direct_lat), "direct_p99": pct(direct_lat, 0.99),
        "batch32_s": statistics.median(one_of_32), "singles32_s": statistics.median(singles),
        "concurrent32_s": concurrent_32,
        "alternating_p50": statistics.median(alternating),
    }  # fmt: skip


async def _concurrent_singles(port: int, headers: dict[str, str], model: str) -> float:
    """32 one-text requests at once: the serving cache merges them into batches."""
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120) as c:
        t0 = time.perf_counter()
        rs = await asyncio.gather(
            *(c.post(f"/v1/models/{model}/extract", json={"texts": [t]}) for t in TEXTS_32)
        )
        elapsed = time.perf_counter() - t0
    assert all(r.status_code == 200 for r in rs)
    return elapsed


# --- GET /v1/jobs/{id}: a load generator cheap enough not to be the bottleneck ---------------

POLL_TIMEOUT_S = 10.0
_CONTENT_LENGTH = b"\r\ncontent-length:"


class RawPoller:
    """One keep-alive HTTP/1.1 connection that sends one fixed GET again and again.

    httpx spends about 5 ms of CPU per request, more than the server (about 1.6 ms); on two
    shared cores such a client falls behind its own schedule and reports its backlog as
    server latency. This one writes prepared bytes and reads only the status line and
    Content-Length (a few tens of microseconds), so the CPU goes to the server."""

    def __init__(self, port: int, request: bytes) -> None:
        self._port = port
        self._request = request
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self) -> str | None:
        """Send the GET and read the whole answer. None for a 200, else why not (the status
        or the exception's name); after an error the connection is reopened on next use."""
        try:
            async with asyncio.timeout(POLL_TIMEOUT_S):
                if self._conn is None:
                    self._conn = await asyncio.open_connection("127.0.0.1", self._port)
                reader, writer = self._conn
                writer.write(self._request)
                head = await reader.readuntil(b"\r\n\r\n")
                lowered = head.lower()
                await reader.readexactly(_content_length(lowered))
        except (
            OSError,
            TimeoutError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as exc:
            self.close()
            return type(exc).__name__
        if b"\r\nconnection: close" in lowered:
            self.close()
        status = head[9:12] if head.startswith(b"HTTP/1.1 ") else b"bad status line"
        return None if status == b"200" else status.decode("ascii", "replace")

    def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None


def _content_length(lowered_head: bytes) -> int:
    """The body's length; a response without one (chunked) is an error for this client."""
    at = lowered_head.find(_CONTENT_LENGTH)
    if at < 0:
        raise ValueError("no Content-Length")
    start = at + len(_CONTENT_LENGTH)
    return int(lowered_head[start : lowered_head.index(b"\r\n", start)])


def _job_request(port: int, secret: str, job_id: str) -> bytes:
    return (
        f"GET /v1/jobs/{job_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {secret}\r\n\r\n"
    ).encode()


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process from /proc (Linux only; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Usage:
    """Wall time and the CPU of this process (the load generator) and of the server over a
    measurement, so a reader can see which of the two was short of CPU."""

    def __init__(self, server_pid: int, wall_start: float | None = None) -> None:
        self._server_pid = server_pid
        self._wall = time.perf_counter() if wall_start is None else wall_start
        self._client = time.process_time()
        self._server = _cpu_seconds(server_pid)

    def stop(self, out: dict[str, Any]) -> None:
        out["elapsed"] = time.perf_counter() - self._wall
        out["client_cpu_s"] = time.process_time() - self._client
        server = _cpu_seconds(self._server_pid)
        out["server_cpu_s"] = None if server is None or self._server is None else server - self._server


async def _poll(conn: RawPoller, since: float, out: dict[str, Any]) -> None:
    """One GET, its latency counted from ``since``. Failures (timeouts, non-200s) are
    counted, not hidden: a p99 over the successes alone would flatter."""
    error = await conn.get()
    if error is None:
        out["latencies"].append(time.perf_counter() - since)
    else:
        out["errors"].append(error)


async def _open_pollers(
    port: int, secret: str, job_id: str, clients: int
) -> tuple[list[RawPoller], list[str]]:
    """``clients`` connections, each with one unrecorded GET, so connection set-up is not
    counted as latency. Returns the connections and the warm-up failures."""
    request = _job_request(port, secret, job_id)
    conns = [RawPoller(port, request) for _ in range(clients)]
    errors = await asyncio.gather(*(c.get() for c in conns))
    return conns, [f"warm-up {e}" for e in errors if e is not None]


async def closed_loop_gets(
    port: int, secret: str, job_id: str, clients: int, server_pid: int
) -> dict[str, Any]:
    """``clients`` connections, each sending 10 GETs back to back: the server's saturation
    throughput; each latency is then at least ``clients / throughput``."""
    conns, warm_errors = await _open_pollers(port, secret, job_id, clients)
    out: dict[str, Any] = {"latencies": [], "errors": warm_errors}

    async def client(conn: RawPoller) -> None:
        for _ in range(10):
            await _poll(conn, time.perf_counter(), out)

    usage = _Usage(server_pid)
    await asyncio.gather(*(client(c) for c in conns))
    usage.stop(out)
    for c in conns:
        c.close()
    return out


async def open_loop_gets(
    port: int, secret: str, job_id: str, clients: int, seconds: int, server_pid: int
) -> dict[str, Any]:
    """``clients`` pollers, each asking once a second on its own schedule (staggered evenly
    over the second), as clients poll a job. Latency runs from when the poll was due, not
    when it was sent, so a server that falls behind cannot hide its backlog. ``send_lag``
    (sent minus due) shows whether the generator itself kept to the schedule."""
    conns, warm_errors = await _open_pollers(port, secret, job_id, clients)
    out: dict[str, Any] = {"latencies": [], "errors": warm_errors, "send_lag": []}
    start = time.perf_counter() + 0.5

    async def poller(i: int, conn: RawPoller) -> None:
        for k in range(seconds):
            due = start + i / clients + k
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            out["send_lag"].append(time.perf_counter() - due)
            await _poll(conn, due, out)

    usage = _Usage(server_pid, wall_start=start)  # the 0.5 s before the first poll is idle
    await asyncio.gather(*(poller(i, c) for i, c in enumerate(conns)))
    usage.stop(out)
    for c in conns:
        c.close()
    return out


def _latency_summary(result: dict[str, Any]) -> dict[str, Any]:
    lat = result["latencies"] or [float("nan")]
    requests = len(result["latencies"]) + len(result["errors"])
    summary = {
        "p50_ms": 1e3 * statistics.median(lat), "p99_ms": 1e3 * pct(lat, 0.99), "max_ms": 1e3 * max(lat),
        "ok": len(result["latencies"]),
        "failed": {e: result["errors"].count(e) for e in set(result["errors"])},
        "throughput_rps": len(result["latencies"]) / result["elapsed"],
    }  # fmt: skip
    if result.get("send_lag"):
        summary["send_lag_p99_ms"] = 1e3 * pct(result["send_lag"], 0.99)
    summary.update(_cpu_summary(result, requests))
    return summary


def _cpu_summary(result: dict[str, Any], requests: int) -> dict[str, Any]:
    """CPU as a share of one core over the run, and per request."""
    out: dict[str, Any] = {}
    for side in ("client", "server"):
        cpu = result[f"{side}_cpu_s"]
        if cpu is not None:
            out[f"{side}_cpu_pct_of_core"] = 100 * cpu / result["elapsed"]
            out[f"{side}_cpu_ms_per_request"] = 1e3 * cpu / max(1, requests)
    return out


def bench_jobs(
    port: int, secret: str, job_id: str, clients: int, seconds: int, server_pid: int
) -> dict[str, Any]:
    closed = asyncio.run(closed_loop_gets(port, secret, job_id, clients, server_pid))
    opened = asyncio.run(open_loop_gets(port, secret, job_id, clients, seconds, server_pid))
    return {
        "closed_loop": _latency_summary(closed),
        "open_loop": _latency_summary(opened),
        "load_average_1m": os.getloadavg()[0],
    }


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="tiny-t5")
    parser.add_argument("--steps", type=int, default=60, help="training steps per model")
    parser.add_argument("--requests", type=int, default=200, help="requests per latency measurement")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--poll-seconds", type=int, default=10, help="open loop: polls per client")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--switch-base", default=None, help="base for the model-switch measurement")
    parser.add_argument("--switch-steps", type=int, default=2, help="training steps per --switch-base model")
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument(
        "--parts", default="extract,switch,jobs", help="comma-separated subset of extract,switch,jobs"
    )
    args = parser.parse_args()
    args.switch_base = args.switch_base or args.base
    args.parts = set(args.parts.split(","))
    return args


def _server_env(database_url: str, tmp: Path, threads: int) -> dict[str, str]:
    return {
        **os.environ, "PYTHONPATH": str(ROOT), "FISHDIP_DATABASE_URL": database_url,
        "FISHDIP_BROKER_URL": f"sqla+sqlite:///{tmp / 'broker.db'}",
        "FISHDIP_ARTIFACT_URL": str(tmp / "artifacts"),
        "FISHDIP_CACHE_DIR": str(tmp / "cache"), "FISHDIP_DEVICE": "cpu",
        "FISHDIP_RATE_LIMIT_PER_MINUTE": "100000000", "OMP_NUM_THREADS": str(threads),
    }  # fmt: skip


def main() -> int:
    args = _arguments()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    import core

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="fishdip-bench-"))
    database_url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    base = core.load_base(args.base, device="cpu")
    models = train_models(base, args.steps, tmp)
    stored = store_models(database_url, tmp / "artifacts", args.base, models)
    report: dict[str, Any] = {
        "base": args.base,
        "database": database_url.split(":", 1)[0],
        "threads": args.threads,
    }
    if args.parts & {"extract", "jobs"}:
        port = free_port()
        server = start_server(_server_env(database_url, tmp, args.threads), port, tmp / "server.log")
        try:
            _wait_healthy(port)
            if "extract" in args.parts:
                direct = direct_extractor(base, models[0][0])
                http = bench_extract(port, stored["secret"], stored["models"], args.requests, direct)
                report.update(_extract_report(http))
            if "jobs" in args.parts:
                jobs = bench_jobs(
                    port, stored["secret"], stored["jobs"][0], args.clients, args.poll_seconds, server.pid
                )
                report["get_job"] = {"clients": args.clients, **jobs, "target": "open loop p99 < 50 ms"}
        finally:
            _stop(server)
    if "switch" in args.parts:
        report["model_switch"] = _switch_report(args, base, [p for p, _ in models], tmp)
    sys.stdout.write(json.dumps(_rounded(report), indent=2) + "\n")
    return 0


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _extract_report(http: dict[str, Any]) -> dict[str, Any]:
    return {
        "extract_one_sentence": {
            "http_p50_ms": 1e3 * http["p50"], "http_p99_ms": 1e3 * http["p99"],
            "direct_p50_ms": 1e3 * http["direct_p50"], "direct_p99_ms": 1e3 * http["direct_p99"],
            "ratio_p50": http["p50"] / http["direct_p50"], "ratio_p99": http["p99"] / http["direct_p99"],
            "target": "<= 1.3",
        },
        "batch_32": {
            "one_request_of_32_ms": 1e3 * http["batch32_s"],
            "32_sequential_requests_ms": 1e3 * http["singles32_s"],
            "32_concurrent_requests_ms": 1e3 * http["concurrent32_s"],
            "throughput_ratio": http["singles32_s"] / http["batch32_s"], "target": ">= 4",
        },
        "http_alternating_models_p50_ms": 1e3 * http["alternating_p50"],
    }  # fmt: skip


def _switch_report(args: argparse.Namespace, base: Any, deltas: list[Path], tmp: Path) -> dict[str, Any]:
    import core

    if args.switch_base == args.base:
        switch = bench_switch(base, deltas, args.requests)
    else:  # a bigger base, where a full checkpoint weighs what it does in production
        big = core.load_base(args.switch_base, device="cpu")
        big_models = train_models(big, args.switch_steps, tmp, sparsity=0.01)
        switch = bench_switch(big, [p for p, _ in big_models], 20)
    return {
        "base": args.switch_base,
        "delta_swap_ms": 1e3 * switch["swap_s"],
        "a_build_and_load_ms": 1e3 * switch["build_and_load_s"],
        "b_load_into_built_model_ms": 1e3 * switch["full_load_s"],
        "speedup_vs_a": switch["build_and_load_s"] / switch["swap_s"],
        "speedup_vs_b": switch["full_load_s"] / switch["swap_s"],
        "target": ">= 10 against (a)",
        "full_checkpoint_bytes": switch["full_ckpt_bytes"], "delta_bytes": switch["delta_bytes"],
    }  # fmt: skip


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _wait_healthy(port: int, timeout: float = 90) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("server did not start")


if __name__ == "__main__":
    sys.exit(main())
