"""Cross-entropy through a large output layer, a few tokens at a time.

On gemma-3-270m the output layer has 262,144 rows. Applied in one piece to the ~300 target
tokens of a batch of 8, its logits are a [300, 262144] fp32 tensor (315 MB); autograd keeps
them and their log-softmax for the backward pass and builds two more of that size while it
runs: about 1.2 GB at a training step's memory peak, for a scalar loss.

Here the logits exist one chunk of tokens at a time (``CHUNK_ELEMENTS`` logits, 64 MB).
Because the loss is the last operation of the graph, its gradients are computed in the
same pass (softmax minus one-hot, times the layer) and kept until backward, which only
scales them by the incoming gradient: the matrix products are the ones an unchunked
backward does, with no recomputation. What is kept is small: the gradient for the hidden
states, plus the weight's gradient when the weight trains (dense, or only the rows of a
row-sparse output layer; see :meth:`core.models.LoadedBase.batch_loss`).

For the Fisher pass, which squares each entry's gradient, the weight's gradient can instead
be handed over as a :class:`RowGradient`: the softmax gradients and hidden states whose
product it is, so that the caller computes it a block of rows at a time and never holds the
whole [vocab, d] gradient (670 MB on gemma, at the mask refresh's memory peak).

Limits: the graph can be backpropagated once (no ``retain_graph`` reuse), and the gradients
are computed whenever an input requires one, so call it under ``torch.no_grad()`` (or use
:func:`token_logprobs`) when no backward pass follows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

CHUNK_ELEMENTS = 1 << 24  # logits per chunk: 64 MB in fp32
# When the whole weight trains (full fine-tuning, the Fisher pass), every chunk adds into a
# [vocab, d] gradient (670 MB on gemma): memory-bound, so fewer, larger chunks (256 MB).
DENSE_CHUNK_ELEMENTS = 1 << 26


class RowGradient:
    """The gradient of an output layer's weight, ``g.T @ h`` ([vocab, d]). Kept as its two
    factors (``g`` [tokens, vocab] softmax gradients, ``h`` [tokens, d] hidden states) when
    they are smaller than the product, else as the product; :meth:`rows` gives a block."""

    def __init__(
        self, g: torch.Tensor | None = None, h: torch.Tensor | None = None, dense: torch.Tensor | None = None
    ):
        if (dense is None) == (g is None or h is None):
            raise ValueError("either both factors or the dense gradient")
        self.g, self.h, self.dense = g, h, dense

    @property
    def num_rows(self) -> int:
        return int(self.dense.shape[0] if self.dense is not None else self.g.shape[1])  # type: ignore[union-attr]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of the gradient, fp32, as a new tensor the caller may modify."""
        if self.dense is not None:
            return self.dense[start:stop].float()
        assert self.g is not None and self.h is not None
        return (self.g[:, start:stop].T @ self.h).float()

    def scale_(self, factor: torch.Tensor) -> None:
        t = self.dense if self.dense is not None else self.g
        assert t is not None
        t.mul_(factor.to(t.dtype))


WeightGradSink = Callable[[RowGradient], None]


def chunk_tokens(vocab: int, elements: int = CHUNK_ELEMENTS) -> int:
    return max(1, elements // max(1, vocab))


def compute_dtype(h: torch.Tensor) -> torch.dtype:
    """The matmul dtype autocast would use for ``h`` here (the loss itself is always fp32)."""
    kind = h.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else h.dtype


def _logits(
    hc: torch.Tensor, w: torch.Tensor, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 logits of a chunk, and tanh(z / cap) where the model soft-caps its logits."""
    z = (hc @ w.T).float()
    if not softcap:
        return z, None
    t = z.div_(softcap).tanh_()
    return t * softcap, t


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        h: torch.Tensor,
        weight: torch.Tensor,
        picked: torch.Tensor | None,
        rows: torch.Tensor | None,
        targets: torch.Tensor,
        softcap: float | None,
        dtype: torch.dtype,
        chunk: int,
        sink: WeightGradSink | None,
    ) -> torch.Tensor:
        need_h, need_w, need_p = ctx.needs_input_grad[:3]
        n, (vocab, d) = h.shape[0], weight.shape
        # The factors g [n, vocab] and h [n, d] take less room than their product when n < d.
        factored = sink is not None and n < d
        dense_w = need_w or (sink is not None and not factored)
        ctx.sink = None
        with torch.autocast(h.device.type, enabled=False):
            w = weight.detach().to(dtype)  # one cast per call, not one per chunk
            gh = torch.empty_like(h) if need_h else None
            gw = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if dense_w else None
            gp = torch.zeros_like(picked, dtype=dtype) if picked is not None and need_p else None
            gf = torch.empty((n, vocab), dtype=dtype, device=h.device) if factored else None
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            for s in range(0, n, chunk):
                hc, tc = h[s : s + chunk].detach().to(dtype), targets[s : s + chunk]
                z, t = _logits(hc, w, softcap)
                lse = torch.logsumexp(z, 1)
                total += (lse - z.gather(1, tc[:, None]).squeeze(1)).sum()
                if not (need_h or need_p or sink is not None or gw is not None):
                    continue
                g = z.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                g[torch.arange(tc.numel(), device=g.device), tc] -= 1.0
                if t is not None:
                    g.mul_(t.square_().neg_().add_(1.0))  # through cap * tanh(z / cap)
                g.div_(max(1, n))  # the mean over tokens
                gd = g.to(dtype)
                if gh is not None:
                    gh[s : s + chunk] = (gd @ w).to(h.dtype)
                # Accumulated in place, in the matmul dtype (as autocast's backward gives it):
                # a product then a sum would need a [vocab, d] temporary per chunk, and on
                # this CPU a bf16 addmm is 2x faster than fp32 and 6x faster than product+sum.
                if gw is not None:
                    gw.addmm_(gd.T, hc)
                if gf is not None:
                    gf[s : s + chunk] = gd
                if gp is not None and rows is not None:
                    gp.addmm_(gd[:, rows].T, hc)
        if sink is not None:
            ctx.sink = (sink, RowGradient(gf, h.detach().to(dtype)) if factored else RowGradient(dense=gw))
            gw = None
        ctx.grads = (gh, gw, gp, weight.dtype, None if picked is None else picked.dtype)
        return total / max(1, n)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.grads is None:
            raise RuntimeError("the output-layer loss can be backpropagated once (no retain_graph reuse)")
        gh, gw, gp, w_dtype, p_dtype = ctx.grads
        ctx.grads = None
        if ctx.sink is not None:
            sink, weight_grad = ctx.sink
            ctx.sink = None
            weight_grad.scale_(grad)
            sink(weight_grad)
        return (
            None if gh is None else gh.mul_(grad.to(gh.dtype)),
            None if gw is None else gw.mul_(grad.to(gw.dtype)).to(w_dtype),
            None if gp is None else gp.mul_(grad.to(gp.dtype)).to(p_dtype),
            None,
            None,
            None,
            None,
            None,
            None,
        )


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    picked: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    softcap: float | None = None,
    chunk: int | None = None,
    weight_grad: WeightGradSink | None = None,
) -> torch.Tensor:
    """Mean over tokens of ``cross_entropy(softcap(h @ weight.T), targets)``.

    ``h`` [n, d] hidden states, ``weight`` [vocab, d]; ``targets`` [n]. For a row-sparse
    output layer pass the weight detached and ``picked`` = the weight's ``rows`` as a
    differentiable tensor (equal in value): the gradient then reaches those rows only.
    With ``weight_grad``, the weight (passed detached) gets no ``.grad``: during backward,
    ``weight_grad`` receives its gradient as a :class:`RowGradient` instead.
    """
    if (picked is None) != (rows is None):
        raise ValueError("picked and rows go together")
    if weight_grad is not None and (weight.requires_grad or picked is not None):
        raise ValueError("weight_grad takes a detached weight, without picked rows")
    dense = (weight.requires_grad or weight_grad is not None) and torch.is_grad_enabled()
    step = chunk or chunk_tokens(weight.shape[0], DENSE_CHUNK_ELEMENTS if dense else CHUNK_ELEMENTS)
    out: torch.Tensor = _LinearCrossEntropy.apply(  # type: ignore[no-untyped-call]
        h, weight, picked, rows, targets, softcap, compute_dtype(h), step, weight_grad
    )
    return out


def token_logprobs(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    softcap: float | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """log p(target) of every token, one chunk of logits at a time. Meant for scoring under
    ``torch.no_grad()``; with grad enabled it stays correct but keeps every chunk for backward."""
    step = chunk or chunk_tokens(weight.shape[0])
    dtype = compute_dtype(h)
    w = weight.to(dtype)
    parts = []
    for s in range(0, h.shape[0], step):
        z, _ = _logits(h[s : s + step].to(dtype), w, softcap)
        parts.append(z.gather(1, targets[s : s + step, None]).squeeze(1) - torch.logsumexp(z, 1))
    return torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)
