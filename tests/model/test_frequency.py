import pytest
import torch

from recbert.config import ModelConfig
from recbert.errors import ConfigError
from recbert.model.encoder import Encoder
from recbert.model.embeddings import SequenceEmbeddings
from recbert.model.frequency import FrequencyRescale, moving_average


def naive_average(x, real, window, causal):
    b, length, h = x.shape
    out = torch.zeros_like(x)
    for i in range(b):
        for t in range(length):
            hi = t + 1 if causal else min(length, t + window // 2 + 1)
            span = [s for s in range(max(0, hi - window), hi) if real[i, s]]
            if span:
                out[i, t] = x[i, span].mean(0)
    return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [1, 2, 3, 5, 12])
def test_moving_average_matches_the_definition(causal, window):
    torch.manual_seed(0)
    x = torch.randn(3, 9, 4, dtype=torch.float64)
    real = torch.tensor([[False] * 4 + [True] * 5, [True] * 9, [False] * 8 + [True]])
    got = moving_average(x, real, window, causal)
    assert torch.allclose(got, naive_average(x, real, window, causal))


def test_window_one_is_the_identity_on_real_tokens():
    x = torch.randn(2, 6, 3)
    real = torch.ones(2, 6, dtype=torch.bool)
    assert torch.allclose(moving_average(x, real, 1, True), x, atol=1e-6)


def test_causal_average_ignores_later_positions():
    x = torch.randn(1, 7, 3)
    y = x.clone()
    y[:, 4:] += 100.0
    real = torch.ones(1, 7, dtype=torch.bool)
    a, b = moving_average(x, real, 3, True), moving_average(y, real, 3, True)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-5)
    assert not torch.allclose(moving_average(x, real, 3, False)[:, 3], moving_average(y, real, 3, False)[:, 3])


def test_beta_one_passes_the_sequence_and_beta_zero_keeps_only_the_low_pass():
    torch.manual_seed(0)
    f = FrequencyRescale(4, window=3, dropout=0.0)
    x = torch.randn(2, 6, 4)
    real = torch.ones(2, 6, dtype=torch.bool)
    with torch.no_grad():
        f.sqrt_beta.fill_(1.0)
        assert torch.allclose(f.delta(x, real, True), x, atol=1e-6)
        f.sqrt_beta.zero_()
        assert torch.allclose(f.delta(x, real, True), moving_average(x, real, 3, True), atol=1e-6)


def test_the_rescaling_is_learned():
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=8, layers=1, heads=2, intermediate=16, max_len=6, dropout=0.0,
                      attention_dropout=0.0, n_tokens=20, filter_mix=0.5)
    emb, enc = SequenceEmbeddings(cfg), Encoder(cfg)
    ids = torch.tensor([[0, 4, 5, 6, 7, 8]])
    enc(emb(ids), ids, True).last_hidden_state.square().sum().backward()
    beta = enc.layers[0].filter.sqrt_beta
    assert beta.grad is not None and beta.grad.abs().sum() > 0


def test_filter_mix_changes_the_function_and_zero_builds_no_branch():
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    base = dict(hidden=8, layers=2, heads=2, intermediate=16, max_len=6, dropout=0.0, attention_dropout=0.0,
                n_tokens=20)
    outs = []
    for mix in (0.0, 0.7):
        torch.manual_seed(0)
        cfg = ModelConfig(**base, filter_mix=mix, norm="post")
        emb, enc = SequenceEmbeddings(cfg), Encoder(cfg)
        outs.append(enc(emb(ids), ids, True).last_hidden_state)
        assert (enc.layers[0].filter is None) == (mix == 0.0)
    assert not torch.allclose(outs[0], outs[1])


@pytest.mark.parametrize("bad", [{"filter_mix": -0.1}, {"filter_mix": 1.0}, {"filter_window": 0}])
def test_bad_filter_settings_are_refused(bad):
    with pytest.raises(ConfigError, match="filter_"):
        ModelConfig(**bad)


@pytest.mark.parametrize("filter_causal", [False, True])
def test_filter_causal_keeps_the_causal_window_under_bidirectional_attention(monkeypatch, filter_causal):
    import recbert.model.frequency as frequency

    seen = []
    original = frequency.moving_average
    monkeypatch.setattr(frequency, "moving_average", lambda *a: seen.append(a[3]) or original(*a))
    cfg = ModelConfig(hidden=8, layers=2, heads=2, intermediate=16, max_len=6, n_tokens=20, filter_mix=0.5,
                      filter_causal=filter_causal)
    emb, enc = SequenceEmbeddings(cfg), Encoder(cfg)
    ids = torch.tensor([[0, 4, 5, 6, 7, 8]])
    enc(emb(ids), ids, False)
    enc(emb(ids), ids, True)
    assert seen == [filter_causal] * 2 + [True] * 2
