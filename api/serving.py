"""The serving cache: answers ``POST /v1/models/{id}/extract`` inside the API process.

Why in the API process rather than a separate serving process: a fine-tuned model here is
a base model plus a sparse delta of about 1% of its weights, so one resident base per base
name serves every model trained on it, and switching models costs a delta swap (a scatter
of a few tensors), not a load. A small deployment then needs no second service, queue or
RPC hop, and a request's latency stays close to a direct ``core.extract`` call. The price
is that torch shares the API's memory; the torch work runs on one thread per base, off the
event loop, so job and model routes keep answering while a batch runs. A deployment that
must scale extraction apart from the API runs more API replicas behind the load balancer.

Batching: each base has one lane (one worker thread). While the lane computes, new requests
wait; when it is free, everything waiting for the same model is merged into one
``core.extract`` call. So a lone request starts at once, and concurrent ones share batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import core
from store.artifacts import ArtifactStore
from store.models import Model
from store.settings import Settings

log = logging.getLogger(__name__)

MAX_BATCH_INPUTS = 64  # inputs merged into one core.extract call
EXTRACT_BATCH_SIZE = 32  # core's forward batch within that call


@dataclass
class _Loaded:
    model_id: str
    base_model: str
    delta: Any  # core.SparseDelta


@dataclass
class _Request:
    inputs: list[Any]
    future: asyncio.Future[list[dict[str, Any]]]


@dataclass
class _Lane:
    """One resident base, one thread that owns it, and the requests waiting for it."""

    base_model: str
    executor: ThreadPoolExecutor
    shared: Any = None  # core.SharedBase, built on the lane's own thread
    pending: OrderedDict[str, tuple[_Loaded, list[_Request]]] = field(default_factory=OrderedDict)
    runner: asyncio.Task[None] | None = None


class ServingCache:
    def __init__(self, settings: Settings, artifacts: ArtifactStore) -> None:
        self._settings = settings
        self._artifacts = artifacts
        self._dir = Path(settings.cache_dir) / "models"
        self._capacity = max(1, settings.model_cache_size)
        self._deltas: OrderedDict[str, _Loaded] = OrderedDict()
        self._loading: dict[str, asyncio.Future[_Loaded]] = {}
        self._lanes: dict[str, _Lane] = {}
        self._io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="serving-io")
        self._lock = threading.Lock()

    # --- public -----------------------------------------------------------------------------

    async def extract(self, model: Model, inputs: list[Any]) -> list[dict[str, Any]]:
        if not inputs:
            return []
        loaded = await self._get(model)
        lane = self._lane(model.base_model)
        loop = asyncio.get_running_loop()
        request = _Request(list(inputs), loop.create_future())
        entry = lane.pending.setdefault(loaded.model_id, (loaded, []))
        entry[1].append(request)
        if lane.runner is None or lane.runner.done():
            lane.runner = asyncio.create_task(self._drain(lane))
        return await request.future

    def evict(self, model_id: str) -> None:
        """Forget a model (deleted, or replaced): its delta and its cached file."""
        with self._lock:
            self._deltas.pop(model_id, None)
        with contextlib.suppress(OSError):
            self._path(model_id).unlink()

    async def close(self) -> None:
        for lane in self._lanes.values():
            if lane.runner is not None:
                lane.runner.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await lane.runner
            lane.executor.shutdown(wait=True, cancel_futures=True)
        self._lanes.clear()
        self._io.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._deltas.clear()

    def resident(self) -> list[str]:
        """Model ids currently held, least recently used first (for /metrics and tests)."""
        with self._lock:
            return list(self._deltas)

    # --- deltas -----------------------------------------------------------------------------

    def _path(self, model_id: str) -> Path:
        return self._dir / f"{model_id}.safetensors"

    async def _get(self, model: Model) -> _Loaded:
        with self._lock:
            hit = self._deltas.get(model.id)
            if hit is not None:
                self._deltas.move_to_end(model.id)
                return hit
        # Concurrent first requests for one model share one download and load.
        pending = self._loading.get(model.id)
        if pending is None:
            pending = asyncio.get_running_loop().run_in_executor(
                self._io, self._load_delta, model.id, model.artifact_key, model.sha256, model.base_model
            )
            self._loading[model.id] = pending
            pending.add_done_callback(functools.partial(self._loaded, model.id))
        loaded = await asyncio.shield(pending)
        with self._lock:
            self._deltas[model.id] = loaded
            self._deltas.move_to_end(model.id)
            while len(self._deltas) > self._capacity:
                self._deltas.popitem(last=False)
        return loaded

    def _loaded(self, model_id: str, _future: object) -> None:
        self._loading.pop(model_id, None)

    def _load_delta(self, model_id: str, key: str, sha256: str, base_model: str) -> _Loaded:
        path = self._path(model_id)
        if not path.exists():
            self._dir.mkdir(parents=True, exist_ok=True)
            # Download next to the target and rename, so a crash never leaves half a file.
            tmp = path.with_suffix(f".{threading.get_ident()}.part")
            self._artifacts.get_file(key, tmp)
            tmp.replace(path)
        return _Loaded(model_id, base_model, core.load_delta(str(path)))

    # --- lanes ------------------------------------------------------------------------------

    def _lane(self, base_model: str) -> _Lane:
        lane = self._lanes.get(base_model)
        if lane is None:
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"serving-{base_model[:20]}")
            lane = _Lane(base_model, executor)
            self._lanes[base_model] = lane
        return lane

    async def _drain(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        # Let requests that arrived in the same event-loop turn join the first batch.
        await asyncio.sleep(0)
        while lane.pending:
            model_id, (loaded, requests) = lane.pending.popitem(last=False)
            batch, rest = _take(requests, MAX_BATCH_INPUTS)
            if rest:
                lane.pending[model_id] = (loaded, rest)
            inputs = [x for r in batch for x in r.inputs]
            try:
                outputs = await loop.run_in_executor(lane.executor, self._run, lane, loaded, inputs)
            except Exception as exc:  # noqa: BLE001 - delivered to each waiting request
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            offset = 0
            for r in batch:
                if not r.future.done():
                    r.future.set_result(outputs[offset : offset + len(r.inputs)])
                offset += len(r.inputs)

    def _device(self) -> str | None:
        return None if self._settings.device == "auto" else self._settings.device

    def _run(self, lane: _Lane, loaded: _Loaded, inputs: Sequence[Any]) -> list[dict[str, Any]]:
        """On the lane's thread: the only place its SharedBase is touched."""
        if lane.shared is None:
            lane.shared = core.SharedBase(core.load_base(lane.base_model, device=self._device()))
        outputs = core.extract_with(lane.shared, loaded.delta, list(inputs), batch_size=EXTRACT_BATCH_SIZE)
        return list(outputs)


def _take(requests: list[_Request], limit: int) -> tuple[list[_Request], list[_Request]]:
    """Whole requests up to ``limit`` inputs (at least one request, however large)."""
    taken: list[_Request] = []
    count = 0
    for i, r in enumerate(requests):
        if taken and count + len(r.inputs) > limit:
            return taken, requests[i:]
        taken.append(r)
        count += len(r.inputs)
    return taken, []
