"""The chunked output-layer loss against the plain one: same loss, same gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core import head_loss

VOCAB, DIM, TOKENS = 50, 8, 11


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(TOKENS, DIM, generator=gen)
    w = torch.randn(VOCAB, DIM, generator=gen)
    t = torch.randint(VOCAB, (TOKENS,), generator=gen)
    t[3] = t[4]  # a repeated target
    return h, w, t


def _reference(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, cap: float | None) -> torch.Tensor:
    z = h @ w.T
    if cap:
        z = torch.tanh(z / cap) * cap
    return nn.functional.cross_entropy(z, t)


@pytest.mark.parametrize("chunk", [1, 3, 4, None])
@pytest.mark.parametrize("cap", [None, 2.0])
def test_loss_and_dense_gradients_match_the_plain_loss(chunk: int | None, cap: float | None) -> None:
    h, w, t = _data()
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    ref = _reference(h1, w1, t, cap)
    (ref * 3.0).backward()  # an upstream gradient other than 1 must scale every gradient
    h2, w2 = h.clone().requires_grad_(), w.clone().requires_grad_()
    got = head_loss.linear_cross_entropy(h2, w2, t, softcap=cap, chunk=chunk)
    (got * 3.0).backward()
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(h2.grad, h1.grad)
    torch.testing.assert_close(w2.grad, w1.grad)


@pytest.mark.parametrize("dim", [DIM, 4])  # factored (tokens < dim) and dense (tokens >= dim)
@pytest.mark.parametrize("cap", [None, 2.0])
def test_weight_gradient_handed_to_a_sink_block_by_block(dim: int, cap: float | None) -> None:
    h, w, t = _data(2)
    h, w = h[:, :dim].contiguous(), w[:, :dim].contiguous()
    if dim == DIM:
        h = torch.cat([h, h])[: DIM - 1]  # fewer tokens than dimensions
        t = torch.cat([t, t])[: DIM - 1]
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    (_reference(h1, w1, t, cap) * 3.0).backward()
    got: list[head_loss.RowGradient] = []
    h2 = h.clone().requires_grad_()
    loss = head_loss.linear_cross_entropy(h2, w, t, softcap=cap, chunk=3, weight_grad=got.append)
    assert not got  # handed over during backward, scaled by the upstream gradient
    (loss * 3.0).backward()
    assert len(got) == 1 and (got[0].dense is None) == (h.shape[0] < dim)
    blocks = torch.cat([got[0].rows(a, min(a + 7, VOCAB)) for a in range(0, VOCAB, 7)])
    torch.testing.assert_close(blocks, w1.grad)
    torch.testing.assert_close(h2.grad, h1.grad)
    with pytest.raises(ValueError, match="detached"):
        head_loss.linear_cross_entropy(h2, w.clone().requires_grad_(), t, weight_grad=got.append)


def test_row_sparse_weight_gets_its_rows_gradient_only() -> None:
    h, w, t = _data(1)
    rows = torch.tensor([0, 7, int(t[0]), 49])
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    _reference(h1, w1, t, None).backward()
    h2, w2 = h.clone().requires_grad_(), w.clone().requires_grad_()
    picked = nn.functional.embedding(rows, w2, sparse=True)
    head_loss.linear_cross_entropy(h2, w2.detach(), t, picked=picked, rows=rows, chunk=4).backward()
    assert w2.grad is not None and w2.grad.is_sparse
    dense = w2.grad.to_dense()
    torch.testing.assert_close(dense[rows], w1.grad[rows])
    others = torch.ones(VOCAB, dtype=torch.bool)
    others[rows] = False
    assert not dense[others].any()
    torch.testing.assert_close(h2.grad, h1.grad)


def test_only_the_inputs_that_need_a_gradient_get_one() -> None:
    h, w, t = _data(2)
    hr = h.clone().requires_grad_()
    head_loss.linear_cross_entropy(hr, w, t, chunk=5).backward()
    ref = h.clone().requires_grad_()
    _reference(ref, w, t, None).backward()
    torch.testing.assert_close(hr.grad, ref.grad)
    with torch.no_grad():
        torch.testing.assert_close(
            head_loss.linear_cross_entropy(h, w, t, chunk=2), _reference(h, w, t, None)
        )


def test_a_second_backward_is_refused() -> None:
    h, w, t = _data(3)
    loss = head_loss.linear_cross_entropy(h.requires_grad_(), w, t)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        loss.backward()


@pytest.mark.parametrize("cap", [None, 2.0])
def test_token_logprobs_match_log_softmax(cap: float | None) -> None:
    h, w, t = _data(4)
    z = h @ w.T
    if cap:
        z = torch.tanh(z / cap) * cap
    ref = z.log_softmax(-1).gather(1, t[:, None]).squeeze(1)
    with torch.no_grad():
        torch.testing.assert_close(head_loss.token_logprobs(h, w, t, softcap=cap, chunk=3), ref)


def test_bf16_autocast_stays_close_to_fp32() -> None:
    h, w, t = _data(5)
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    ref = _reference(h1, w1, t, None)
    ref.backward()
    hb, wb = h.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head_loss.linear_cross_entropy(hb, wb, t, chunk=4)
    got.backward()
    assert got.dtype == torch.float32
    assert hb.grad is not None and hb.grad.dtype == torch.float32
    assert wb.grad is not None and wb.grad.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0.02, atol=0.02)
    torch.testing.assert_close(wb.grad, w1.grad, rtol=0.05, atol=0.01)
    torch.testing.assert_close(hb.grad, h1.grad, rtol=0.05, atol=0.01)
