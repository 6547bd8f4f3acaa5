"""Residual MLP: F(x) = f(x) + W x, identity shortcut at equal widths, concat variant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recbert.model.mlp import ResidualBlock, ResidualMLP


def x_batch(dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(4, dim, generator=torch.Generator().manual_seed(seed))


def test_equal_widths_use_parameter_free_identity() -> None:
    torch.manual_seed(0)
    block = ResidualBlock(16, 16, dropout=0.0).eval()
    assert isinstance(block.shortcut, nn.Identity)
    assert not list(block.shortcut.parameters())
    n_f = sum(p.numel() for p in block.f.parameters())
    assert sum(p.numel() for p in block.parameters()) == n_f
    x = x_batch(16)
    out = block(x)
    assert torch.equal(out, block.f(x) + x)  # F(x) - f(x) is x itself
    torch.testing.assert_close(out - block.f(x), x)


def test_different_widths_use_linear_shortcut() -> None:
    torch.manual_seed(0)
    block = ResidualBlock(16, 24, dropout=0.0).eval()
    w = block.shortcut
    assert isinstance(w, nn.Linear) and w.bias is None and w.weight.shape == (24, 16)
    x, y = x_batch(16, 0), x_batch(16, 1)
    torch.testing.assert_close(block(x) - block.f(x), x @ w.weight.T)
    torch.testing.assert_close(w(2.0 * x - 3.0 * y), 2.0 * w(x) - 3.0 * w(y))
    assert block(x).shape == (4, 24) and block.out_dim == 24


@pytest.mark.parametrize(("in_dim", "out_dim"), [(16, 16), (16, 8)])
def test_concat_variant(in_dim: int, out_dim: int) -> None:
    torch.manual_seed(0)
    block = ResidualBlock(in_dim, out_dim, dropout=0.0, variant="concat").eval()
    x = x_batch(in_dim)
    out = block(x)
    assert block.out_dim == in_dim + out_dim and out.shape == (4, block.out_dim)
    assert torch.equal(out[:, out_dim:], x)
    assert torch.equal(out[:, :out_dim], block.f(x))


@pytest.mark.parametrize(("in_dim", "out_dim"), [(16, 16), (16, 8)])
def test_plain_variant_has_no_skip_path(in_dim: int, out_dim: int) -> None:
    block = ResidualBlock(in_dim, out_dim, dropout=0.0, variant="plain").eval()
    x = x_batch(in_dim)
    assert block.shortcut is None and block.out_dim == out_dim
    assert torch.equal(block(x), block.f(x))
    add = ResidualBlock(in_dim, out_dim, dropout=0.0, variant="add").eval()
    add.f.load_state_dict(block.f.state_dict())
    assert not torch.allclose(add(x), block(x))  # the skip path is what differs


def test_block_handles_leading_dims_and_activation() -> None:
    block = ResidualBlock(8, 12, activation="relu")
    assert isinstance(block.f[1], nn.ReLU)
    assert block(torch.randn(2, 5, 8)).shape == (2, 5, 12)


@pytest.mark.parametrize("variant", ["add", "concat", "plain"])
@pytest.mark.parametrize("final_activation", [False, True])
def test_mlp_shape_and_widths(variant: str, final_activation: bool) -> None:
    mlp = ResidualMLP(
        16, [32, 32, 8], 5, dropout=0.1, variant=variant, final_activation=final_activation
    )
    assert mlp.out_dim == 5
    assert mlp(x_batch(16)).shape == (4, 5)
    widths = [b.out_dim for b in mlp.blocks]
    assert widths == ([48, 80, 88] if variant == "concat" else [32, 32, 8])
    assert mlp.out.in_features == widths[-1]


def test_mlp_final_activation() -> None:
    torch.manual_seed(0)
    mlp = ResidualMLP(8, [8], 6, dropout=0.0, final_activation=True, activation="relu").eval()
    out = mlp(torch.randn(64, 8))
    assert (out >= 0).all() and (out == 0).any()
    assert ResidualMLP(8, [], 3)(torch.randn(2, 8)).shape == (2, 3)


@pytest.mark.parametrize("variant", ["add", "concat", "plain"])
def test_gradients_flow(variant: str) -> None:
    torch.manual_seed(0)
    mlp = ResidualMLP(16, [16, 24], 4, dropout=0.0, variant=variant)
    x = x_batch(16).requires_grad_(True)
    out = mlp(x)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in mlp.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"'mul'.*'add'"):
        ResidualBlock(4, 4, variant="mul")
    with pytest.raises(ValueError, match=r"'swish'.*'gelu'"):
        ResidualMLP(4, [4], 2, activation="swish")
