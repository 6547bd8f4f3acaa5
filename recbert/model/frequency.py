"""Frequency rescaling beside self-attention (BSARec: Shin et al., "An Attentive Inductive
Bias for Sequential Recommendation beyond the Self-Attention", AAAI 2024), made causal-safe.

Self-attention behaves as a low-pass filter over the positions of a sequence. BSARec adds a
branch that splits each hidden sequence ``x`` into a low-pass part and the rest and
rescales the rest by a learned per-channel ``beta``:

    y = LayerNorm(x + dropout(low(x) + beta**2 * (x - low(x))))

and mixes it with the attention branch, ``alpha * y + (1 - alpha) * attention(x)``.

BSARec takes ``low`` as the lowest Fourier frequencies of the whole sequence. That lets
position ``t`` see later positions, which under next-item training (a target at every
position) would leak the targets. Here ``low`` is a moving average over the last
``window`` real tokens (itself included) when the attention is causal, and over the
``window`` tokens centred on ``t`` when it is bidirectional (unless ``model.filter_causal``,
which keeps the causal window there too, as next-item fine-tuning will use it); PAD
positions are neither averaged in nor counted. A box of ``w`` positions passes periods longer than about ``w``
positions and has its first zero at period ``w``: BSARec's Beauty setting (``c = 5``, of
which it keeps the ``c // 2 + 1 = 3`` lowest frequencies of a 50-long sequence: periods of
25 positions and more, the next one, 16.7, cut) is about a box of 10, the default.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def moving_average(x: Tensor, real: Tensor, window: int, causal: bool) -> Tensor:
    """``[B, L, H]``: the mean of ``x`` over the real positions (``real`` ``[B, L]`` bool)
    among the ``window`` positions ending at each position (``causal``) or centred on it
    (the extra one after it when ``window`` is even). Positions with none get 0."""
    length = x.shape[1]
    weights = real.to(x.dtype).unsqueeze(-1)
    # prefix sums with a zero row in front: sum over (a, b] = cs[b] - cs[a]
    cs = torch.nn.functional.pad(torch.cumsum(x * weights, dim=1), (0, 0, 1, 0))
    cn = torch.nn.functional.pad(torch.cumsum(weights, dim=1), (0, 0, 1, 0))
    pos = torch.arange(length, device=x.device)
    if causal:
        hi = pos + 1
    else:
        hi = (pos + window // 2 + 1).clamp(max=length)
    lo = (hi - window).clamp(min=0)
    total = cs[:, hi] - cs[:, lo]
    count = cn[:, hi] - cn[:, lo]
    return total / count.clamp(min=1.0)


class FrequencyRescale(nn.Module):
    """The BSARec frequency branch: ``LayerNorm(x + dropout(low + beta**2 * (x - low)))``
    with ``low`` the :func:`moving_average` of ``window`` positions; ``beta`` is per channel
    (``sqrt_beta``, drawn from N(0, 1) as in BSARec, so the rescaling starts near 1)."""

    def __init__(self, hidden: int, window: int, dropout: float):
        super().__init__()
        self.window = window
        self.sqrt_beta = nn.Parameter(torch.randn(hidden))
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden)

    def delta(self, x: Tensor, real: Tensor, causal: bool) -> Tensor:
        """``low + beta**2 * (x - low)``: what is added to the residual stream."""
        low = moving_average(x, real, self.window, causal)
        return low + self.sqrt_beta.square() * (x - low)

    def forward(self, x: Tensor, real: Tensor, causal: bool) -> Tensor:
        return self.norm(x + self.dropout(self.delta(x, real, causal)))
