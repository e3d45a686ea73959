"""Optimizers that leave off-mask parameters bit-identical.

* Adafactor (the paper's: no momentum, no weight decay, fixed learning rate set by our
  schedule): masking the gradient is enough, because a zero gradient gives a zero update.
* AdamW: masking the gradient is NOT enough (momentum and weight decay keep moving weights),
  so :class:`SparseAdamW` keeps its moments only for the masked entries and writes only
  those entries. Gradients are gathered at the masked indices by a hook as soon as backward
  produces them and the dense gradient is freed, so the full set of dense gradients never
  exists at once: optimizer state and gradients cost O(k), not O(parameters).

  An entry that joins the mask at a refresh starts from zero moments. Bias correction then
  counts either the optimizer's steps (``bias_correction="global"``, the default, and what
  dense AdamW does for a weight that starts receiving gradient late) or the entry's own steps
  in the mask (``"per_entry"``: each entry moves as under a fresh Adam). Under "global", for
  a steady gradient, an entry new at step 50 moves 0.7x a fresh Adam's step at first and
  1.3-1.6x from its 5th to its 50th step; the later the refresh, the larger (3.2x at most).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .config import BiasCorrection
from .masks import Positions


class SparseAdamW:
    """AdamW over the entries of a mask. Moments of entries kept across a mask refresh carry
    over; entries new to the mask start from zero moments; weight decay (decoupled) touches
    only masked entries. ``bias_correction``: see the module's docstring."""

    def __init__(
        self,
        params: dict[str, nn.Parameter],
        mask: Positions,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        bias_correction: BiasCorrection = "global",
    ) -> None:
        self.params = params
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.per_entry = bias_correction == "per_entry"
        self.step_count = 0
        self.index: dict[str, torch.Tensor] = {}
        self.exp_avg: dict[str, torch.Tensor] = {}
        self.exp_avg_sq: dict[str, torch.Tensor] = {}
        self.entry_steps: dict[str, torch.Tensor] = {}  # per_entry only: steps in the mask, as fp32
        self.grads: dict[str, torch.Tensor] = {}
        self.set_mask(mask)

    def set_mask(self, mask: Positions) -> None:
        """Switch to the mask given as sorted flat positions per parameter."""
        for name, p in self.params.items():
            m = mask.get(name)
            new = m.to(p.device) if m is not None else None
            if new is None or new.numel() == 0:
                for d in self._state():
                    d.pop(name, None)
                continue
            old = self.index.get(name)
            kept: tuple[torch.Tensor, torch.Tensor] | None = None  # kept entries: new slots, old slots
            if old is not None and old.numel():
                pos = torch.searchsorted(old, new).clamp(max=old.numel() - 1)
                hit = old[pos] == new
                kept = hit, pos[hit]
            for d in self._state()[1:]:
                t = torch.zeros(new.numel(), dtype=torch.float32, device=p.device)
                if kept is not None:
                    t[kept[0]] = d[name][kept[1]]
                d[name] = t
            self.index[name] = new

    def _state(self) -> list[dict[str, torch.Tensor]]:
        """The per-parameter state, the index first: all but the index are carried over by
        position at a mask refresh."""
        state = [self.index, self.exp_avg, self.exp_avg_sq]
        return [*state, self.entry_steps] if self.per_entry else state

    @contextmanager
    def gather_gradients(self) -> Iterator[None]:
        """During backward, keep only the masked entries of each gradient."""
        self.grads = {}
        handles = []
        for name, p in self.params.items():
            if name not in self.index or not p.requires_grad:
                continue

            def hook(param: torch.Tensor, name: str = name) -> None:
                assert param.grad is not None
                g = _gather(param.grad.detach(), self.index[name])
                self.grads[name] = self.grads[name] + g if name in self.grads else g
                param.grad = None

            handles.append(p.register_post_accumulate_grad_hook(hook))  # type: ignore[no-untyped-call]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def clip(self, max_norm: float) -> float:
        norm = math.sqrt(sum(float(g.square().sum()) for g in self.grads.values()))
        if max_norm > 0 and norm > max_norm:
            scale = max_norm / (norm + 1e-6)
            for g in self.grads.values():
                g.mul_(scale)
        return norm

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        b1, b2 = self.betas
        c1: float | torch.Tensor = 1 - b1**self.step_count
        c2: float | torch.Tensor = 1 - b2**self.step_count
        for name, g in self.grads.items():
            idx = self.index[name]
            flat = self.params[name].data.view(-1)
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            if self.per_entry:
                t = self.entry_steps[name].add_(1)
                # 1 - b**t as -expm1(t log b): exact to fp32 rounding even for small t
                c1, c2 = -torch.expm1(t * math.log(b1)), -torch.expm1(t * math.log(b2))
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            w = flat[idx].float()
            if self.weight_decay:
                w.mul_(1 - self.lr * self.weight_decay)
            w.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-self.lr)
            flat[idx] = w.to(flat.dtype)
        self.grads = {}

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in self._state() for t in d.values())


def _gather(grad: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``grad`` at flat positions ``index``, as fp32; ``grad`` may be a sparse (row) gradient,
    as an embedding lookup or the row-sparse output layer gives."""
    if not grad.is_sparse:
        return grad.reshape(-1)[index].float()
    g = grad.coalesce()
    rows, values = g.indices()[0], g.values().reshape(g.indices().shape[1], -1)
    width = values.shape[1]
    slot = torch.full((grad.shape[0],), -1, dtype=torch.long, device=grad.device)
    slot[rows] = torch.arange(rows.numel(), device=grad.device)
    at = slot[index // width]
    hit = at >= 0
    out = torch.zeros(index.numel(), dtype=torch.float32, device=grad.device)
    out[hit] = values[at[hit], index[hit] % width].float()
    return out


def adafactor(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adafactor as the paper runs it (external learning rate with our linear decay, no
    relative step, no momentum, no weight decay), with one deliberate difference: the step is
    scaled by each tensor's RMS (``scale_parameter=True``). The paper's absolute rate 1e-2
    suits T5, whose weights are large; on Gemma 3 270M (weights ~0.03) the same absolute
    step diverged within two steps (loss 2.3 -> 44), while a relative step behaves alike
    on both. A zero gradient still gives a zero update, so masking stays exact."""
    from transformers.optimization import Adafactor

    return Adafactor(  # type: ignore[no-untyped-call]
        params,
        lr=lr,
        scale_parameter=True,
        relative_step=False,
        warmup_init=False,
        beta1=None,
        weight_decay=0.0,
    )


def set_lr(optimizer: torch.optim.Optimizer | SparseAdamW, lr: float) -> None:
    if isinstance(optimizer, SparseAdamW):
        optimizer.lr = lr
        return
    for group in optimizer.param_groups:
        group["lr"] = lr


def linear_decay(base_lr: float, step: int, total: int) -> float:
    """Linear decay to zero over the run, no warm-up (step counts from 1)."""
    return base_lr * max(0.0, 1.0 - (step - 1) / max(1, total))
