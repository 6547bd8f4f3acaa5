"""Layer fusion: shapes, values, learned layer weights, gradients, factory errors."""

from __future__ import annotations

import pytest
import torch

from recbert.model.fusion import (
    LastLayer,
    LearnedLayerFusion,
    PoolLastLayers,
    build_fusion,
)

B, L, H, N = 3, 5, 8, 4  # N hidden states: embedding output + 3 layers


def hidden_states(seed: int = 0, requires_grad: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, L, H, generator=g, requires_grad=requires_grad) for _ in range(N)]


@pytest.mark.parametrize("kind", ["last", "learned", "mean", "max", "sum"])
def test_shape(kind: str) -> None:
    fusion = build_fusion(kind, N, H, k=2)
    assert fusion(hidden_states()).shape == (B, L, H)


def test_last_layer_returns_last() -> None:
    hs = hidden_states()
    assert torch.equal(LastLayer()(hs), hs[-1])


@pytest.mark.parametrize("kind", ["mean", "max", "sum"])
@pytest.mark.parametrize("k", [1, 2, N])
def test_pool_last_layers_values(kind: str, k: int) -> None:
    hs = hidden_states()
    stacked = torch.stack(hs[-k:])
    expected = {"mean": stacked.mean(0), "max": stacked.max(0).values, "sum": stacked.sum(0)}[kind]
    torch.testing.assert_close(PoolLastLayers(kind, k)(hs), expected)


def test_learned_matches_formula() -> None:
    torch.manual_seed(0)
    fusion = LearnedLayerFusion(N, H)
    hs = hidden_states()
    scores = torch.stack([fusion.score(h).squeeze(-1) for h in hs], dim=-1)  # [B, L, N]
    alpha = scores.softmax(-1)
    fused = sum(alpha[..., i : i + 1] * hs[i] for i in range(N))
    torch.testing.assert_close(fusion(hs), fusion.dense(fused))
    torch.testing.assert_close(fusion.last_alpha, alpha)


def test_layer_weights_sum_to_one() -> None:
    torch.manual_seed(0)
    fusion = LearnedLayerFusion(N, H)
    hs = hidden_states()
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, :3] = False
    for m in (None, mask):
        w = fusion.layer_weights(hs, m)
        assert w.shape == (N,)
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(), torch.tensor(1.0))


def test_layer_weights_respond_to_input() -> None:
    fusion = LearnedLayerFusion(N, H)
    with torch.no_grad():
        fusion.score.weight.fill_(1.0)
    ones = torch.ones(B, L, H)
    # All-ones score weights: layer i (constant i) scores i * H, so the last layer dominates.
    low = fusion.layer_weights([ones * 0.0 for _ in range(N)])
    torch.testing.assert_close(low, torch.full((N,), 1.0 / N))
    high = fusion.layer_weights([ones * i for i in range(N)])
    assert high.argmax().item() == N - 1
    assert high[-1] > 0.99
    flipped = fusion.layer_weights([ones * (N - 1 - i) for i in range(N)])
    assert flipped.argmax().item() == 0


def test_layer_weights_ignore_padded_positions() -> None:
    torch.manual_seed(0)
    fusion = LearnedLayerFusion(N, H)
    hs = hidden_states()
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[:, :2] = False
    adversarial = [h.clone() for h in hs]
    adversarial[0][:, :2] = 1e3  # would dominate layer 0 if padding were counted
    torch.testing.assert_close(
        fusion.layer_weights(hs, mask), fusion.layer_weights(adversarial, mask)
    )
    assert not torch.allclose(fusion.layer_weights(hs), fusion.layer_weights(adversarial))
    with pytest.raises(ValueError, match="no real position"):
        fusion.layer_weights(hs, torch.zeros(B, L, dtype=torch.bool))


def test_learned_rejects_wrong_layer_count() -> None:
    with pytest.raises(ValueError, match="n_layers=4"):
        LearnedLayerFusion(N, H)(hidden_states()[:-1])


@pytest.mark.parametrize("kind", ["last", "learned", "mean", "max", "sum"])
def test_gradients_flow(kind: str) -> None:
    torch.manual_seed(0)
    fusion = build_fusion(kind, N, H, k=2)
    hs = hidden_states(requires_grad=True)
    out = fusion(hs)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in fusion.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    used = hs if kind == "learned" else hs[-(1 if kind == "last" else 2) :]
    for h in used:
        assert h.grad is not None and h.grad.abs().sum() > 0


def test_build_fusion_errors() -> None:
    with pytest.raises(ValueError, match=r"'avg'.*'last'.*'learned'"):
        build_fusion("avg", N, H)
    with pytest.raises(ValueError, match=r"k=0.*1\.\.4"):
        build_fusion("mean", N, H, k=0)
    with pytest.raises(ValueError, match=r"k=5.*1\.\.4"):
        build_fusion("max", N, H, k=N + 1)
