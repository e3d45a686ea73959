"""api.serving.ServingCache on a real tiny base: LRU eviction of deltas, request merging.

Two real deltas of tiny-t5 (core.fit, a few steps, different seeds) are stored as the
worker stores them; the cache downloads, loads and serves them. Calls into
``core.extract_with`` are counted by a wrapper that runs the real function.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import core
from api.serving import ServingCache
from store.artifacts import LocalArtifactStore
from store.models import Model
from store.settings import Settings

# Short sentences a random-init tiny model can fit (as in tests/core/conftest.py).
NER_SPEC = {"type": "ner", "labels": ["person", "location"]}
NER_EXAMPLES: list[dict[str, Any]] = [
    {"text": "Alice lives in Paris .", "entities": [{"start": 0, "end": 5, "label": "person"},
                                                   {"start": 15, "end": 20, "label": "location"}]},
    {"text": "Bob flew to Rome .", "entities": [{"start": 0, "end": 3, "label": "person"},
                                             {"start": 12, "end": 16, "label": "location"}]},
    {"text": "Carol met Dave in Oslo .", "entities": [{"start": 0, "end": 5, "label": "person"},
                                                   {"start": 10, "end": 14, "label": "person"},
                                                   {"start": 18, "end": 22, "label": "location"}]},
    {"text": "It rained all day .", "entities": []},
]  # fmt: skip
TEXTS = ["Alice flew to Oslo .", "Bob lives in Rome .", "Carol met Eve .", "It rained in Paris ."]


@pytest.fixture(scope="module")
def stored_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Model]]:
    """Two deltas of tiny-t5 in a local artifact store, with (unsaved) Model rows."""
    root = tmp_path_factory.mktemp("serving")
    store = LocalArtifactStore(root / "artifacts")
    base = core.load_base("tiny-t5", device="cpu")
    spec = core.TaskSpec.from_dict(NER_SPEC)
    examples = core.get_task("ner").validate(spec, NER_EXAMPLES).examples
    models = []
    for seed in (1, 2):
        result = core.fit(
            base, spec, examples,
            method=core.MethodConfig(type="fish_dip", sparsity=0.05, refresh_every=50),
            config=core.TrainConfig(max_steps=3, batch_size=2, seed=seed),
        )  # fmt: skip
        path = root / f"delta-{seed}.safetensors"
        info = core.save_delta(result, base, str(path), spec=spec, method=result.method, metrics={})
        key = f"models/job_{seed}.safetensors"
        store.put_file(key, path)
        model = Model(
            id=f"model_{seed}", project_id="proj_x", job_id=f"job_{seed}", base_model="tiny-t5",
            task=NER_SPEC, metrics={}, artifact_key=key, artifact_bytes=info.bytes,
            parameters_changed=info.parameters_changed, sha256=info.sha256,
        )  # fmt: skip
        models.append(model)
    return root / "artifacts", models


@pytest.fixture
def cache(stored_models: tuple[Path, list[Model]], tmp_path: Path) -> ServingCache:
    artifacts, _ = stored_models
    settings = Settings(artifact_url=str(artifacts), cache_dir=tmp_path, device="cpu", model_cache_size=1)
    return ServingCache(settings, LocalArtifactStore(artifacts))


@pytest.fixture
def extract_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the batches given to core.extract_with (the real one still runs)."""
    calls: list[int] = []
    real: Callable[..., list[dict[str, Any]]] = core.extract_with

    def counted(base: Any, delta: Any, inputs: list[Any], **kwargs: Any) -> list[dict[str, Any]]:
        calls.append(len(inputs))
        return real(base, delta, inputs, **kwargs)

    monkeypatch.setattr(core, "extract_with", counted)
    return calls


def test_cache_of_one_evicts_the_least_recently_used_delta(
    cache: ServingCache, stored_models: tuple[Path, list[Model]]
) -> None:
    _, (first, second) = stored_models

    async def scenario() -> list[list[str]]:
        resident = []
        try:
            for model in (first, second, first):
                results = await cache.extract(model, TEXTS[:2])
                assert len(results) == 2 and all("entities" in r for r in results)
                resident.append(cache.resident())
        finally:
            await cache.close()
        return resident

    assert asyncio.run(scenario()) == [[first.id], [second.id], [first.id]]


def test_concurrent_requests_for_one_model_share_extract_calls(
    cache: ServingCache, stored_models: tuple[Path, list[Model]], extract_calls: list[int]
) -> None:
    _, (model, _) = stored_models

    async def scenario() -> tuple[list[list[dict[str, Any]]], list[list[dict[str, Any]]]]:
        try:
            alone = [await cache.extract(model, [t]) for t in TEXTS]
            extract_calls.clear()
            together = await asyncio.gather(*(cache.extract(model, [t]) for t in TEXTS * 2))
        finally:
            await cache.close()
        return alone, list(together)

    alone, together = asyncio.run(scenario())
    # Eight one-text requests, merged: fewer calls than requests, every text computed once.
    assert len(extract_calls) < len(TEXTS) * 2
    assert sum(extract_calls) == len(TEXTS) * 2
    # Each request gets its own text's answer back, as if it had been sent alone.
    assert together == alone + alone
