"""Dimension-free residual MLP: blocks F(x) = f(x) + W x that may change width.

Shapes: [..., in_dim] -> [..., out_dim]; every module exposes ``out_dim``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
VARIANTS = ("add", "concat", "plain")  # residual block variants; "plain" = no skip path
TowerVariant = Literal[VARIANTS]


def make_activation(name: str) -> nn.Module:
    """Activation module by name (one of ACTIVATIONS)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; allowed: {tuple(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class ResidualBlock(nn.Module):
    """variant 'add': F(x) = f(x) + W x  -> out_dim;  'concat': [f(x); x] -> out_dim + in_dim;
    'plain': F(x) = f(x) (no skip path: the ablation baseline of the residual block).

    f = Linear(in, out) -> activation -> Dropout -> Linear(out, out). ``shortcut`` (W) is
    nn.Identity (no parameters) when in_dim == out_dim, else Linear(in, out, bias=False);
    the concat and plain variants have no shortcut (None).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        dropout: float = 0.1,
        activation: str = "gelu",
        variant: str = "add",
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown residual variant {variant!r}; allowed: {VARIANTS}")
        self.variant = variant
        self.in_dim = in_dim
        self.f = nn.Sequential(
            nn.Linear(in_dim, out_dim),
            make_activation(activation),
            nn.Dropout(dropout),
            nn.Linear(out_dim, out_dim),
        )
        self.shortcut: nn.Module | None = None
        if variant == "add":
            self.shortcut = (
                nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim, bias=False)
            )
            self.out_dim = out_dim
        elif variant == "concat":
            self.out_dim = out_dim + in_dim
        else:
            self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        if self.variant == "concat":
            return torch.cat([self.f(x), x], dim=-1)
        if self.variant == "plain":
            return self.f(x)
        return self.f(x) + self.shortcut(x)


class ResidualMLP(nn.Module):
    """ResidualBlocks through ``hidden_dims``, then Linear(last width, out_dim) (+ activation
    when ``final_activation``). With variant 'concat' each block widens by its input width."""

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        dropout: float = 0.1,
        variant: str = "add",
        final_activation: bool = False,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        blocks: list[ResidualBlock] = []
        width = in_dim
        for dim in hidden_dims:
            block = ResidualBlock(width, dim, dropout, activation=activation, variant=variant)
            blocks.append(block)
            width = block.out_dim
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Linear(width, out_dim)
        self.final_act: nn.Module = (
            make_activation(activation) if final_activation else nn.Identity()
        )
        self.in_dim = in_dim
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.final_act(self.out(self.blocks(x)))
