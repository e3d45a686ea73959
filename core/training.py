"""fit(): the FISH-DIP training loop and its baselines (fish, random, full).

Decisions on the pitfalls FISHDIP.md lists:

* Number of Fisher examples: the paper's rule (clamp(int(0.1 * batches per epoch), 3, 25),
  which is 3 for any small set) is the default and is configurable
  (``MethodConfig.regressing_examples``); it is capped at the training-set size.
* Padding: labels are ``-100`` wherever there is padding, so padding counts neither in the
  loss nor in the ranking of examples; an example's loss is the mean over its own tokens.
* Step counters: every ``fit`` call builds its own optimizer, schedule and counters; nothing
  carries over between runs.
* The first mask is chosen in eval mode, refreshes in train mode (dropout on), as in the
  paper. A refresh REPLACES the mask; weights moved earlier keep their values, so the set of
  touched parameters grows and the artifact stores every parameter that differs from the base.
* Gradients are masked before clipping; Adafactor without momentum then gives exactly zero
  update off the mask; AdamW uses :class:`~core.optim.SparseAdamW` (state only for masked
  entries). Tensors with no masked entry do not compute gradients at all.
* Memory: a sparse fit trains the base's own tensors instead of a copy of them (on
  gemma-3-270m a copy is 1.07 GB, a fifth of the run's peak). Each mask's entries are
  saved before they first move, and the base gets those values back when the fit ends,
  whether it finishes, fails or is cancelled; the fine-tuned model is then a copy taken at
  the end, when training's activations and optimizer state are gone. ``full`` changes every
  entry, so it trains a copy. While a sparse fit runs, the base's ``weights_lock`` is held:
  core's readers of the base's values (``LoadedBase.model_copy``, which every fit, apply_delta
  and SharedBase copy through, and save_delta) wait for it; do not predict with the bare base
  from another thread meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from . import masks as M
from .config import MethodConfig, TrainConfig, regressing_count, resolve_config
from .errors import ConfigError, FitCancelled
from .extraction import predict
from .hardware import flush_denormals, native_bf16
from .head_loss import WeightGradSink
from .memory import release_free_memory
from .models import LoadedBase
from .optim import SparseAdamW, adafactor, linear_decay, set_lr
from .tasks import TaskSpec, get_task

log = logging.getLogger(__name__)

# bf16 autocast is on by default for real-size bases on hardware with native bf16 matmuls: on
# gemma-3-270m it gives ~1.5x faster steps with a loss within 0.2% of fp32 on an AVX512-BF16
# CPU, while on an AVX2-only one a full step took 36x as long as in fp32 (docs/BENCHMARKS.md).
# Tiny test models stay in fp32.
BF16_AUTO_MIN_PARAMETERS = 50_000_000


def auto_bf16(base: LoadedBase) -> bool:
    """What ``bf16=None`` ("auto") means for ``base`` where it is loaded."""
    return base.parameter_count() > BF16_AUTO_MIN_PARAMETERS and native_bf16(base.device)


@dataclass(frozen=True)
class StepInfo:
    step: int
    total_steps: int
    loss: float
    lr: float
    elapsed_s: float


@dataclass(frozen=True)
class EvalInfo:
    step: int
    metrics: dict[str, Any]


@dataclass(frozen=True)
class MaskRefreshInfo:
    step: int
    selected: int
    total_parameters: int
    overlap: float | None  # share of this mask's entries that were in the previous mask
    touched: float  # share of all parameters in the union of every mask so far
    per_module_share: dict[str, float]
    example_ids: list[int]  # the examples the Fisher was computed from (most regressing for fish_dip)
    example_losses: dict[int, float]  # every training example's loss at this refresh (fish_dip)
    seconds: float


class Callbacks:
    """Override what you need; every hook is optional."""

    def on_step(self, info: StepInfo) -> None: ...

    def on_evaluation(self, info: EvalInfo) -> None: ...

    def on_mask_refresh(self, info: MaskRefreshInfo) -> None: ...


@dataclass
class FitResult:
    model: nn.Module
    base_name: str
    config: TrainConfig
    method: MethodConfig
    spec: TaskSpec
    steps: int
    train_loss: float
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    final_example_losses: dict[int, float] = field(default_factory=dict)
    stopped: str = "completed"  # completed | early_stop


def _never() -> bool:
    return False


class _Run:
    """State of one fit() call; methods are the loop's phases."""

    def __init__(
        self,
        base: LoadedBase,
        spec: TaskSpec,
        train: Sequence[Mapping[str, Any]],
        cfg: TrainConfig,
        method: MethodConfig,
        callbacks: Callbacks,
        should_stop: Callable[[], bool],
        lent: _Lent | None = None,
    ) -> None:
        self.task = get_task(spec.type)
        self.spec, self.cfg, self.method, self.cb, self.should_stop = (
            spec,
            cfg,
            method,
            callbacks,
            should_stop,
        )
        # Lent: the base's own tensors, each entry's base value kept before it first moves.
        self.lent = lent
        self.model = base.model if lent is not None else base.model_copy()
        self.run = base.bind(self.model)
        self.sources = [self.task.source(ex, spec) for ex in train]
        self.targets = [self.task.target(ex, spec) for ex in train]
        self.params = dict(self.model.named_parameters())
        self.total = sum(p.numel() for p in self.params.values())
        self.k = M.mask_size(method.sparsity, self.total)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.mask: M.Positions | None = None
        self.touched: M.Positions | None = None
        self.history: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------------ losses
    def batch(self, ids: Sequence[int]) -> Any:
        return self.run.collate([self.sources[i] for i in ids], [self.targets[i] for i in ids]).to(
            self.run.device
        )

    def autocast(self) -> Any:
        return torch.autocast(self.run.device.type, dtype=torch.bfloat16, enabled=bool(self.cfg.bf16))

    @torch.no_grad()
    def all_losses(self) -> list[float]:
        out: list[float] = []
        bs = max(1, 2 * (self.cfg.batch_size or 8))
        for i in range(0, len(self.sources), bs):
            self.check_stop()
            with self.autocast():
                out += self.run.example_losses(self.batch(range(i, min(i + bs, len(self.sources))))).tolist()
        return out

    def check_stop(self) -> None:
        if self.should_stop():
            raise FitCancelled("training was cancelled")

    # ------------------------------------------------------------------ masks
    def choose_mask(self, step: int) -> None:
        """Choose (or re-choose) the mask, switch gradients to it and report the refresh."""
        t = time.perf_counter()
        for p in self.params.values():
            p.requires_grad_(True)
        self.run.head_rows = None  # the Fisher needs every entry's gradient
        release_free_memory()  # the refresh is the run's memory peak: start it from what is alive
        chosen, ids, losses = self.select(step)
        # Kept as positions: a boolean mask costs one byte a parameter, at the step's peak.
        new = M.positions(chosen)
        del chosen
        overlap = M.overlap(self.mask, new)
        if self.lent is not None:
            self.lent.keep(new, self.touched)
        self.mask, self.touched = new, M.union(self.touched, new)
        for name, p in self.params.items():
            p.requires_grad_(name in new)
        self.run.head_rows = self.head_rows(new)
        self.model.train()
        release_free_memory()  # the Fisher scores and gradients just freed
        info = MaskRefreshInfo(
            step=step,
            selected=M.count_positions(new),
            total_parameters=self.total,
            overlap=overlap,
            touched=M.count_positions(self.touched) / self.total,
            per_module_share=M.per_module_share(new),
            example_ids=ids,
            example_losses={i: round(v, 6) for i, v in losses.items()},
            seconds=time.perf_counter() - t,
        )
        self.history.append({"event": "mask_refresh", **info.__dict__})
        self.cb.on_mask_refresh(info)

    def select(self, step: int) -> tuple[M.Mask, list[int], dict[int, float]]:
        """The method's mask, the examples its Fisher came from, and (fish_dip) every loss."""
        if self.method.type == "random":
            return M.random_mask(self.model, self.k, self.gen), [], {}
        n = regressing_count(self.method, len(self.sources), self.cfg.batch_size or 8)
        losses: dict[int, float] = {}
        if self.method.type == "fish_dip":
            self.model.train(step > 0)  # first mask in eval mode, refreshes with dropout on
            losses = dict(enumerate(self.all_losses()))
            ids = sorted(losses, key=lambda i: (-losses[i], i))[:n]
        else:
            self.model.eval()
            ids = torch.randperm(len(self.sources), generator=self.gen)[:n].tolist()
        return M.top_k_mask(self.fisher(ids), self.k, self.gen), ids, losses

    def head_rows(self, mask: M.Positions) -> torch.Tensor | None:
        """Rows of a decoder-only model's output layer that hold masked entries."""
        if self.run.family != "decoder-only":
            return None
        model: Any = self.model
        weight = model.get_output_embeddings().weight
        name = next((n for n, p in self.params.items() if p is weight), None)
        if name is None or weight.dim() != 2:
            return None
        if name not in mask:
            return torch.zeros(0, dtype=torch.long, device=weight.device)
        return M.row_positions(mask[name], weight.shape[1]).to(weight.device)

    def fisher(self, ids: Sequence[int]) -> M.Scores:
        def loss_of(sel: Sequence[int]) -> torch.Tensor:
            # In fp32 even when training uses bf16 autocast: the passes are few (one example
            # each), and autocast's bf16 weight copies would stay alive through each backward
            # (+0.5 GB at the refresh's memory peak on gemma-3-270m).
            self.check_stop()
            return self.run.batch_loss(self.batch([ids_[j] for j in sel]))

        # Sum in index order, so the same examples give bit-identical scores whatever order
        # they were chosen in (fish_dip ranks by loss, fish draws at random).
        ids_ = sorted(ids)

        def bind_head(sink: WeightGradSink | None) -> None:
            self.run.head_grad_sink = sink  # the output layer's gradient, a block of rows at a time

        return M.fisher_scores(
            self.model,
            loss_of,
            range(len(ids_)),
            per_example=self.method.fisher == "per_example",
            bind_head=bind_head,
        )

    # ------------------------------------------------------------------ optimizer
    def build_optimizer(self) -> torch.optim.Optimizer | SparseAdamW:
        lr = float(self.cfg.learning_rate or 0.0)
        if self.cfg.optimizer == "adamw" and self.mask is not None:
            return SparseAdamW(
                self.params,
                self.mask,
                lr,
                weight_decay=self.cfg.weight_decay,
                bias_correction=self.cfg.bias_correction,
            )
        if self.cfg.optimizer == "adamw":
            return torch.optim.AdamW(list(self.params.values()), lr=lr, weight_decay=self.cfg.weight_decay)
        return adafactor(list(self.params.values()), lr)

    def train_step(self, opt: torch.optim.Optimizer | SparseAdamW, ids: Sequence[int]) -> float:
        batch = self.batch(ids)
        if isinstance(opt, SparseAdamW):
            # Row gradients of the embedding stay sparse: SparseAdamW gathers them directly.
            with opt.gather_gradients(), M.sparse_lookup_gradients(self.model):
                with self.autocast():
                    loss = self.run.batch_loss(batch)
                loss.backward()  # type: ignore[no-untyped-call]
            opt.clip(self.cfg.max_grad_norm)
            opt.step()
            return float(loss.detach())
        with self.autocast():
            loss = self.run.batch_loss(batch)
        loss.backward()  # type: ignore[no-untyped-call]
        if self.mask is not None:
            for name, p in self.params.items():
                if p.grad is not None:
                    if p.grad.is_sparse:  # the row-sparse output layer alone (untied)
                        p.grad = p.grad.to_dense()
                    M.keep_only(p.grad, self.mask[name])
        if self.cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(
                [p for p in self.params.values() if p.grad is not None], self.cfg.max_grad_norm
            )
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def fit(
    base: LoadedBase,
    spec: TaskSpec,
    train_examples: Sequence[Mapping[str, Any]],
    validation_examples: Sequence[Mapping[str, Any]] | None = None,
    method: MethodConfig | None = None,
    config: TrainConfig | None = None,
    callbacks: Callbacks | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FitResult:
    """Fine-tune ``base`` on validated examples (``task.validate(...).examples``) into a new
    model (``FitResult.model``); the base is left as it was. Sparse methods train the base's
    own tensors meanwhile and hold ``base.weights_lock`` (see the module's notes).

    Deterministic for a seed on a given device. Raises :class:`FitCancelled` within one step
    of ``should_stop()`` returning True.
    """
    flush_denormals()
    method = method or MethodConfig()
    task = get_task(spec.type)
    problems = task.validate_spec(spec)
    if problems:
        raise ConfigError(problems)
    cfg = resolve_config(config or TrainConfig(), method, len(train_examples))
    if cfg.bf16 is None:
        cfg = replace(cfg, bf16=auto_bf16(base))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _fit(
            base,
            spec,
            train_examples,
            validation_examples,
            method,
            cfg,
            callbacks or Callbacks(),
            should_stop or _never,
        )


class _Lent:
    """A base's tensors lent to one sparse fit: the base value of every entry a mask
    selects is saved before training can move it, and :meth:`restore` writes them all back,
    with the parameters' flags and the model's mode."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.params = dict(model.named_parameters())
        self.requires_grad = {n: p.requires_grad for n, p in self.params.items()}
        self.training = model.training
        self.saved: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def keep(self, mask: M.Positions, touched: M.Positions | None) -> None:
        """Save the base values of ``mask``'s entries that no earlier mask selected (those
        still hold them: only masked entries move)."""
        for name, pos in mask.items():
            if touched is not None and name in touched:
                pos = pos[~torch.isin(pos, touched[name])]
            if pos.numel():
                flat = self.params[name].detach().view(-1)
                self.saved.append((name, pos, flat[pos].clone()))

    @torch.no_grad()
    def restore(self) -> None:
        for name, pos, values in self.saved:
            self.params[name].view(-1).index_copy_(0, pos, values)
        self.saved = []
        for name, p in self.params.items():
            p.grad = None
            p.requires_grad_(self.requires_grad[name])
        self.model.train(self.training)


def _fit(
    base: LoadedBase,
    spec: TaskSpec,
    train: Sequence[Mapping[str, Any]],
    validation: Sequence[Mapping[str, Any]] | None,
    method: MethodConfig,
    cfg: TrainConfig,
    cb: Callbacks,
    should_stop: Callable[[], bool],
) -> FitResult:
    if not method.sparse:
        return _train(_Run(base, spec, train, cfg, method, cb, should_stop), validation)
    base.fingerprint  # noqa: B018 (computed, if it was not yet, from the base's own values)
    with base.weights_lock:
        lent = _Lent(base.model)
        try:
            result = _train(_Run(base, spec, train, cfg, method, cb, should_stop, lent), validation)
            # The fine-tuned weights as a model of their own, copied now that training's
            # activations and optimizer state are gone; then the base gets its values back.
            result.model = base.model_copy()
        finally:
            lent.restore()
    return result


def _train(r: _Run, validation: Sequence[Mapping[str, Any]] | None) -> FitResult:
    cfg, method, cb, spec = r.cfg, r.method, r.cb, r.spec
    total, bs, n = int(cfg.total_steps or 0), int(cfg.batch_size or 8), len(r.sources)
    if method.sparse:
        r.choose_mask(0)
    r.model.train()
    opt = r.build_optimizer()
    order: list[int] = []
    calm, loss, metrics, stopped, step = 0, float("nan"), {}, "completed", 0
    for step in range(1, total + 1):
        r.check_stop()
        if method.type == "fish_dip" and step % method.refresh_every == 0:
            r.choose_mask(step)
            if isinstance(opt, SparseAdamW) and r.mask is not None:
                opt.set_mask(r.mask)
        if len(order) < bs:
            order += torch.randperm(n, generator=r.gen).tolist()
        ids, order = order[:bs], order[bs:]
        lr = linear_decay(float(cfg.learning_rate or 0.0), step, total)
        set_lr(opt, lr)
        loss = r.train_step(opt, ids)
        info = StepInfo(step, total, loss, lr, time.perf_counter() - r.t0)
        r.history.append({"event": "step", **info.__dict__})
        cb.on_step(info)
        calm = calm + 1 if loss < cfg.early_stop_loss else 0
        done = calm >= cfg.early_stop_patience
        if validation and (step % int(cfg.eval_every or total) == 0 or step == total or done):
            metrics = evaluate(r.run, spec, validation, cfg.eval_batch_size, cfg.max_new_tokens)
            r.history.append({"event": "evaluation", "step": step, "metrics": metrics})
            cb.on_evaluation(EvalInfo(step, metrics))
            r.model.train()
        if done:
            stopped = "early_stop"
            break
    r.model.eval()
    for p in r.params.values():
        p.requires_grad_(True)
    final = dict(enumerate(round(v, 6) for v in r.all_losses()))
    return FitResult(r.model, r.run.name, cfg, method, spec, step, loss, metrics, r.history, final, stopped)


def evaluate(
    run: LoadedBase,
    spec: TaskSpec,
    examples: Sequence[Mapping[str, Any]],
    batch_size: int = 32,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """The task's metric on ``examples`` with greedy decoding (model put in eval mode)."""
    task = get_task(spec.type)
    run.model.eval()
    preds = predict(run, spec, list(examples), batch_size, max_new_tokens)
    return task.metric(spec, [task.gold(ex) for ex in examples], preds)
