import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recbert.data.vocab import N_SPECIAL
from recbert.errors import CheckpointError, ConfigError, DataError
from recbert.heads.base import rows_from_tokens
from recbert.heads.classification import HeadConfig, SequenceClassifier
from recbert.heads.losses import binary_focal_loss, inverse_frequency_weights, multiclass_focal_loss, roc_auc
from tests.heads.tiny import tiny_backbone

N_ITEMS = 24


def backbone(seed=0, hidden=16, n_items=N_ITEMS, **kw):
    return tiny_backbone(seed, n_items, hidden=hidden, **kw)


def random_rows(rng, n, lo=3, hi=8, items=range(N_SPECIAL, N_SPECIAL + N_ITEMS)):
    items = np.asarray(list(items))
    return [rng.choice(items, size=int(rng.integers(lo, hi + 1))) for _ in range(n)]


def contains_task(rng, n, targets=(N_SPECIAL,)):
    """Rows of non-target items; each target is inserted with probability 1/2 (multi-label)."""
    pool = range(N_SPECIAL + len(targets), N_SPECIAL + N_ITEMS)
    seqs = random_rows(rng, n, items=pool)
    labels = np.zeros((n, len(targets)), dtype=np.float32)
    for i, s in enumerate(seqs):
        for j, t in enumerate(targets):
            if rng.random() < 0.5:
                s[rng.integers(len(s))] = t
                labels[i, j] = 1.0
    return rows_from_tokens(seqs, 8), torch.from_numpy(labels)


def group_task(rng, n, n_groups=3):
    """Each row mostly holds items of its group (75%); label = group."""
    size = N_ITEMS // n_groups
    labels = rng.integers(n_groups, size=n)
    seqs = []
    for g in labels:
        length = int(rng.integers(3, 9))
        own = N_SPECIAL + g * size + rng.integers(size, size=length)
        noise = rng.integers(N_SPECIAL, N_SPECIAL + N_ITEMS, size=length)
        seqs.append(np.where(rng.random(length) < 0.75, own, noise))
    return rows_from_tokens(seqs, 8), torch.from_numpy(labels)


def train(model, x, y, steps=100, lr=3e-3, batch=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (batch,), generator=g)
        loss = model.loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


# -- losses -------------------------------------------------------------------------------
def test_focal_loss_with_gamma_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits, y = torch.randn(32, 5), torch.randint(5, (32,))
    w = torch.rand(5) + 0.1
    assert torch.allclose(multiclass_focal_loss(logits, y, gamma=0.0), F.cross_entropy(logits, y))
    assert torch.allclose(multiclass_focal_loss(logits, y, gamma=0.0, weight=w), F.cross_entropy(logits, y, weight=w))
    b, t = torch.randn(32, 3), torch.randint(2, (32, 3)).float()
    assert torch.allclose(binary_focal_loss(b, t, gamma=0.0), F.binary_cross_entropy_with_logits(b, t))


def test_focal_loss_down_weights_easy_examples():
    logits = torch.tensor([[4.0, 0.0], [0.2, 0.0]])  # easy, hard (both class 0)
    y = torch.tensor([0, 0])
    ce = multiclass_focal_loss(logits, y, gamma=0.0, reduction="none")
    fl = multiclass_focal_loss(logits, y, gamma=2.0, reduction="none")
    assert (fl < ce).all() and (fl[0] / ce[0]) < (fl[1] / ce[1])
    bl = binary_focal_loss(torch.tensor([4.0, 0.2]), torch.tensor([1.0, 1.0]), gamma=2.0, reduction="none")
    assert bl[0] < bl[1]


def test_loss_helpers():
    assert inverse_frequency_weights([0, 0, 0, 1], 2, smoothing=0.0) == pytest.approx([4 / 6, 2.0])
    assert roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)


# -- shapes, gradients, identity with the pretrained encoder ---------------------------------------------
@pytest.mark.parametrize("task,n_classes,shape,pooling", [
    ("multiclass", 4, (5, 4), "mean"), ("multilabel", 3, (5, 3), "mean"), ("binary", 2, (5,), "mean"),
    ("multiclass", 4, (5, 4), "cls"), ("multilabel", 3, (5, 3), "mean_max"), ("binary", 2, (5,), "attention"),
    ("multiclass", 4, (5, 4), "lstm_attention"),
])
def test_shapes_probabilities_and_gradient_flow(task, n_classes, shape, pooling):
    clf = SequenceClassifier(backbone(), HeadConfig(task=task, n_classes=n_classes, pooling=pooling,
                                                     variant="concat" if pooling == "mean" else "add"))
    x, _ = contains_task(np.random.default_rng(0), 5)
    logits = clf(x)
    assert logits.shape == shape
    labels = {"multiclass": torch.tensor([0, 1, 2, 3, 0]), "multilabel": torch.ones(5, 3),
              "binary": torch.tensor([0, 1, 1, 0, 1])}[task]
    clf.loss(logits, labels).backward()
    for name in ("backbone.embeddings.item.weight", "backbone.encoder.layers.0.attention.qkv.weight", "tower.out.weight"):
        grad = dict(clf.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    p = clf.predict_proba(x)
    assert p.shape == shape and clf.training
    if task == "multiclass":
        assert torch.allclose(p.sum(-1), torch.ones(5))
    assert ((p >= 0) & (p <= 1)).all()


def test_pretrained_encoder_loads_with_identical_outputs(tmp_path):
    model = backbone(seed=3, fusion="learned", reuse_block="gru", residual_attention=True)
    model.save_pretrained(tmp_path / "m")
    clf = SequenceClassifier.from_pretrained(tmp_path / "m", HeadConfig(n_classes=3),
                                             expect_n_tokens=len(model.vocab), expect_hidden=16).eval()
    x = torch.tensor([[0, 0, 0, 3, 9, 4, 5, 6], [3, 4, 5, 6, 7, 8, 9, 10]])
    ref = model.eval()(x, causal=False)
    out = clf.encode(x)
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    for a, b in zip(ref.hidden_states, out.hidden_states):
        assert torch.equal(a, b)
    assert torch.equal(ref.sequence_output, out.sequence_output)
    assert clf.embeddings.item.weight is clf.scorer.item_table.weight
    assert clf.vocab == model.vocab
    # rows() maps original ids through the pretrained vocabulary (unknown -> UNK)
    assert clf.rows([[100, 101, 999]]).tolist() == [[3, 4, 2]]


def test_head_reuses_the_recommender_modules():
    model = backbone()
    clf = SequenceClassifier(model, HeadConfig())
    assert clf.encoder is model.encoder and clf.embeddings is model.embeddings
    assert clf.fusion is model.fusion and clf.reuse is model.reuse
    assert SequenceClassifier(model, HeadConfig(), keep_scorer=False).scorer is None


# -- learning ---------------------------------------------------------------------------------
def test_binary_head_learns_whether_an_item_is_present():
    rng = np.random.default_rng(0)
    x, y = contains_task(rng, 600)
    xt, yt = contains_task(rng, 300)
    torch.manual_seed(0)
    clf = train(SequenceClassifier(backbone(), HeadConfig(task="binary", dropout=0.0)), x, y[:, 0])
    acc = float(((clf.predict_proba(xt) > 0.5).float() == yt[:, 0]).float().mean())
    assert acc > 0.85


def test_multilabel_focal_head_learns_three_presence_labels():
    rng = np.random.default_rng(1)
    targets = (N_SPECIAL, N_SPECIAL + 1, N_SPECIAL + 2)
    x, y = contains_task(rng, 600, targets)
    xt, yt = contains_task(rng, 300, targets)
    torch.manual_seed(0)
    cfg = HeadConfig(task="multilabel", n_classes=3, loss="focal", focal_gamma=1.0, dropout=0.0)
    clf = train(SequenceClassifier(backbone(), cfg), x, y, steps=120)
    acc = float(((clf.predict_proba(xt) > 0.5).float() == yt).float().mean())
    assert acc > 0.8


@pytest.mark.parametrize("loss", ["ce", "focal"])
def test_multiclass_head_learns_item_groups(loss):
    rng = np.random.default_rng(2)
    x, y = group_task(rng, 600)
    xt, yt = group_task(rng, 300)
    torch.manual_seed(0)
    cfg = HeadConfig(task="multiclass", n_classes=3, loss=loss, class_weights=[1.0, 1.0, 2.0], dropout=0.0)
    clf = train(SequenceClassifier(backbone(), cfg), x, y)
    acc = float((clf.predict(xt) == yt).float().mean())
    assert acc > 0.8  # chance: 1/3


# -- bad configs and labels ------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,field", [
    ({"task": "softmax"}, "head.task"), ({"n_classes": 1}, "head.n_classes"),
    ({"task": "binary", "n_classes": 3}, "head.n_classes"), ({"pooling": "sum"}, "head.pooling"),
    ({"hidden_dims": [0]}, "head.hidden_dims"), ({"dropout": 1.0}, "head.dropout"),
    ({"loss": "hinge"}, "head.loss"), ({"focal_gamma": -1.0}, "head.focal_gamma"),
    ({"class_weights": [1.0]}, "head.class_weights"), ({"variant": "mul"}, "head.variant"),
    ({"focal_alpha": 0.5}, "head.focal_alpha"),
])
def test_bad_head_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        HeadConfig(**kwargs)


def test_head_config_from_dict_is_strict():
    cfg = HeadConfig.from_dict({"task": "multilabel", "n_classes": "4", "hidden_dims": "32,16"})
    assert cfg.n_classes == 4 and cfg.hidden_dims == [32, 16]
    with pytest.raises(ConfigError, match="head.n_clases"):
        HeadConfig.from_dict({"n_clases": 3})


def test_multilabel_targets_to_a_softmax_head_are_rejected():
    clf = SequenceClassifier(backbone(), HeadConfig(task="multiclass", n_classes=3))
    x, _ = contains_task(np.random.default_rng(0), 4)
    with pytest.raises(ConfigError, match="multilabel targets.*multiclass"):
        clf.loss(clf(x), torch.tensor([[1.0, 0.0, 1.0]] * 4))
    ml = SequenceClassifier(backbone(), HeadConfig(task="multilabel", n_classes=3))
    with pytest.raises(ConfigError, match="multilabel head"):
        ml.loss(ml(x), torch.tensor([0, 1, 2, 0]))


def test_labels_outside_the_classes_are_rejected():
    clf = SequenceClassifier(backbone(), HeadConfig(task="multiclass", n_classes=3))
    x, _ = contains_task(np.random.default_rng(0), 4)
    with pytest.raises(DataError, match=r"outside \[0, 3\).*\[-1, 3\]"):
        clf.loss(clf(x), torch.tensor([0, 3, -1, 2]))
    binary = SequenceClassifier(backbone(), HeadConfig(task="binary"))
    with pytest.raises(DataError, match=r"\[2\.0\]"):
        binary.loss(binary(x), torch.tensor([0, 1, 2, 1]))


def test_bad_input_tokens_and_pretrained_mismatch(tmp_path):
    model = backbone()
    clf = SequenceClassifier(model, HeadConfig())
    with pytest.raises(DataError, match="outside"):
        clf(torch.tensor([[3, 4, 500]]))
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="vocabulary size mismatch"):
        SequenceClassifier.from_pretrained(tmp_path / "m", HeadConfig(), expect_n_tokens=len(model.vocab) + 5)
    with pytest.raises(CheckpointError, match="width mismatch.*hidden=16.*hidden=32"):
        SequenceClassifier.from_pretrained(tmp_path / "m", HeadConfig(), expect_hidden=32)
    with pytest.raises(CheckpointError, match="does not exist"):
        SequenceClassifier.from_pretrained(tmp_path / "missing", HeadConfig())
