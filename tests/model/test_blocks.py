"""Residual reuse blocks: shapes, padding isolation, left-padded RNNs, skip, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recbert.model.blocks import (
    REUSE_KINDS,
    ResidualReuseBlock,
    build_reuse_block,
    run_rnn_packed,
)

from tests.model.padded import H, L, adversarial, pad, rows

def make(kind: str, dropout: float = 0.0) -> ResidualReuseBlock:
    torch.manual_seed(0)
    return ResidualReuseBlock(kind, H, dropout=dropout, kernel_size=3, heads=2).eval()


@pytest.mark.parametrize("kind", REUSE_KINDS)
def test_shape(kind: str) -> None:
    x, mask = pad(rows())
    assert make(kind)(x, mask).shape == x.shape
    assert make(kind)(x).shape == x.shape


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", REUSE_KINDS)
def test_padding_values_do_not_reach_real_positions(kind: str, causal: bool) -> None:
    block = make(kind)
    x, mask = pad(rows())
    x_adv = adversarial(x, mask)
    with torch.no_grad():
        out, out_adv = block(x, mask, causal=causal), block(x_adv, mask, causal=causal)
    torch.testing.assert_close(out_adv[mask], out[mask], rtol=1e-5, atol=1e-5)
    assert torch.equal(out_adv[~mask], x_adv[~mask])  # padded positions pass through


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", REUSE_KINDS)
@pytest.mark.parametrize("left", [True, False])
def test_padded_batch_matches_unpadded_rows(kind: str, left: bool, causal: bool) -> None:
    block = make(kind)
    seqs = rows()
    x, mask = pad(seqs, left=left, value=3.0)
    with torch.no_grad():
        out = block(x, mask, causal=causal)
        for b, s in enumerate(seqs):
            alone = block(s[None], causal=causal)[0]
            torch.testing.assert_close(out[b][mask[b]], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_left_padded_rnn_equals_rnn_on_unpadded_sequence(kind: str) -> None:
    block = make(kind)
    seqs = rows()
    x, mask = pad(seqs, value=-1e6)
    with torch.no_grad():
        out = block(x, mask)
        for b, s in enumerate(seqs):
            features, _ = block.f(s[None])  # plain BiRNN, no packing involved
            expected = s + block.proj(features[0])
            torch.testing.assert_close(out[b, L - len(s) :], expected, rtol=1e-5, atol=1e-5)


def test_run_rnn_packed_rejects_gaps() -> None:
    rnn = nn.GRU(H, H, batch_first=True)
    mask = torch.tensor([[True, False, True, True, False, False]])
    with pytest.raises(ValueError, match="contiguous"):
        run_rnn_packed(rnn, torch.randn(1, L, H), mask)


@pytest.mark.parametrize("kind", REUSE_KINDS)
def test_zero_projection_is_identity(kind: str) -> None:
    block = make(kind, dropout=0.5).train()
    nn.init.zeros_(block.proj.weight)
    nn.init.zeros_(block.proj.bias)
    x, mask = pad(rows())
    x = adversarial(x, mask)
    assert torch.equal(block(x, mask), x)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", REUSE_KINDS)
def test_all_pad_row_is_finite_and_unchanged(kind: str, causal: bool) -> None:
    block = make(kind)
    x, mask = pad(rows())
    mask[1] = False
    out = block(x, mask, causal=causal)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], x[1])


@pytest.mark.parametrize("kind", REUSE_KINDS)
def test_gradients_flow(kind: str) -> None:
    block = make(kind).train()
    x, mask = pad(rows())
    x.requires_grad_(True)
    out = block(x, mask)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all()


def test_build_reuse_block() -> None:
    x, mask = pad(rows())
    for kind in (None, "none"):
        block = build_reuse_block(kind, H, 0.1)
        assert torch.equal(block(x, mask), x)
        assert not list(block.parameters())
    block = build_reuse_block("gru", H, 0.0, kernel_size=5, heads=4)
    assert isinstance(block, ResidualReuseBlock) and block.kind == "gru"
    with pytest.raises(ValueError, match=r"'bogus'.*'lstm'"):
        build_reuse_block("bogus", H, 0.1)
    with pytest.raises(ValueError, match="heads=3"):
        build_reuse_block("transformer", H, 0.1, heads=3)


@pytest.mark.parametrize("kind", REUSE_KINDS)
def test_causal_block_reads_no_later_position(kind: str) -> None:
    block = make(kind)
    x, mask = pad(rows())  # left-padded; row 0 has 6 real tokens
    later = x.clone()
    later[:, 3:] += torch.randn_like(later[:, 3:]) * 5
    with torch.no_grad():
        out, out_later = block(x, mask, causal=True), block(later, mask, causal=True)
        both, both_later = block(x, mask), block(later, mask)
    torch.testing.assert_close(out_later[:, :3], out[:, :3], rtol=1e-5, atol=1e-5)
    # bidirectional, the same block reads them (what next-item training must not see)
    assert (both_later[0, :3] - both[0, :3]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_causal_rnn_is_the_forward_direction_of_the_same_weights(kind: str) -> None:
    block = make(kind)
    s = rows()[0]
    with torch.no_grad():
        features, _ = block.f(s[None])
        forward_only = torch.cat([features[0, :, :H], torch.zeros(len(s), H)], dim=1)
        torch.testing.assert_close(block(s[None], causal=True)[0], s + block.proj(forward_only),
                                   rtol=1e-5, atol=1e-5)


def test_causal_cnn_keeps_each_tap_at_its_offset() -> None:
    block = make("cnn")
    s = rows()[0]
    with torch.no_grad():
        block.f.weight[:, :, 2] = 0.0  # the future tap of a kernel of 3 removed by hand
        torch.testing.assert_close(block(s[None], causal=True), block(s[None]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", REUSE_KINDS)
def test_causal_gradients_flow(kind: str) -> None:
    block = make(kind).train()
    x, mask = pad(rows())
    out = block(x, mask, causal=True)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert block.proj.weight.grad.abs().sum() > 0
