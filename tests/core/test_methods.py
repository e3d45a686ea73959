"""Masks, Fisher, optimizers: the invariants of sparse fine-tuning."""

from __future__ import annotations

import contextlib
import copy
import math
import threading
from typing import Any

import pytest
import torch

import core
from core import masks as M
from core.config import MethodConfig, TrainConfig, resolve_config
from core.optim import SparseAdamW, _gather
from core.training import _Run, _train


def make_run(
    base: core.LoadedBase,
    spec: core.TaskSpec,
    train: list[dict[str, Any]],
    method: str,
    optimizer: str = "adafactor",
    bias_correction: str = "global",
    **kw: Any,
) -> _Run:
    m = MethodConfig(type=method, sparsity=0.01, **kw)  # type: ignore[arg-type]
    train_cfg = TrainConfig(
        optimizer=optimizer, bias_correction=bias_correction, batch_size=2, max_steps=6, seed=3
    )  # type: ignore[arg-type]
    cfg = resolve_config(train_cfg, m, len(train))
    return _Run(base, spec, train, cfg, m, core.Callbacks(), lambda: False)


def test_top_k_is_global_and_exact() -> None:
    scores = {"a": torch.tensor([5.0, 1.0, 0.0, 0.0]), "b": torch.tensor([[4.0, 3.0], [0.0, 2.0]])}
    mask = M.top_k_mask(scores, 3)
    assert M.count(mask) == 3
    assert mask["a"].tolist() == [True, False, False, False]
    assert mask["b"].tolist() == [[True, True], [False, False]]


def test_top_k_breaks_ties_to_exactly_k() -> None:
    scores = {"a": torch.zeros(100), "b": torch.ones(3)}
    for k in (3, 4, 50):
        mask = M.top_k_mask(scores, k, torch.Generator().manual_seed(0))
        assert M.count(mask) == k
        assert bool(mask["b"].all())


def _untied(base: core.LoadedBase) -> core.LoadedBase:
    """tiny-causal with its own output layer, so the input embedding's gradient is sparse."""
    model: Any = copy.deepcopy(base.model)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    return base.bind(model)


@pytest.mark.parametrize("which", ["tiny_t5", "tiny_causal", "untied_causal"])
def test_fisher_is_sum_of_squared_per_example_gradients(
    request: pytest.FixtureRequest, which: str, ner_spec: core.TaskSpec, ner_train: list[dict[str, Any]]
) -> None:
    base = request.getfixturevalue(which.replace("untied_", "tiny_"))
    run = make_run(_untied(base) if which.startswith("untied") else base, ner_spec, ner_train, "fish")
    run.model.eval()
    ids = [0, 2]
    scores = run.fisher(ids)
    expected: dict[str, torch.Tensor] = {}
    for i in ids:
        run.model.zero_grad()
        run.run.batch_loss(run.batch([i])).backward()
        for n, p in run.model.named_parameters():
            g = p.grad.detach().square() if p.grad is not None else torch.zeros_like(p)
            expected[n] = expected.get(n, torch.zeros_like(p)) + g
    run.model.zero_grad()
    for n in expected:
        torch.testing.assert_close(scores[n], expected[n], rtol=1e-5, atol=1e-12)
    assert sum(float(s.sum()) for s in scores.values()) > 0


def test_touched_positions_and_overlap() -> None:
    a = {"w": torch.tensor([True, False, True, False]), "b": torch.tensor([False, False])}
    b = {"w": torch.tensor([True, True, False, False]), "b": torch.tensor([False, True])}
    pa = M.positions(a)
    assert set(pa) == {"w"} and pa["w"].tolist() == [0, 2]
    pb = M.positions(b)
    assert M.overlap(None, pb) is None
    assert M.overlap(pa, pb) == pytest.approx(1 / 3)  # of b's 3 entries, only w[0] was in a
    touched = M.union(M.union(None, pa), pb)
    assert {n: t.tolist() for n, t in touched.items()} == {"w": [0, 1, 2], "b": [1]}
    assert M.count_positions(touched) == 4


@pytest.mark.parametrize(
    ("optimizer", "bias_correction"), [("adafactor", "global"), ("adamw", "global"), ("adamw", "per_entry")]
)
@pytest.mark.parametrize("method", ["fish_dip", "fish", "random"])
def test_off_mask_parameters_are_bit_identical_after_every_step(
    tiny_t5: core.LoadedBase,
    ner_spec: core.TaskSpec,
    ner_train: list[dict[str, Any]],
    method: str,
    optimizer: str,
    bias_correction: str,
) -> None:
    run = make_run(tiny_t5, ner_spec, ner_train, method, optimizer, bias_correction, refresh_every=2)
    run.choose_mask(0)
    assert run.mask is not None and M.count_positions(run.mask) == run.k
    opt = run.build_optimizer()
    assert isinstance(opt, SparseAdamW) == (optimizer == "adamw")
    moved = 0
    for step in range(1, 5):
        if method == "fish_dip" and step % 2 == 0:
            run.choose_mask(step)
            assert M.count_positions(run.mask) == run.k
            if isinstance(opt, SparseAdamW):
                opt.set_mask(run.mask)
        before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
        run.train_step(opt, [step % len(ner_train), (step + 1) % len(ner_train)])
        for n, p in run.model.named_parameters():
            off = torch.ones_like(p, dtype=torch.bool)
            if n in run.mask:
                off.view(-1)[run.mask[n]] = False
            assert torch.equal(p.detach()[off].view(torch.int32), before[n][off].view(torch.int32)), n
            moved += int((p.detach() != before[n]).sum())
    assert moved > 0  # the masked entries did train


def test_fish_dip_chooses_the_highest_loss_examples(
    tiny_t5: core.LoadedBase, ner_spec: core.TaskSpec, ner_train: list[dict[str, Any]]
) -> None:
    seen: list[core.MaskRefreshInfo] = []

    class Spy(core.Callbacks):
        def on_mask_refresh(self, info: core.MaskRefreshInfo) -> None:
            seen.append(info)

    run = make_run(tiny_t5, ner_spec, ner_train, "fish_dip", regressing_examples=3)
    run.cb = Spy()
    run.choose_mask(0)
    info = seen[-1]
    losses = info.example_losses
    assert len(losses) == len(ner_train)
    top = sorted(losses, key=lambda i: -losses[i])[:3]
    assert sorted(info.example_ids) == sorted(top)
    assert info.selected == run.k and info.overlap is None
    assert abs(sum(info.per_module_share.values()) - 1.0) < 1e-3


def test_fish_dip_with_all_examples_equals_fish(
    tiny_t5: core.LoadedBase, ner_spec: core.TaskSpec, ner_train: list[dict[str, Any]]
) -> None:
    n = len(ner_train)
    a = make_run(tiny_t5, ner_spec, ner_train, "fish_dip", regressing_examples=n, refresh_every=10**6)
    b = make_run(tiny_t5, ner_spec, ner_train, "fish", regressing_examples=n)
    a.choose_mask(0)
    b.choose_mask(0)
    assert a.mask is not None and b.mask is not None and a.mask.keys() == b.mask.keys()
    assert all(torch.equal(a.mask[k], b.mask[k]) for k in a.mask)


def test_random_mask_differs_from_fisher_mask(
    tiny_t5: core.LoadedBase, ner_spec: core.TaskSpec, ner_train: list[dict[str, Any]]
) -> None:
    a = make_run(tiny_t5, ner_spec, ner_train, "random")
    b = make_run(tiny_t5, ner_spec, ner_train, "fish")
    a.choose_mask(0)
    b.choose_mask(0)
    assert a.mask is not None and b.mask is not None
    assert M.count_positions(a.mask) == M.count_positions(b.mask) == a.k
    assert (M.overlap(a.mask, b.mask) or 0) < 0.5


def test_sparse_adamw_carries_state_over_for_kept_entries() -> None:
    p = torch.nn.Parameter(torch.zeros(6))
    opt = SparseAdamW({"p": p}, {"p": torch.tensor([0, 1, 4])}, lr=0.1)
    opt.grads = {"p": torch.tensor([1.0, 2.0, 3.0])}
    opt.step()
    m_before = opt.exp_avg["p"].clone()
    opt.set_mask({"p": torch.tensor([1, 2, 4])})
    assert opt.index["p"].tolist() == [1, 2, 4]
    assert opt.exp_avg["p"].tolist() == [m_before[1].item(), 0.0, m_before[2].item()]
    assert p.detach()[[3, 5]].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("bias_correction", ["global", "per_entry"])
def test_sparse_adamw_bias_corrects_entries_new_to_the_mask(bias_correction: str) -> None:
    """An entry that joins the mask at step 50 moves as under a fresh Adam when corrected by
    its own steps; corrected by the run's steps, it moves 0.7x a fresh Adam's step at first
    and 1.6x by its 10th step (steady gradient). Entries kept across the refresh step alike."""
    lr = 0.01
    p = torch.nn.Parameter(torch.zeros(4))
    opt = SparseAdamW({"p": p}, {"p": torch.tensor([0, 1])}, lr=lr, bias_correction=bias_correction)  # type: ignore[arg-type]
    fresh_p = torch.nn.Parameter(torch.zeros(1))
    fresh = SparseAdamW({"p": fresh_p}, {"p": torch.tensor([0])}, lr=lr)
    for _ in range(50):
        opt.grads = {"p": torch.tensor([1.0, 1.0])}
        opt.step()
    kept_before = p.detach()[1].item()
    opt.set_mask({"p": torch.tensor([1, 2])})
    new_steps, fresh_steps, kept_steps = [], [], []
    for _ in range(10):
        before, fresh_before = p.detach().clone(), fresh_p.detach().clone()
        opt.grads, fresh.grads = {"p": torch.tensor([1.0, 1.0])}, {"p": torch.tensor([1.0])}
        opt.step()
        fresh.step()
        new_steps.append((before - p.detach())[2].item())
        kept_steps.append((before - p.detach())[1].item())
        fresh_steps.append((fresh_before - fresh_p.detach()).item())
    ratios = [a / b for a, b in zip(new_steps, fresh_steps, strict=True)]
    if bias_correction == "per_entry":
        assert ratios == pytest.approx([1.0] * 10, rel=1e-5)
    else:
        b1, b2 = opt.betas
        want = [
            ((1 - b1**k) / (1 - b1 ** (50 + k))) / math.sqrt((1 - b2**k) / (1 - b2 ** (50 + k)))
            for k in range(1, 11)
        ]
        assert ratios == pytest.approx(want, rel=1e-4)
        assert ratios[0] < 0.75 and ratios[-1] > 1.5
    assert kept_steps == pytest.approx([lr] * 10, rel=1e-4) and kept_before < 0  # moved before too
    assert p.detach()[[0, 3]].tolist() != [0.0, 0.0] and p.detach()[3].item() == 0.0
    assert opt.state_bytes() == 2 * (8 + 4 + 4 + (4 if bias_correction == "per_entry" else 0))


def test_method_config_validation_lists_every_problem() -> None:
    with pytest.raises(core.ConfigError) as err:
        MethodConfig.from_dict({"type": "lora", "sparsity": 2, "refresh_every": 0, "bogus": 1})
    locs = sorted(p.loc for p in err.value.problems)
    assert locs == ["/bogus", "/refresh_every", "/sparsity", "/type"]
    assert MethodConfig.from_dict({"regressing_examples": "auto"}).regressing_examples is None


def test_train_config_validation_lists_every_problem() -> None:
    with pytest.raises(core.ConfigError) as err:
        TrainConfig.from_dict({"optimizer": "sgd", "bias_correction": "sometimes", "epochs": 0})
    assert sorted(p.loc for p in err.value.problems) == ["/bias_correction", "/epochs", "/optimizer"]
    assert TrainConfig.from_dict({"bias_correction": "per_entry"}).bias_correction == "per_entry"
    assert TrainConfig.from_dict({"bias_correction": "auto"}).bias_correction == "global"


def test_row_sparse_output_layer_gives_the_same_gradients(
    tiny_causal: core.LoadedBase, ner_spec: core.TaskSpec, ner_train: list[dict[str, Any]]
) -> None:
    run = make_run(tiny_causal, ner_spec, ner_train, "fish")
    weight = run.model.get_output_embeddings().weight
    rows = torch.tensor([3, 1012, 2000, 7])

    def grads(head_rows: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        run.model.zero_grad(set_to_none=True)
        run.run.head_rows = head_rows
        loss = run.run.batch_loss(run.batch([0, 1, 2]))
        loss.backward()
        others = {
            n: p.grad.clone()
            for n, p in run.model.named_parameters()
            if p is not weight and p.grad is not None
        }
        return loss.detach(), {"weight": weight.grad.to_dense(), **others}

    dense_loss, dense = grads(None)
    sparse_loss, sparse = grads(rows)
    assert torch.equal(dense_loss, sparse_loss)
    # Rows outside head_rows differ by design (only the input-embedding gradient lands there).
    torch.testing.assert_close(sparse["weight"][rows], dense["weight"][rows])
    for n in dense:
        if n != "weight":
            torch.testing.assert_close(sparse[n], dense[n], rtol=1e-5, atol=1e-7)


def test_gather_reads_sparse_row_gradients_like_dense_ones() -> None:
    gen = torch.Generator().manual_seed(0)
    dense = torch.zeros(50, 4)
    rows = torch.tensor([3, 17, 3, 42])  # a repeated row, as two lookups of one token give
    vals = torch.randn(4, 4, generator=gen)
    dense.index_add_(0, rows, vals)
    sparse = torch.sparse_coo_tensor(rows.unsqueeze(0), vals, (50, 4), check_invariants=True)
    index = torch.tensor([0, 12, 13, 15, 68, 69, 168, 199])
    assert torch.equal(_gather(sparse, index), _gather(dense, index))
    assert _gather(sparse, index)[2] != 0  # row 3 (flat 12..15) is in the gradient


def test_sparse_row_gradients_give_the_same_adamw_step(
    tiny_causal: core.LoadedBase,
    ner_spec: core.TaskSpec,
    ner_train: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def one_step(sparse: bool) -> dict[str, torch.Tensor]:
        run = make_run(tiny_causal, ner_spec, ner_train, "fish", "adamw")
        run.choose_mask(0)
        assert run.mask is not None and "model.embed_tokens.weight" in run.mask
        opt = run.build_optimizer()
        if not sparse:  # dense lookup gradient and the full output-layer gradient
            monkeypatch.setattr(M, "sparse_lookup_gradients", lambda model: contextlib.nullcontext())
            run.run.head_rows = None
        run.train_step(opt, [0, 1, 2])
        monkeypatch.undo()
        return {n: p.detach().clone() for n, p in run.model.named_parameters()}

    sparse, dense = one_step(True), one_step(False)
    moved = 0
    for n in dense:
        torch.testing.assert_close(sparse[n], dense[n], rtol=1e-6, atol=1e-8)
        moved += int((sparse[n] != tiny_causal.model.get_parameter(n)).sum())
    assert moved > 0


def _fresh_fingerprint(base: core.LoadedBase) -> str:
    from core.models import fingerprint_module

    return fingerprint_module(base.model)


@pytest.mark.parametrize(
    ("which", "optimizer", "bf16"),
    [
        ("tiny_t5", "adafactor", False),
        ("tiny_t5", "adamw", False),
        ("tiny_causal", "adafactor", False),
        ("tiny_causal", "adamw", False),
        ("tiny_causal", "adamw", True),  # the quality study's setting on gemma: AdamW under bf16 autocast
    ],
)
def test_a_sparse_fit_on_the_lent_base_equals_one_on_a_copy_and_gives_the_base_back(
    request: pytest.FixtureRequest,
    which: str,
    optimizer: str,
    bf16: bool,
    ner_spec: core.TaskSpec,
    ner_train: list[dict[str, Any]],
) -> None:
    base: core.LoadedBase = request.getfixturevalue(which)
    before = _fresh_fingerprint(base)
    assert before == base.fingerprint
    m = MethodConfig(type="fish_dip", sparsity=0.01, refresh_every=2)
    config = TrainConfig(
        optimizer=optimizer, batch_size=2, max_steps=5, seed=7, learning_rate=1e-2, bf16=bf16
    )
    lent = core.fit(base, ner_spec, ner_train, method=m, config=config)
    assert lent.config.bf16 is bf16

    cfg = resolve_config(config, m, len(ner_train))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        copied = _train(_Run(base, ner_spec, ner_train, cfg, m, core.Callbacks(), lambda: False), None)

    assert lent.model is not base.model
    assert _fresh_fingerprint(base) == before  # every moved entry got its base value back
    assert not base.model.training
    assert all(p.requires_grad and p.grad is None for p in base.model.parameters())
    moved = 0
    for (n, a), (_, b) in zip(lent.model.named_parameters(), copied.model.named_parameters(), strict=True):
        assert torch.equal(a.detach().view(torch.int32), b.detach().view(torch.int32)), n
        moved += int((a.detach() != base.model.get_parameter(n).detach()).sum())
    assert moved > 0

    def refreshes(r: core.FitResult) -> list[tuple[Any, ...]]:
        events = [h for h in r.history if h["event"] == "mask_refresh"]
        return [(h["step"], h["example_ids"], h["overlap"]) for h in events]

    assert len(refreshes(lent)) == 3 and refreshes(lent) == refreshes(copied)


def _sparse_fit(
    base: core.LoadedBase,
    spec: core.TaskSpec,
    train: list[dict[str, Any]],
    steps: int,
    callbacks: core.Callbacks,
    should_stop: Any = None,
) -> core.FitResult:
    """fish_dip with AdamW, a refresh every 2 steps."""
    return core.fit(
        base,
        spec,
        train,
        method=MethodConfig(type="fish_dip", sparsity=0.01, refresh_every=2),
        config=TrainConfig(optimizer="adamw", batch_size=2, max_steps=steps, learning_rate=1e-2),
        callbacks=callbacks,
        should_stop=should_stop,
    )


@pytest.mark.parametrize("how", ["cancelled", "failed"])
def test_a_sparse_fit_that_stops_early_gives_the_base_back(
    tiny_causal: core.LoadedBase, ner_spec: core.TaskSpec, ner_train: list[dict[str, Any]], how: str
) -> None:
    before = _fresh_fingerprint(tiny_causal)
    steps: list[int] = []

    class Boom(core.Callbacks):
        def on_step(self, info: core.StepInfo) -> None:
            steps.append(info.step)
            if how == "failed" and info.step == 3:
                raise RuntimeError("a callback failed")

    with pytest.raises(core.FitCancelled if how == "cancelled" else RuntimeError):
        _sparse_fit(tiny_causal, ner_spec, ner_train, 20, Boom(), should_stop=lambda: len(steps) >= 3)
    assert steps == [1, 2, 3]  # past a mask refresh, with moved weights
    assert _fresh_fingerprint(tiny_causal) == before
    assert not tiny_causal.model.training


def test_a_copy_of_the_base_waits_for_a_sparse_fit_on_it(
    tiny_causal: core.LoadedBase, ner_spec: core.TaskSpec, ner_train: list[dict[str, Any]]
) -> None:
    """What a full fit, apply_delta or SharedBase copies from another thread is the base's
    own weights, never the values a sparse fit has moved them to."""
    before = _fresh_fingerprint(tiny_causal)
    copies: list[torch.nn.Module] = []
    taker = threading.Thread(target=lambda: copies.append(tiny_causal.model_copy()))

    class Midway(core.Callbacks):
        def on_step(self, info: core.StepInfo) -> None:
            if info.step == 2:  # masked entries have moved
                taker.start()
                taker.join(timeout=0.5)
                assert not copies  # still waiting for the fit

    _sparse_fit(tiny_causal, ner_spec, ner_train, 4, Midway())
    taker.join(timeout=60)
    assert len(copies) == 1
    assert _fresh_fingerprint(tiny_causal.bind(copies[0])) == before
