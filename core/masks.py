"""Masks: per-example losses, empirical Fisher, global top-k selection, mask statistics.

A mask is a ``dict[name, BoolTensor]`` over ``model.named_parameters()`` (which lists a tied
tensor once, so tied weights are counted once). Selection is ONE ranking over all
parameters: no per-layer quota.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .head_loss import RowGradient, WeightGradSink

Mask = dict[str, torch.Tensor]
Scores = dict[str, torch.Tensor]
# name -> sorted flat positions (int64), names with no entry left out: how training keeps a
# mask, at 8 bytes an entry instead of one byte a parameter (268 MB a mask on gemma-3-270m).
Positions = dict[str, torch.Tensor]


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def total_parameters(model: nn.Module) -> int:
    return sum(p.numel() for _, p in trainable(model))


def mask_size(ratio: float, total: int) -> int:
    return max(1, int(ratio * total))


class _SquaredGradients:
    """While installed, every backward pass adds grad**2 into ``scores`` and frees each
    gradient as soon as it is produced, so a Fisher pass never holds a full set of gradients.

    A tied input/output embedding gets its two gradients separately: during the pass the
    lookup reads a twin parameter that shares the weight's storage (with
    :func:`sparse_lookup_gradients`, its gradient is sparse: its rows only). The output
    layer's gradient waits for the lookup's rows, which are added into it before squaring.
    Summed by autograd instead, the two would cost a second copy of the 670 MB gradient of
    gemma's 262k-word embedding. Where the loss hands the output layer's gradient over as a
    :class:`~core.head_loss.RowGradient` (:meth:`head_sink`), it is never built whole: it is
    computed, combined and squared ``ROW_BLOCK`` rows at a time."""

    # Rows of an output layer's RowGradient squared at a time (21 MB of fp32 on gemma).
    ROW_BLOCK = 8192

    def __init__(self, model: nn.Module) -> None:
        self.scores: Scores = {}
        self.pending: dict[str, list[torch.Tensor | RowGradient]] = {}
        self.handles: list[Any] = []
        self.emb = _input_embedding(model)
        self.twin: nn.Parameter | None = None
        params = trainable(model)
        out = getattr(model, "get_output_embeddings", lambda: None)()
        self.head = None if out is None else next((n for n, p in params if p is out.weight), None)
        self.tied: str | None = None
        if self.emb is not None and out is not None and out.weight is self.emb.weight:
            self.original = self.emb.weight
            self.tied = self.head
        for name, p in params:
            self.scores[name] = torch.zeros_like(p, dtype=torch.float32)
            self._watch(p, name)

    def _watch(self, p: torch.Tensor, name: str) -> None:
        def hook(param: torch.Tensor) -> None:
            assert param.grad is not None
            g = param.grad.detach()
            param.grad = None
            self._receive(name, g)

        self.handles.append(p.register_post_accumulate_grad_hook(hook))  # type: ignore[no-untyped-call]

    def head_sink(self) -> WeightGradSink | None:
        """Where the output layer's loss hands over its weight gradient as a RowGradient
        (:meth:`core.models.LoadedBase.batch_loss`), so that no dense gradient is built."""
        head = self.head
        if head is None:
            return None
        return lambda g: self._receive(head, g)

    def _receive(self, name: str, g: torch.Tensor | RowGradient) -> None:
        if name != self.tied:
            self._add(name, g)
            return
        parts = self.pending.setdefault(name, [])
        parts.append(g)
        if len(parts) == 2:  # both the output layer's and the lookup's: combine, square
            a, b = self.pending.pop(name)
            if isinstance(a, RowGradient) or isinstance(b, RowGradient):
                rows, other = (a, b) if isinstance(a, RowGradient) else (b, a)
                assert isinstance(rows, RowGradient) and isinstance(other, torch.Tensor)
                self._add_rows(name, rows, other)
            else:
                self._add(name, _combine(a, b))

    def _add_rows(self, name: str, g: RowGradient, extra: torch.Tensor | None = None) -> None:
        """Square (g + extra) a block of rows at a time, into the scores."""
        s = self.scores[name]
        idx = vals = None
        if extra is not None and extra.is_sparse:
            extra = extra.coalesce()
            idx, vals = extra.indices()[0], extra.values()
        for r0 in range(0, g.num_rows, self.ROW_BLOCK):
            r1 = min(r0 + self.ROW_BLOCK, g.num_rows)
            block = g.rows(r0, r1)
            if idx is not None and vals is not None:
                lo, hi = (int(i) for i in torch.searchsorted(idx, torch.tensor([r0, r1], device=idx.device)))
                block.index_add_(0, idx[lo:hi] - r0, vals[lo:hi].to(block.dtype))
            elif extra is not None:
                block.add_(extra[r0:r1])
            s[r0:r1].addcmul_(block, block)

    def _add(self, name: str, g: torch.Tensor | RowGradient) -> None:
        # In place, with no squared temporary: for a 262k-word embedding each temporary
        # would be another 670 MB at the refresh's memory peak.
        if isinstance(g, RowGradient):
            self._add_rows(name, g)
            return
        s = self.scores[name]
        if g.is_sparse:  # an input embedding's rows
            g = g.coalesce()
            s.index_add_(0, g.indices()[0], g.values().float().square())
        elif g.dtype == torch.float32:
            s.addcmul_(g, g)
        else:
            s.add_(g.float().square())

    def flush(self) -> None:
        """After a backward pass: a tied weight used only once in it has no partner to wait for."""
        for name, parts in self.pending.items():
            for g in parts:
                self._add(name, g)
        self.pending = {}

    def __enter__(self) -> _SquaredGradients:
        if self.emb is not None and self.tied is not None:
            self.twin = nn.Parameter(self.original.data, requires_grad=True)  # same storage
            self.emb.weight = self.twin
            self._watch(self.twin, self.tied)
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        if self.emb is not None and self.twin is not None:
            self.emb.weight = self.original


def _combine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b, in place into the dense one where there is one."""
    if a.is_sparse and not b.is_sparse:
        a, b = b, a
    if b.is_sparse:
        if a.is_sparse:
            return (a + b).coalesce()
        b = b.coalesce()
        return a.index_add_(0, b.indices()[0], b.values().to(a.dtype))
    return a.add_(b)


def _input_embedding(model: nn.Module) -> nn.Embedding | None:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    return emb if isinstance(emb, nn.Embedding) and not emb.sparse else None


def fisher_scores(
    model: nn.Module,
    loss_of: Callable[[Sequence[int]], torch.Tensor],
    example_ids: Sequence[int],
    per_example: bool = True,
    bind_head: Callable[[WeightGradSink | None], None] | None = None,
) -> Scores:
    """Empirical Fisher: sum over the chosen examples of (d loss_s / d p)^2, gold targets.

    ``loss_of(ids)`` returns the mean loss of those examples. With ``per_example`` each
    example gets its own backward pass (the definition); otherwise one pass over all.
    ``bind_head(sink)`` is called with a sink for the output layer's weight gradient before
    the passes and with None after them (see :meth:`core.models.LoadedBase.batch_loss`).
    """
    # The twin goes in first: sparse_lookup_gradients then switches the lookup it reads.
    with _SquaredGradients(model) as acc, sparse_lookup_gradients(model):
        if bind_head is not None:
            bind_head(acc.head_sink())
        try:
            groups: Iterable[Sequence[int]] = (
                [[i] for i in example_ids] if per_example else [list(example_ids)]
            )
            for ids in groups:
                model.zero_grad(set_to_none=True)
                loss_of(ids).backward()  # type: ignore[no-untyped-call]
                acc.flush()
        finally:
            if bind_head is not None:
                bind_head(None)
    return acc.scores


@contextmanager
def sparse_lookup_gradients(model: nn.Module) -> Iterator[None]:
    """Let the input embedding's lookup produce a sparse gradient (its rows only), which
    :class:`~core.optim.SparseAdamW` gathers from directly. Dense, the lookup's gradient of
    a 262k-word embedding is a 670 MB zero-filled tensor on every step."""
    emb = _input_embedding(model)
    if emb is None:
        yield
        return
    emb.sparse = True
    try:
        yield
    finally:
        emb.sparse = False


def _kth_largest(scores: Scores, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """The exact k-th largest score over all tensors, without concatenating them.

    A selection over 268M entries costs ~10 s on two cores; instead, estimate the threshold
    from a sample, keep the entries above a safely lower bound (a few times k), and select
    exactly among those. Falls back to the full selection if the bound was not low enough.
    """
    total = sum(s.numel() for s in scores.values())
    if total <= 4_000_000:
        return torch.kthvalue(torch.cat([s.reshape(-1) for s in scores.values()]), total - k + 1).values
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    sample = torch.cat(
        [
            s.reshape(-1)[torch.randint(s.numel(), (max(1, s.numel() * 1_000_000 // total),), generator=gen)]
            for s in scores.values()
        ]
    )
    q = max(0.0, 1.0 - 3.0 * k / total)  # aim at ~3k candidates
    bound = torch.quantile(sample.float(), q) if sample.numel() <= 16_000_000 else sample.min()
    cand = torch.cat([s.reshape(-1)[s.reshape(-1) >= bound] for s in scores.values()])
    if cand.numel() < k:
        cand = torch.cat([s.reshape(-1) for s in scores.values()])
    return torch.kthvalue(cand, cand.numel() - k + 1).values


def top_k_mask(scores: Scores, k: int, generator: torch.Generator | None = None) -> Mask:
    """Exactly ``k`` entries: the global top-k of the scores. Ties at the threshold are broken
    at random (seeded), so zero-score regions are not filled in parameter order."""
    k = min(k, sum(s.numel() for s in scores.values()))
    threshold = _kth_largest(scores, k, generator)
    out: Mask = {n: s > threshold for n, s in scores.items()}
    need = k - count(out)
    if need > 0:
        tied = [(n, (s.reshape(-1) == threshold).nonzero().squeeze(1)) for n, s in scores.items()]
        sizes = torch.tensor([t.numel() for _, t in tied])
        pick = torch.randperm(int(sizes.sum()), generator=generator)[:need]
        starts = torch.cumsum(sizes, 0) - sizes
        for (name, idx), start, size in zip(tied, starts.tolist(), sizes.tolist(), strict=False):
            sel = pick[(pick >= start) & (pick < start + size)] - start
            if sel.numel():
                out[name].view(-1)[idx[sel]] = True
    return out


def random_mask(model: nn.Module, k: int, generator: torch.Generator) -> Mask:
    scores = {n: torch.rand(p.shape, generator=generator) for n, p in trainable(model)}
    return top_k_mask(scores, k, generator)


def full_mask(model: nn.Module) -> Mask:
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in trainable(model)}


def count(mask: Mask) -> int:
    # count_nonzero, not sum(): a bool sum materialises an int64 copy (1.3 GB for gemma's embedding)
    return sum(int(torch.count_nonzero(m)) for m in mask.values())


def positions(mask: Mask) -> Positions:
    return {n: m.reshape(-1).nonzero().squeeze(1) for n, m in mask.items() if bool(m.any())}


def count_positions(pos: Positions) -> int:
    return sum(int(i.numel()) for i in pos.values())


def overlap(prev: Positions | None, new: Positions) -> float | None:
    """Share of ``new``'s entries that were also in ``prev``."""
    if prev is None:
        return None
    inter = sum(int(torch.isin(i, prev[n]).count_nonzero()) for n, i in new.items() if n in prev)
    return inter / max(1, count_positions(new))


_INDEX = re.compile(r"\.\d+(?=\.)")


def module_type(name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``self_attn.q_proj``: the parameter's role,
    whatever its layer."""
    parts = _INDEX.split(name)[-1].strip(".").split(".")
    if parts and parts[-1] in {"weight", "bias"}:
        parts = parts[:-1]
    return ".".join(parts[-2:]) if parts else name


def per_module_share(pos: Positions) -> dict[str, float]:
    total = max(1, count_positions(pos))
    share: dict[str, float] = {}
    for name, i in pos.items():
        key = module_type(name)
        share[key] = share.get(key, 0.0) + i.numel() / total
    return {k: round(v, 6) for k, v in sorted(share.items(), key=lambda kv: -kv[1]) if v > 0}


def union(touched: Positions | None, new: Positions) -> Positions:
    """Every position in ``touched`` or in ``new``."""
    out = dict(touched or {})
    for n, i in new.items():
        out[n] = torch.unique(torch.cat([out[n], i])) if n in out else i
    return out


def row_positions(pos: torch.Tensor, width: int) -> torch.Tensor:
    """Rows of a [rows, width] tensor that hold any of the flat positions ``pos``."""
    rows: torch.Tensor = torch.unique(pos // width)
    return rows


def keep_only(grad: torch.Tensor, pos: torch.Tensor) -> None:
    """Zero ``grad`` (in place) outside the flat positions ``pos``, with O(len(pos)) extra memory."""
    flat = grad.view(-1)
    kept = flat[pos]
    flat.zero_()
    flat[pos] = kept
