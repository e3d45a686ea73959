"""Masks: per-example losses, empirical Fisher, global top-k selection, mask statistics.

A mask is a ``dict[name, BoolTensor]`` over ``model.named_parameters()`` (which lists a tied
tensor once, so tied weights are counted once). Selection is ONE ranking over all
parameters: no per-layer quota.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

Mask = dict[str, torch.Tensor]
Scores = dict[str, torch.Tensor]


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def total_parameters(model: nn.Module) -> int:
    return sum(p.numel() for _, p in trainable(model))


def mask_size(ratio: float, total: int) -> int:
    return max(1, int(ratio * total))


@contextmanager
def squared_grad_accumulator(model: nn.Module) -> Iterator[Scores]:
    """While active, every backward pass adds grad**2 into the yielded scores and frees the
    gradient at once, so a Fisher pass never holds a full set of gradients."""
    scores: Scores = {}
    handles = []
    for name, p in trainable(model):
        scores[name] = torch.zeros_like(p, dtype=torch.float32)

        def hook(param: torch.Tensor, name: str = name) -> None:
            assert param.grad is not None
            g = param.grad.detach()
            # In place, with no squared temporary: for a tied 262k-word embedding each
            # temporary would be another 670 MB at the refresh's memory peak.
            if g.dtype == torch.float32:
                scores[name].addcmul_(g, g)
            else:
                scores[name].add_(g.float().square())
            param.grad = None

        handles.append(p.register_post_accumulate_grad_hook(hook))  # type: ignore[no-untyped-call]
    try:
        yield scores
    finally:
        for h in handles:
            h.remove()


def fisher_scores(
    model: nn.Module,
    loss_of: Callable[[Sequence[int]], torch.Tensor],
    example_ids: Sequence[int],
    per_example: bool = True,
) -> Scores:
    """Empirical Fisher: sum over the chosen examples of (d loss_s / d p)^2, gold targets.

    ``loss_of(ids)`` returns the mean loss of those examples. With ``per_example`` each
    example gets its own backward pass (the definition); otherwise one pass over all.
    """
    with squared_grad_accumulator(model) as scores:
        groups: Iterable[Sequence[int]] = [[i] for i in example_ids] if per_example else [list(example_ids)]
        for ids in groups:
            model.zero_grad(set_to_none=True)
            loss_of(ids).backward()  # type: ignore[no-untyped-call]
    return scores


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
    return int(sum(int(m.sum()) for m in mask.values()))


def overlap(a: Mask | None, b: Mask) -> float | None:
    """Share of ``b``'s entries that were also in ``a``."""
    if a is None:
        return None
    inter = sum(int((a[n] & b[n]).sum()) for n in b)
    return inter / max(1, count(b))


_INDEX = re.compile(r"\.\d+(?=\.)")


def module_type(name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``self_attn.q_proj``: the parameter's role,
    whatever its layer."""
    parts = _INDEX.split(name)[-1].strip(".").split(".")
    if parts and parts[-1] in {"weight", "bias"}:
        parts = parts[:-1]
    return ".".join(parts[-2:]) if parts else name


def per_module_share(mask: Mask) -> dict[str, float]:
    total = max(1, count(mask))
    share: dict[str, float] = {}
    for name, m in mask.items():
        key = module_type(name)
        share[key] = share.get(key, 0.0) + int(m.sum()) / total
    return {k: round(v, 6) for k, v in sorted(share.items(), key=lambda kv: -kv[1]) if v > 0}


def union(a: Mask | None, b: Mask) -> Mask:
    if a is None:
        return {n: m.clone() for n, m in b.items()}
    return {n: a[n] | b[n] for n in b}
