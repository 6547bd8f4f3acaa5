import pytest
import torch

from recbert.config import ModelConfig
from recbert.data.vocab import PAD
from recbert.model.embeddings import SequenceEmbeddings
from recbert.model.encoder import Encoder, attention_mask


def tiny(**kw) -> ModelConfig:
    base = dict(hidden=16, layers=2, heads=2, intermediate=32, max_len=8, dropout=0.0, attention_dropout=0.0, n_tokens=20)
    base.update(kw)
    return ModelConfig(**base)


def encode(cfg, ids, causal):
    torch.manual_seed(0)
    emb, enc = SequenceEmbeddings(cfg), Encoder(cfg)
    emb.eval(), enc.eval()
    return enc(emb(ids), ids, causal)


def test_outputs_expose_every_hidden_layer():
    cfg = tiny(layers=3)
    ids = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]])
    out = encode(cfg, ids, causal=False)
    assert len(out.hidden_states) == 4
    assert all(h.shape == (2, 5, 16) for h in out.hidden_states)
    assert torch.equal(out.last_hidden_state, out.hidden_states[-1])
    assert torch.equal(out.padding_mask, ids != PAD)


def test_attention_mask_hides_padding_and_future():
    ids = torch.tensor([[0, 4, 5]])
    bi = attention_mask(ids, causal=False)[0, 0]
    ca = attention_mask(ids, causal=True)[0, 0]
    assert not bi[1, 0] and bi[1, 2]  # pad key hidden, future visible
    assert not ca[1, 2] and ca[2, 1]  # future hidden when causal
    assert bi.diagonal().all() and ca.diagonal().all()


@pytest.mark.parametrize("filter_mix", [0.0, 0.7, 0.99])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_causal_outputs_do_not_depend_on_future_items(residual, norm, filter_mix):
    cfg = tiny(residual_attention=residual, norm=norm, filter_mix=filter_mix)
    a = torch.tensor([[3, 4, 5, 6, 7]])
    b = torch.tensor([[3, 4, 5, 9, 12]])
    oa, ob = encode(cfg, a, True), encode(cfg, b, True)
    assert torch.allclose(oa.last_hidden_state[:, :3], ob.last_hidden_state[:, :3], atol=1e-6)
    assert not torch.allclose(oa.last_hidden_state[:, 3:], ob.last_hidden_state[:, 3:])
    bi_a, bi_b = encode(cfg, a, False), encode(cfg, b, False)
    assert not torch.allclose(bi_a.last_hidden_state[:, :3], bi_b.last_hidden_state[:, :3])


@pytest.mark.parametrize("filter_mix", [0.0, 0.7])
@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("residual", [False, True])
def test_padding_content_does_not_leak(residual, norm, filter_mix):
    cfg = tiny(residual_attention=residual, norm=norm, filter_mix=filter_mix)
    torch.manual_seed(0)
    emb, enc = SequenceEmbeddings(cfg), Encoder(cfg)
    emb.eval(), enc.eval()
    ids = torch.tensor([[0, 0, 5, 6, 7]])
    x = emb(ids)
    x2 = x.clone()
    x2[:, :2] = 1e4  # adversarial values at the padded positions
    for causal in (False, True):
        o1, o2 = enc(x, ids, causal), enc(x2, ids, causal)
        assert torch.allclose(o1.last_hidden_state[:, 2:], o2.last_hidden_state[:, 2:], atol=1e-5)


def test_residual_attention_changes_the_function():
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    plain = encode(tiny(residual_attention=False), ids, False).last_hidden_state
    real = encode(tiny(residual_attention=True), ids, False).last_hidden_state
    assert not torch.allclose(plain, real)


def test_sdpa_and_explicit_attention_paths_agree():
    cfg = tiny()
    torch.manual_seed(0)
    emb, enc = SequenceEmbeddings(cfg), Encoder(cfg)
    emb.eval(), enc.eval()
    ids = torch.tensor([[0, 3, 4, 5], [6, 7, 8, 9]])
    x = emb(ids)
    mask = attention_mask(ids, True)
    layer = enc.layers[0]
    fast, _ = layer(x, mask)
    slow, scores = layer(x, mask, keep_scores=True)
    assert scores is not None
    assert torch.allclose(fast, slow, atol=1e-5)


def test_sequence_longer_than_max_len_is_rejected():
    cfg = tiny(max_len=4)
    with pytest.raises(ValueError, match="max_len"):
        SequenceEmbeddings(cfg)(torch.ones(1, 5, dtype=torch.long))


def test_item_feature_embeddings_are_averaged_and_ignore_missing():
    cfg = tiny(feature_cardinalities={"brand": 3}, feature_widths={"brand": 2})
    emb = SequenceEmbeddings(cfg)
    table = torch.zeros(20, 2, dtype=torch.long)
    table[5] = torch.tensor([1, 2])
    table[6] = torch.tensor([1, 0])
    emb.set_feature_table("brand", table)
    emb.eval()
    with torch.no_grad():
        emb.norm.weight.fill_(1.0), emb.norm.bias.zero_()
    ids = torch.tensor([[5, 6]])
    out = emb(ids)
    pos = emb.position(torch.tensor([cfg.max_len - 2, cfg.max_len - 1]))
    f = emb.features["brand"].weight
    raw5 = emb.item.weight[5] + pos[0] + (f[1] + f[2]) / 2
    raw6 = emb.item.weight[6] + pos[1] + f[1]
    expected = torch.nn.functional.layer_norm(torch.stack([raw5, raw6]), (16,))
    assert torch.allclose(out[0], expected, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        emb.set_feature_table("brand", torch.zeros(20, 3, dtype=torch.long))
