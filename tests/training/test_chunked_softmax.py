"""The chunked full-softmax cross-entropy equals the autograd path: loss and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recbert.training.chunked_softmax import chunk_positions, chunked_softmax_cross_entropy


def inputs(n=37, items=53, dim=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, dim, generator=g, dtype=dtype, requires_grad=True)
    v = torch.randn(items, dim, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(items, generator=g, dtype=dtype, requires_grad=True)
    t = torch.randint(0, items, (n,), generator=g)
    return q, v, b, t


@pytest.mark.parametrize("chunk", [1, 5, 37, 1000])
def test_loss_and_gradients_equal_the_autograd_cross_entropy(chunk):
    q, v, b, t = inputs()
    ref = F.cross_entropy(q.float() @ v.float().T + b.float(), t)
    ref.backward(torch.tensor(2.5))
    expected = [x.grad.clone() for x in (q, v, b)]
    for x in (q, v, b):
        x.grad = None
    loss = chunked_softmax_cross_entropy(q, v, b, t, chunk)
    (loss * 2.5).backward()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    for got, want in zip((q.grad, v.grad, b.grad), expected):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got.float(), want.float(), atol=1e-5, rtol=1e-4)


def test_only_the_inputs_that_need_gradients_get_them_and_no_grad_mode_works():
    q, v, b, t = inputs()
    frozen = v.detach()
    chunked_softmax_cross_entropy(q, frozen, b, t, 4).backward()
    assert q.grad is not None and b.grad is not None and frozen.grad is None
    with torch.no_grad():
        loss = chunked_softmax_cross_entropy(q, v, b, t, 4)
    assert not loss.requires_grad
    torch.testing.assert_close(loss.float(), F.cross_entropy(q @ v.T + b, t).float().detach(), atol=1e-5, rtol=1e-5)


def test_bfloat16_inputs_are_computed_in_float32_and_get_bfloat16_gradients():
    q, v, b, t = inputs(dtype=torch.bfloat16)
    loss = chunked_softmax_cross_entropy(q, v, b, t, 8)
    loss.backward()
    assert loss.dtype == torch.float32 and q.grad.dtype == v.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, F.cross_entropy(q.float() @ v.float().T + b.float(), t).detach())


def test_chunks_keep_the_logits_within_the_budget():
    assert chunk_positions(12_101) * 12_101 * 4 <= 64 * 2**20 < (chunk_positions(12_101) + 1) * 12_101 * 4
    assert chunk_positions(10**9) == 1
