import numpy as np
import pytest
import torch

from recbert.data.vocab import N_SPECIAL
from recbert.errors import CheckpointError, ConfigError, DataError
from recbert.heads.base import rows_from_tokens
from recbert.heads.ctr import CTRConfig, CTRHead, CTRModel
from recbert.heads.losses import roc_auc
from tests.heads.tiny import tiny_backbone

N_ITEMS = 20


def backbone(seed=0, hidden=16, **kw):
    return tiny_backbone(seed, N_ITEMS, hidden=hidden, **kw)


def ring_clicks(rng, n):
    """Histories walk the item ring; the click happens iff the candidate is the next item
    after the last one (half the rows), otherwise the candidate is a random other item."""
    seqs, cands, clicks = [], [], []
    for _ in range(n):
        length, start = int(rng.integers(2, 9)), int(rng.integers(N_ITEMS))
        walk = (start + np.arange(length)) % N_ITEMS
        nxt = (walk[-1] + 1) % N_ITEMS
        click = rng.random() < 0.5
        cand = nxt if click else int(rng.choice([i for i in range(N_ITEMS) if i != nxt]))
        seqs.append(walk + N_SPECIAL)
        cands.append(cand + N_SPECIAL)
        clicks.append(float(click))
    return rows_from_tokens(seqs, 8), torch.tensor(cands), torch.tensor(clicks)


def test_shapes_gradients_and_context_features():
    model = CTRModel(backbone(), CTRConfig(pooling="mean_max", n_context=3))
    x, c, y = ring_clicks(np.random.default_rng(0), 6)
    ctx = torch.randn(6, 3, requires_grad=True)
    logits = model(x, c, ctx)
    assert logits.shape == (6,)
    model.loss(logits, y).backward()
    params = dict(model.named_parameters())
    for name in ("backbone.embeddings.item.weight", "backbone.encoder.layers.0.attention.qkv.weight", "project.weight", "tower.out.weight"):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    p = model.predict_proba(x, c, ctx)
    assert p.shape == (6,) and ((p > 0) & (p < 1)).all() and model.training
    assert CTRHead is CTRModel


def test_candidate_vectors_come_from_the_tied_item_table():
    model = CTRModel(backbone())
    c = torch.tensor([3, 7])
    assert torch.equal(model.candidate_vectors(c), model.scorer.item_table.weight[c])
    assert isinstance(model.project, torch.nn.Identity)  # 'cls' pooling has the model width


def test_pretrained_encoder_loads_with_identical_outputs(tmp_path):
    ref = backbone(seed=5, fusion="mean", reuse_block="cnn")
    ref.save_pretrained(tmp_path / "m")
    model = CTRModel.from_pretrained(tmp_path / "m", CTRConfig(), expect_n_tokens=len(ref.vocab), expect_hidden=16)
    model.eval()
    ref.eval()
    x, _, _ = ring_clicks(np.random.default_rng(1), 4)
    a, b = ref(x, causal=False), model.encode(x)
    for s, t in zip(a.hidden_states, b.hidden_states):
        assert torch.equal(s, t)
    assert torch.equal(a.sequence_output, b.sequence_output)
    with pytest.raises(CheckpointError, match="vocabulary size mismatch"):
        CTRModel.from_pretrained(tmp_path / "m", expect_n_tokens=50)
    with pytest.raises(CheckpointError, match="width mismatch"):
        CTRModel.from_pretrained(tmp_path / "m", expect_hidden=8)


STEPS = 150


@pytest.mark.parametrize("use_product", [True, False])
def test_product_feature_switch_sets_the_tower_width(use_product):
    """ctr.use_product: the tower reads [u, c, proj(u) * c] (on) or [u, c] (off)."""
    model = CTRModel(backbone(), CTRConfig(pooling="mean_max", use_product=use_product))
    x, c, y = ring_clicks(np.random.default_rng(1), 5)
    h = model.hidden
    assert model.features(x, c).shape == (5, 2 * h + h + (h if use_product else 0))
    assert isinstance(model.project, torch.nn.Linear) == use_product
    model.loss(model(x, c), y).backward()


def test_ctr_head_learns_next_item_on_the_ring():
    rng = np.random.default_rng(0)
    x, c, y = ring_clicks(rng, 1000)
    xt, ct, yt = ring_clicks(rng, 400)
    torch.manual_seed(0)
    model = CTRModel(backbone(), CTRConfig(dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        idx = torch.randint(len(x), (64,), generator=g)
        loss = model.loss(model(x[idx], c[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    p = model.predict_proba(xt, ct)
    auc = roc_auc(p, yt)
    acc = float(((p > 0.5).float() == yt).float().mean())
    assert auc > 0.85 and acc > 0.75



def test_bad_inputs_and_config():
    model = CTRModel(backbone(), CTRConfig(n_context=2))
    x, c, y = ring_clicks(np.random.default_rng(0), 3)
    with pytest.raises(DataError, match="n_context"):
        model(x, c)
    with pytest.raises(DataError, match=r"\[3, 2\]"):
        model(x, c, torch.zeros(3, 5))
    with pytest.raises(DataError, match="candidates.*outside"):
        model(x, torch.tensor([3, 4, 999]), torch.zeros(3, 2))
    with pytest.raises(DataError, match="one token per history row"):
        model(x, c[:2], torch.zeros(3, 2))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        model.loss(model(x, c, torch.zeros(3, 2)), torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(DataError, match="n_context is 0"):
        CTRModel(backbone())(x, c, torch.zeros(3, 2))
    with pytest.raises(ConfigError, match="ctr.pooling"):
        CTRConfig(pooling="sum")
    with pytest.raises(ConfigError, match="ctr.pos_weight"):
        CTRConfig(pos_weight=0.0)
    with pytest.raises(ConfigError, match="ctr.hidden_dim"):
        CTRConfig.from_dict({"hidden_dim": [8]})
