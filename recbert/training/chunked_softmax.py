"""Full-softmax cross-entropy over the catalogue without holding the ``[N, items]``
logits: positions are taken ``chunk`` at a time, and each chunk's logits become its
gradients in place (softmax minus the one-hot target) before the next chunk is scored.

The autograd graph of ``F.cross_entropy(query @ vectors.T + bias, targets)`` keeps the
logits, their log-softmax and, in the backward pass, their gradient: three ``[N, items]``
float32 tensors (1.9 GB for 12,800 positions of a 12,101-item catalogue). Here the loss
and the gradients with respect to ``query``, ``vectors`` and ``bias`` are computed
together in the forward pass, one chunk of ``[chunk, items]`` at a time, and the backward
pass only scales them: the same result (tested against the autograd path), the same
matrix products (one for the logits, two for the gradients), and peak memory
``chunk x items`` floats. Gradients are computed only for the inputs that need them;
inputs in bfloat16 (autocast) are computed in float32 and their gradients returned in
their own dtype."""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_BYTES = 64 * 2**20  # float32 logits of one chunk


def chunk_positions(n_items: int, budget_bytes: int = CHUNK_BYTES) -> int:
    """Positions per chunk: as many as keep ``[chunk, n_items]`` float32 within the budget."""
    return max(1, budget_bytes // (4 * max(n_items, 1)))


def _chunks(q: Tensor, v: Tensor, b: Tensor, targets: Tensor, chunk: int, total: Tensor,
            grad_q: Tensor | None, grad_v: Tensor | None, grad_b: Tensor | None) -> None:
    """Add each chunk's summed loss to ``total`` and its gradients to the ``grad_*`` given."""
    for lo in range(0, len(targets), chunk):
        qc, tc = q[lo:lo + chunk], targets[lo:lo + chunk]
        logits = torch.addmm(b, qc, v.T)
        target_logit = logits.gather(1, tc[:, None]).squeeze(1)
        top = logits.amax(dim=1, keepdim=True)
        e = logits.sub_(top).exp_()  # exp(logit - row max), in the logits' memory
        s = e.sum(dim=1)
        total += (top.squeeze(1) + s.log() - target_logit).sum()
        if grad_q is None and grad_v is None and grad_b is None:
            continue
        # d loss_i / d logit_ij = e_ij / s_i - [j == t_i]: the 1 / s_i scaling goes into the
        # smaller operand of each product and the one-hot part is a gather / scatter
        inv = s.reciprocal()
        if grad_q is not None:
            grad_q[lo:lo + chunk] = (e @ v).mul_(inv[:, None]).sub_(v[tc])
        if grad_v is not None:
            grad_v.addmm_(e.T, qc * inv[:, None]).index_add_(0, tc, qc, alpha=-1.0)
        if grad_b is not None:
            grad_b.add_(torch.mv(e.T, inv)).index_add_(0, tc, torch.ones_like(inv), alpha=-1.0)


class _ChunkedSoftmaxCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query: Tensor, vectors: Tensor, bias: Tensor, targets: Tensor, chunk: int) -> Tensor:
        need_q, need_v, need_b = ctx.needs_input_grad[:3]
        q, v, b = query.float(), vectors.float(), bias.float()
        n = len(targets)
        grad_q = torch.empty_like(q) if need_q else None
        grad_v = torch.zeros_like(v) if need_v else None
        grad_b = torch.zeros_like(b) if need_b else None
        total = q.new_zeros(())
        with torch.autocast(q.device.type, enabled=False):  # float32 throughout, under bf16 autocast too
            _chunks(q, v, b, targets, chunk, total, grad_q, grad_v, grad_b)
        ctx.n = n
        ctx.dtypes = (query.dtype, vectors.dtype, bias.dtype)
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in (grad_q, grad_v, grad_b)))
        ctx.present = (need_q, need_v, need_b)
        return total / max(n, 1)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        scale = grad_output.float() / max(ctx.n, 1)
        grads = [(g * scale).to(dtype) if present else None
                 for g, dtype, present in zip(ctx.saved_tensors, ctx.dtypes, ctx.present)]
        return (*grads, None, None)


def chunked_softmax_cross_entropy(query: Tensor, vectors: Tensor, bias: Tensor, targets: Tensor,
                                  chunk: int | None = None) -> Tensor:
    """Mean cross-entropy of ``softmax(query @ vectors.T + bias)`` at ``targets`` (0-based
    item indices), ``chunk`` positions at a time (default: :func:`chunk_positions`)."""
    return _ChunkedSoftmaxCrossEntropy.apply(query, vectors, bias, targets, chunk or chunk_positions(len(bias)))
