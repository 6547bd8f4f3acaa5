"""Masked pooling: one vector per sequence.

Every module maps (h [B, L, H], mask [B, L] bool, True = real; None = all real) -> [B, out_dim].
Padded positions are zeroed and excluded before anything is computed, so their values never
reach the output; a row with no real token pools to zeros (never NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from recbert.model.blocks import run_rnn_packed



def _prepare(h: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """(h with padded positions zeroed, bool mask [B, L])."""
    if mask is None:
        return h, torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
    mask = mask.bool()
    return h.masked_fill(~mask[..., None], 0.0), mask


class ClsPooling(nn.Module):
    """h[:, cls_position]: the CLS token the model prepends (index 0) or appends (index -1).

    ``cls_position`` is one index into the padded row, shared by all rows; negative counts from
    the end (with left padding an appended CLS sits at -1). The mask must mark it as real:
    rows where it is padding give zeros. out_dim = H.
    """

    def __init__(self, hidden: int, cls_position: int = 0) -> None:
        super().__init__()
        self.cls_position = cls_position
        self.out_dim = hidden

    def forward(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        h, mask = _prepare(h, mask)
        return h[:, self.cls_position]


class MeanPooling(nn.Module):
    """Mean over real positions. out_dim = H."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.out_dim = hidden

    def forward(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        h, mask = _prepare(h, mask)
        count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(h.dtype)
        return h.sum(dim=1) / count


class MaxPooling(nn.Module):
    """Max over real positions (padding is -inf, so it never wins). out_dim = H."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.out_dim = hidden

    def forward(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        h, mask = _prepare(h, mask)
        best = h.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)
        return torch.where(mask.any(dim=1, keepdim=True), best, torch.zeros_like(best))


class MeanMaxPooling(nn.Module):
    """[masked mean; masked max]. out_dim = 2H."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mean = MeanPooling(hidden)
        self.max = MaxPooling(hidden)
        self.out_dim = 2 * hidden

    def forward(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        return torch.cat([self.mean(h, mask), self.max(h, mask)], dim=-1)


class AttentionPooling(nn.Module):
    """sum_t a_t h_t, a = softmax over real t of q . tanh(W h_t + b), q a learned query.
    out_dim = H."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.key = nn.Linear(hidden, hidden)
        self.query = nn.Parameter(torch.randn(hidden) / math.sqrt(hidden))
        self.out_dim = hidden

    def forward(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        h, mask = _prepare(h, mask)
        scores = torch.tanh(self.key(h)) @ self.query  # [B, L]
        scores = scores.masked_fill(~mask, float("-inf"))
        scores = scores.masked_fill(~mask.any(dim=1, keepdim=True), 0.0)  # all-pad row: zeros
        weights = scores.softmax(dim=1)
        return (weights.unsqueeze(-1) * h).sum(dim=1)


class LstmAttentionPooling(nn.Module):
    """[MHA(learned query, BiLSTM(h)); h[:, cls_position]]. out_dim = 3H.

    The BiLSTM (H -> 2H) runs packed over real tokens (contiguous, left- or right-padded);
    multi-head attention with ``heads`` heads (must divide 2H) pools its output with a learned
    query over real positions only. The CLS part follows ClsPooling.
    """

    def __init__(self, hidden: int, heads: int = 2, cls_position: int = 0) -> None:
        super().__init__()
        if heads < 1 or (2 * hidden) % heads:
            raise ValueError(f"heads={heads} must be >= 1 and divide 2*hidden={2 * hidden}")
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True, bidirectional=True)
        self.query = nn.Parameter(torch.randn(1, 1, 2 * hidden) / math.sqrt(2 * hidden))
        self.attn = nn.MultiheadAttention(2 * hidden, heads, batch_first=True)
        self.cls = ClsPooling(hidden, cls_position)
        self.out_dim = 3 * hidden

    def forward(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        h, mask = _prepare(h, mask)
        seq = run_rnn_packed(self.lstm, h, mask)  # [B, L, 2H], zero at padding
        has_real = mask.any(dim=1, keepdim=True)
        key_pad = ~mask & has_real  # an all-pad row attends to its zeros instead of NaN
        query = self.query.expand(h.size(0), -1, -1)
        pooled, _ = self.attn(query, seq, seq, key_padding_mask=key_pad, need_weights=False)
        pooled = pooled.squeeze(1) * has_real.to(h.dtype)
        return torch.cat([pooled, self.cls(h, mask)], dim=-1)


# pooling kind -> builder(hidden, cls_position, heads): the one list of pooling choices
POOLINGS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "cls": lambda hidden, cls_position, heads: ClsPooling(hidden, cls_position),
    "mean": lambda hidden, cls_position, heads: MeanPooling(hidden),
    "max": lambda hidden, cls_position, heads: MaxPooling(hidden),
    "mean_max": lambda hidden, cls_position, heads: MeanMaxPooling(hidden),
    "attention": lambda hidden, cls_position, heads: AttentionPooling(hidden),
    "lstm_attention": lambda hidden, cls_position, heads: LstmAttentionPooling(hidden, heads=heads,
                                                                                cls_position=cls_position),
}
POOLING_KINDS = tuple(POOLINGS)


def build_pooling(kind: str, hidden: int, cls_position: int = 0, heads: int = 2) -> nn.Module:
    """Pooling module by name (one of :data:`POOLINGS`); read its ``out_dim`` for the width."""
    if kind not in POOLINGS:
        raise ValueError(f"unknown pooling kind {kind!r}; allowed: {POOLING_KINDS}")
    return POOLINGS[kind](hidden, cls_position, heads)
