"""Masked pooling: shapes, padding never leaks, all-pad rows, gradients, factory."""

from __future__ import annotations

import pytest
import torch

from recbert.model.pooling import POOLING_KINDS, AttentionPooling, build_pooling

from tests.model.padded import H, L, LENGTHS, adversarial, pad, rows  # noqa: F401

OUT_DIMS = {
    "cls": H,
    "mean": H,
    "max": H,
    "mean_max": 2 * H,
    "attention": H,
    "lstm_attention": 3 * H,
}


def make(kind: str, cls_position: int = -1):
    """Left-padded batches carry an appended CLS at -1."""
    torch.manual_seed(0)
    return build_pooling(kind, H, cls_position=cls_position, heads=2).eval()


@pytest.mark.parametrize("kind", POOLING_KINDS)
def test_shape_and_out_dim(kind: str) -> None:
    pool = make(kind)
    h, mask = pad(rows())
    assert pool.out_dim == OUT_DIMS[kind]
    assert pool(h, mask).shape == (len(LENGTHS), OUT_DIMS[kind])
    assert pool(h).shape == (len(LENGTHS), OUT_DIMS[kind])


@pytest.mark.parametrize("kind", POOLING_KINDS)
def test_padding_never_leaks(kind: str) -> None:
    pool = make(kind)
    seqs = rows()
    h, mask = pad(seqs)
    with torch.no_grad():
        zero_padded = pool(h, mask)
        adv = pool(adversarial(h, mask), mask)
        unpadded = torch.cat([pool(s[None], torch.ones(1, len(s), dtype=torch.bool)) for s in seqs])
    assert torch.isfinite(adv).all()
    torch.testing.assert_close(adv, zero_padded, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(adv, unpadded, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["max", "mean_max"])
def test_max_never_picks_padding(kind: str) -> None:
    seqs = [-1.0 - s.abs() for s in rows()]  # all real values negative
    h, mask = pad(seqs, value=1e6)
    out = make(kind)(h, mask)[:, -H:]
    expected = torch.stack([s.max(dim=0).values for s in seqs])
    assert torch.equal(out, expected)


def test_mean_values() -> None:
    seqs = rows()
    h, mask = pad(seqs, value=-1e6)
    expected = torch.stack([s.mean(dim=0) for s in seqs])
    torch.testing.assert_close(make("mean")(h, mask), expected)


def test_cls_position() -> None:
    seqs = rows()
    h, mask = pad(seqs, left=False, value=1e6)
    first = make("cls", cls_position=0)(h, mask)
    assert torch.equal(first, torch.stack([s[0] for s in seqs]))
    last = make("cls", cls_position=-1)(h, mask)  # padding there for all but the full row
    assert torch.equal(last[0], seqs[0][-1]) and (last[1:] == 0).all()


def test_attention_single_real_token_is_that_token() -> None:
    pool = AttentionPooling(H)
    h = torch.full((1, L, H), 1e6)
    h[0, 2] = torch.randn(H)
    mask = torch.zeros(1, L, dtype=torch.bool)
    mask[0, 2] = True
    torch.testing.assert_close(pool(h, mask)[0], h[0, 2])


@pytest.mark.parametrize("kind", POOLING_KINDS)
def test_all_pad_row_gives_zeros(kind: str) -> None:
    pool = make(kind)
    with torch.no_grad():  # nonzero biases too (several are zero-initialised)
        for p in pool.parameters():
            p.normal_(0.0, 0.5)
    h, mask = pad(rows())
    mask[2] = False
    out = pool(adversarial(h, mask), mask)
    assert torch.isfinite(out).all()
    assert (out[2] == 0).all()
    assert (out[0] != 0).any()


@pytest.mark.parametrize("kind", POOLING_KINDS)
def test_gradients_flow_to_real_positions_only(kind: str) -> None:
    pool = make(kind).train()
    h, mask = pad(rows())
    h = adversarial(h, mask).requires_grad_(True)
    out = pool(h, mask)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in pool.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.isfinite(h.grad).all()
    assert (h.grad[~mask] == 0).all()
    assert h.grad[mask].abs().sum() > 0


def test_build_pooling_errors() -> None:
    with pytest.raises(ValueError, match=r"'sum'.*'mean_max'"):
        build_pooling("sum", H)
    with pytest.raises(ValueError, match="heads=3"):
        build_pooling("lstm_attention", H, heads=3)
