"""Sparse deltas: save, load, apply, swap; a wrong base is refused."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

import core
from core.delta import _encode_positions, _gap, _ungap


@pytest.fixture(scope="module")
def trained(
    tiny_t5: core.LoadedBase, ner_spec: core.TaskSpec, ner_train: list[dict[str, Any]]
) -> core.FitResult:
    return core.fit(
        tiny_t5,
        ner_spec,
        ner_train,
        method=core.MethodConfig(type="fish_dip", sparsity=0.05, refresh_every=5),
        config=core.TrainConfig(max_steps=12, batch_size=3, seed=1),
    )


def test_delta_round_trip_reproduces_outputs_exactly(
    tmp_path: Path,
    tiny_t5: core.LoadedBase,
    trained: core.FitResult,
    ner_spec: core.TaskSpec,
    ner_train: list[dict[str, Any]],
) -> None:
    info = core.save_delta(trained, tiny_t5, tmp_path / "m.safetensors")
    assert info.bytes == (tmp_path / "m.safetensors").stat().st_size and len(info.sha256) == 64
    # Refreshes moved more than one mask's worth of weights: the artifact keeps them all.
    k = int(0.05 * tiny_t5.parameter_count())
    assert k < info.parameters_changed <= 3 * k
    delta = core.load_delta(tmp_path / "m.safetensors")
    assert delta.manifest["base"]["fingerprint"] == tiny_t5.fingerprint
    assert delta.manifest["task"] == ner_spec.to_dict()
    assert delta.parameters_changed == info.parameters_changed
    applied = core.apply_delta(tiny_t5, delta)
    for (n, a), (_, b) in zip(
        applied.model.named_parameters(), trained.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), n
    batch = tiny_t5.collate([core.get_task("ner").source(ner_train[0], ner_spec)], ["x"])
    trained.model.eval()
    with torch.no_grad():
        want = trained.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            decoder_input_ids=batch.decoder_input_ids,
        ).logits
        got = applied.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            decoder_input_ids=batch.decoder_input_ids,
        ).logits
    assert torch.equal(want, got)
    texts = [ex["text"] for ex in ner_train]
    assert core.extract(applied, ner_spec, texts) == core.extract(
        tiny_t5.bind(trained.model), ner_spec, texts
    )


def test_delta_file_is_safetensors_with_manifest(
    tmp_path: Path, tiny_t5: core.LoadedBase, trained: core.FitResult
) -> None:
    core.save_delta(trained, tiny_t5, tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert keys and all(k.endswith(("::index", "::gaps", "::bits", "::value")) for k in keys)
    assert "fishdip_manifest" in meta
    manifest = core.read_manifest(tmp_path / "m.safetensors")
    assert manifest["library_version"] == core.__version__ and manifest["method"]["type"] == "fish_dip"


def test_wrong_base_is_refused(
    tmp_path: Path, tiny_t5: core.LoadedBase, tiny_causal: core.LoadedBase, trained: core.FitResult
) -> None:
    core.save_delta(trained, tiny_t5, tmp_path / "m.safetensors")
    delta = core.load_delta(tmp_path / "m.safetensors")
    with pytest.raises(core.BaseMismatch, match="tiny-t5"):
        core.apply_delta(tiny_causal, delta)
    with pytest.raises(core.BaseMismatch), core.SharedBase(tiny_causal).use(delta):
        pass


def test_shared_base_swaps_deltas_and_restores_the_base(
    tmp_path: Path,
    tiny_t5: core.LoadedBase,
    trained: core.FitResult,
    ner_spec: core.TaskSpec,
    ner_train: list[dict[str, Any]],
) -> None:
    other = core.fit(
        tiny_t5,
        ner_spec,
        ner_train,
        method=core.MethodConfig(type="random", sparsity=0.05),
        config=core.TrainConfig(max_steps=4, batch_size=3, seed=2),
    )
    core.save_delta(trained, tiny_t5, tmp_path / "a.safetensors")
    core.save_delta(other, tiny_t5, tmp_path / "b.safetensors")
    a, b = core.load_delta(tmp_path / "a.safetensors"), core.load_delta(tmp_path / "b.safetensors")
    shared = core.SharedBase(tiny_t5)
    for delta, ref in ((a, trained.model), (b, other.model), (a, trained.model)):
        with shared.use(delta) as run:
            for (n, x), (_, y) in zip(run.model.named_parameters(), ref.named_parameters(), strict=True):
                assert torch.equal(x, y), n
    with shared.use(None) as run:
        for (n, x), (_, y) in zip(
            run.model.named_parameters(), tiny_t5.model.named_parameters(), strict=True
        ):
            assert torch.equal(x, y), n
    assert shared.swaps == 4


def test_full_fine_tuning_delta_is_no_bigger_than_a_checkpoint(
    tmp_path: Path, tiny_t5: core.LoadedBase, ner_spec: core.TaskSpec, ner_train: list[dict[str, Any]]
) -> None:
    full = core.fit(
        tiny_t5,
        ner_spec,
        ner_train,
        method=core.MethodConfig(type="full"),
        config=core.TrainConfig(max_steps=2, batch_size=3, optimizer="adamw", seed=4),
    )
    info = core.save_delta(full, tiny_t5, tmp_path / "full.safetensors")
    checkpoint = sum(p.numel() * p.element_size() for p in tiny_t5.model.parameters())
    assert info.bytes < 1.01 * checkpoint + 65536
    delta = core.load_delta(tmp_path / "full.safetensors")
    assert any(idx is None for idx, _ in delta.tensors.values())  # stored whole
    assert delta.parameters_changed == info.parameters_changed
    applied = core.apply_delta(tiny_t5, delta)
    for (n, a), (_, b) in zip(applied.model.named_parameters(), full.model.named_parameters(), strict=True):
        assert torch.equal(a, b), n
    shared = core.SharedBase(tiny_t5)
    with shared.use(delta) as run:
        assert all(
            torch.equal(a, b) for a, b in zip(run.model.parameters(), full.model.parameters(), strict=True)
        )
    with shared.use(None) as run:
        assert all(
            torch.equal(a, b) for a, b in zip(run.model.parameters(), tiny_t5.model.parameters(), strict=True)
        )


@pytest.mark.parametrize("share", [0.001, 0.1, 0.9])
def test_positions_are_stored_the_cheapest_way_and_read_back(
    tmp_path: Path, tiny_t5: core.LoadedBase, ner_spec: core.TaskSpec, share: float
) -> None:
    model = copy.deepcopy(tiny_t5.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((torch.rand(p.shape, generator=gen) < share) * 0.5)
    info = core.save_delta(model, tiny_t5, tmp_path / "d.safetensors", spec=ner_spec)
    with safe_open(str(tmp_path / "d.safetensors"), framework="pt") as f:
        kinds = {k.rsplit("::", 1)[1] for k in f.keys()}  # noqa: SIM118
    # 1 in 1000: 2-byte gaps; 1 in 10: a bitmap (small tensors whose few changes happen to
    # be sparser may still use gaps); 9 in 10: the tensor whole.
    expected = {0.001: [{"gaps", "value"}], 0.1: [{"bits", "value"}, {"bits", "gaps", "value"}]}
    assert kinds in expected.get(share, [{"value"}])
    applied = core.apply_delta(tiny_t5, core.load_delta(tmp_path / "d.safetensors"))
    for (n, a), (_, b) in zip(applied.model.named_parameters(), model.named_parameters(), strict=True):
        assert torch.equal(a, b), n
    assert info.parameters_changed == sum(
        int((a != b).sum()) for a, b in zip(model.parameters(), tiny_t5.model.parameters(), strict=True)
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 300_000), unique=True, min_size=1, max_size=60))
def test_gap_encoding_round_trips_any_sorted_positions(positions: list[int]) -> None:
    idx = torch.tensor(sorted(positions), dtype=torch.int32)
    gaps = _gap(idx)
    assert gaps.dtype == torch.uint16
    assert torch.equal(_ungap(gaps), idx.long())


def test_gap_encoding_escapes_distances_beyond_uint16() -> None:
    idx = torch.tensor([0, 65_535, 65_536, 65_536 + 3 * 65_535 + 7])
    gaps = _gap(idx)
    assert gaps.tolist() == [1, 65_535, 1, 0, 0, 0, 7]
    assert torch.equal(_ungap(gaps), idx)
    kind, _ = _encode_positions(torch.arange(0, 10_000, 3), 10_000)
    assert kind == "bits"  # one in three changed: a bitmap is smaller than 2 bytes an entry
