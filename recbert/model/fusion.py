"""Layer fusion: combine the encoder's per-layer hidden states into one [B, L, H] tensor.

``hidden_states`` is a list/tuple of ``n_layers`` tensors, each [B, L, H]: element 0 is the
embedding output, then one per transformer layer (so ``n_layers`` = transformer layers + 1).
Every module here has ``forward(hidden_states, mask=None) -> [B, L, H]``; fusion is per
position, so padded positions never influence real ones and ``mask`` is only used where noted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

POOL_KINDS = ("mean", "max", "sum")  # the parameter-free fusions over the last k states


class LastLayer(nn.Module):
    """Baseline: the last hidden state, unchanged."""

    def forward(self, hidden_states: Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
        return hidden_states[-1]


class PoolLastLayers(nn.Module):
    """Parameter-free mean/max/sum over the last ``k`` hidden states."""

    def __init__(self, kind: str, k: int) -> None:
        super().__init__()
        if kind not in POOL_KINDS:
            raise ValueError(f"pool kind {kind!r} is not one of {POOL_KINDS}")
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        self.kind = kind
        self.k = k

    def forward(self, hidden_states: Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
        if len(hidden_states) < self.k:
            raise ValueError(f"k={self.k} but only {len(hidden_states)} hidden states were given")
        stacked = torch.stack(list(hidden_states[-self.k :]), dim=0)  # [k, B, L, H]
        if self.kind == "mean":
            return stacked.mean(0)
        if self.kind == "max":
            return stacked.amax(0)
        return stacked.sum(0)


class LearnedLayerFusion(nn.Module):
    """out = Dense(sum_i alpha_i h_i), alpha_i = softmax over layers of Dense_1(h_i), per position.

    ``score`` (Dense_1) has no bias: a bias shared by all layers cancels in the softmax.
    ``last_alpha`` holds the detached weights [B, L, n_layers] of the latest forward.
    """

    def __init__(self, n_layers: int, hidden: int) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers={n_layers} must be >= 1")
        self.n_layers = n_layers
        self.score = nn.Linear(hidden, 1, bias=False)
        self.dense = nn.Linear(hidden, hidden)
        self.last_alpha: Tensor | None = None

    def _alpha(self, hidden_states: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Return (alpha [B, L, N], stacked hidden states [B, L, N, H])."""
        if len(hidden_states) != self.n_layers:
            raise ValueError(
                f"expected n_layers={self.n_layers} hidden states (embedding output + one per "
                f"layer), got {len(hidden_states)}"
            )
        stacked = torch.stack(list(hidden_states), dim=2)
        alpha = self.score(stacked).squeeze(-1).softmax(dim=-1)
        return alpha, stacked

    def forward(self, hidden_states: Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
        alpha, stacked = self._alpha(hidden_states)
        self.last_alpha = alpha.detach()
        fused = (alpha.unsqueeze(-1) * stacked).sum(dim=2)  # [B, L, H]
        return self.dense(fused)

    @torch.no_grad()
    def layer_weights(self, hidden_states: Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
        """Mean alpha per layer over real positions (mask [B, L] bool, True = real) -> [n_layers].

        Sums to 1; raises ValueError when ``mask`` has no real position.
        """
        alpha, _ = self._alpha(hidden_states)
        if mask is None:
            return alpha.mean(dim=(0, 1))
        real = mask.bool()
        if not bool(real.any()):
            raise ValueError("mask has no real position")
        return alpha[real].mean(dim=0)


def _pool_last(kind: str) -> Callable[[int, int, int], nn.Module]:
    def build(n_layers: int, hidden: int, k: int) -> nn.Module:
        if not 1 <= k <= n_layers:
            raise ValueError(f"k={k} is out of range: allowed 1..{n_layers} (n_layers)")
        return PoolLastLayers(kind, k)
    return build


# fusion kind -> builder(n_layers, hidden, k): the one list of fusion choices
FUSIONS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "last": lambda n_layers, hidden, k: LastLayer(),
    "learned": lambda n_layers, hidden, k: LearnedLayerFusion(n_layers, hidden),
    **{kind: _pool_last(kind) for kind in POOL_KINDS},
}
FUSION_KINDS = tuple(FUSIONS)


def build_fusion(kind: str, n_layers: int, hidden: int, k: int = 2) -> nn.Module:
    """Fusion module by name (one of :data:`FUSIONS`): 'last', 'learned', or
    'mean'/'max'/'sum' over the last ``k``. ``n_layers`` counts the hidden states given
    to forward (embedding output included); ``k`` must lie in [1, n_layers] for the
    pooling kinds."""
    if kind not in FUSIONS:
        raise ValueError(f"unknown fusion kind {kind!r}; allowed: {FUSION_KINDS}")
    return FUSIONS[kind](n_layers, hidden, k)
