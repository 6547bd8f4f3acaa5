import numpy as np
import pytest
import torch

from recbert.data.batches import mask_tokens
from recbert.data.vocab import N_SPECIAL
from recbert.errors import ConfigError, DivergenceError
from recbert.heads.base import rows_from_tokens
from recbert.heads.classification import HeadConfig, SequenceClassifier
from recbert.heads.ctr import CTRModel
from recbert.heads.finetune import FinetuneConfig, finetune, mlm_aux_loss
from recbert.training.optim import apply_freeze, layer_depth, make_optimizer, parameter_groups, set_train_modes
from recbert.training.losses import full_softmax_loss, gather_targets
from tests.heads.tiny import tiny_backbone

N_ITEMS = 20


def backbone(seed=0, layers=3, **kw):
    return tiny_backbone(seed, N_ITEMS, layers=layers, **kw)


def head(**kw):
    return SequenceClassifier(backbone(**kw), HeadConfig(task="binary", dropout=0.0))


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def parity_task(rng, n):
    """label = parity of the OLDEST item in the row (rows of 2..8 random items)."""
    seqs = [rng.integers(N_SPECIAL, N_SPECIAL + N_ITEMS, size=int(rng.integers(2, 9))) for _ in range(n)]
    return rows_from_tokens(seqs, 8), torch.tensor([float(s[0] % 2) for s in seqs])


# -- freezing --------------------------------------------------------------------------------
def test_freeze_options_leave_exactly_the_intended_parameters_trainable():
    model = head(fusion="learned")
    names = {n for n, _ in model.named_parameters()}
    head_names = {n for n in names if n.startswith(("tower.", "pooling."))}
    emb = {n for n in names if n.startswith("backbone.embeddings.")}
    layer = {i: {n for n in names if n.startswith(f"backbone.encoder.layers.{i}.")} for i in range(3)}
    top = {n for n in names if n.startswith(tuple(f"backbone.{p}." for p in ("encoder.final_norm", "fusion",
                                                                             "reuse", "scorer")))}
    assert emb and all(layer.values()) and top and head_names
    assert emb | layer[0] | layer[1] | layer[2] | top | head_names == names

    assert apply_freeze(model, "none") and trainable(model) == names
    apply_freeze(model, "all")
    assert trainable(model) == head_names
    apply_freeze(model, "embeddings")
    assert trainable(model) == names - emb
    apply_freeze(model, "partial", 1)
    assert trainable(model) == layer[2] | top | head_names
    apply_freeze(model, "partial", 2)
    assert trainable(model) == layer[1] | layer[2] | top | head_names
    with pytest.raises(ConfigError, match=r"trainable_layers must be in \[1, 3\]"):
        apply_freeze(model, "partial", 4)


def test_frozen_parameters_do_not_change_in_training():
    model = head()
    cfg = FinetuneConfig(freeze="partial", trainable_layers=1, encoder_lr=1e-2, head_lr=1e-2)
    apply_freeze(model, cfg.freeze, cfg.trainable_layers)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_optimizer(model, cfg.encoder_lr, cfg.weight_decay, cfg.head_lr, cfg.layer_decay)
    x, y = parity_task(np.random.default_rng(0), 32)
    for _ in range(3):
        opt.zero_grad()
        model.loss(model(x), y).backward()
        opt.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        if not p.requires_grad:
            assert not changed, n
    assert not torch.equal(before["backbone.encoder.layers.2.ffn.0.weight"], model.encoder.layers[2].ffn[0].weight)


def test_frozen_parts_run_in_eval_mode_while_the_rest_trains():
    model = SequenceClassifier(backbone(dropout=0.5), HeadConfig(task="binary", dropout=0.5))
    x, _ = parity_task(np.random.default_rng(0), 16)
    apply_freeze(model, "all")
    set_train_modes(model)
    assert model.training and model.tower.training
    assert not model.backbone.encoder.training and not model.backbone.embeddings.training
    with torch.no_grad():  # the frozen encoder is deterministic, the head's dropout is not
        a, b = model.encode(x).sequence_output, model.encode(x).sequence_output
        assert torch.equal(a, b)
        assert not torch.equal(model(x), model(x))
    apply_freeze(model, "partial", 1)
    set_train_modes(model)
    assert model.backbone.encoder.training and model.backbone.encoder.layers[2].training
    assert not model.backbone.encoder.layers[0].training and not model.backbone.embeddings.training
    set_train_modes(model, False)
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("schedule,last", [("linear", 0.0), ("constant", 1.0)])
def test_finetune_follows_the_warmup_and_decay_schedule(schedule, last):
    model = head(layers=1)
    x, y = parity_task(np.random.default_rng(0), 64)
    batches = lambda e: [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]  # noqa: E731
    cfg = FinetuneConfig(head_lr=1e-2, warmup_ratio=0.25, schedule=schedule, patience=10)
    rows = []
    finetune(model, batches, lambda m: float(len(rows)), cfg, epochs=4, sink=lambda r, step: rows.append(r))
    lrs = [r["finetune/lr"] for r in rows]  # the head group's rate after each epoch (4 steps each)
    assert lrs[0] == pytest.approx(1e-2)  # warm-up (4 of 16 steps) just ended
    assert lrs[-1] == pytest.approx(1e-2 * last)
    if schedule == "linear":
        assert lrs == sorted(lrs, reverse=True)


# -- parameter groups ---------------------------------------------------------------------------
def test_layer_wise_decay_gives_increasing_lrs_toward_the_top():
    model = CTRModel(backbone())
    cfg = FinetuneConfig(encoder_lr=1e-3, head_lr=5e-3, layer_decay=0.5, weight_decay=0.1)
    groups = parameter_groups(model, cfg.encoder_lr, cfg.weight_decay, cfg.head_lr, cfg.layer_decay)
    lr = {g["name"]: g["lr"] for g in groups}
    assert lr["layer_0"] == pytest.approx(1e-3 * 0.5 ** 3)  # embeddings: lowest
    assert [lr[f"layer_{i}"] for i in range(4)] == pytest.approx([1.25e-4, 2.5e-4, 5e-4, 1e-3])
    assert lr["head"] == 5e-3 and lr["layer_3_no_decay"] == 1e-3
    for g in groups:
        assert all((p.ndim >= 2) == (not g["name"].endswith("_no_decay")) for p in g["params"])
        assert g["weight_decay"] == (0.0 if g["name"].endswith("_no_decay") else 0.1)
    # every trainable parameter in exactly one group
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert layer_depth("backbone.encoder.final_norm.weight", 3) == 3 and layer_depth("tower.out.bias", 3) is None
    assert layer_depth("backbone.encoder.layers.1.ffn.0.weight", 3) == 2
    assert layer_depth("encoder.layers.1.ffn.0.weight", 3) == 2  # a bare recommender's names
    apply_freeze(model, "all")
    assert {g["name"] for g in parameter_groups(model, cfg.encoder_lr, cfg.weight_decay, cfg.head_lr, cfg.layer_decay)} == {"head", "head_no_decay"}


# -- auxiliary MLM ------------------------------------------------------------------------------------
def test_mlm_aux_is_the_pretrained_cloze_loss():
    ref = backbone()
    model = SequenceClassifier(ref, HeadConfig(task="binary"))
    x, _ = parity_task(np.random.default_rng(0), 16)
    cfg = FinetuneConfig(aux="mlm", aux_lambda=0.3)
    got = mlm_aux_loss(model, x, cfg, torch.Generator().manual_seed(7))
    inputs, labels = mask_tokens(x, ref.config.n_tokens, cfg.mask_prob, cfg.last_item_mask_prob,
                                 torch.Generator().manual_seed(7))
    hidden, targets = gather_targets(ref(inputs, causal=False).sequence_output, labels, ref.scorer.n_items)
    assert torch.allclose(got, full_softmax_loss(hidden, targets, ref.scorer))
    got.backward()
    assert model.scorer.bias.grad is not None
    with pytest.raises(ConfigError, match="keep_scorer"):
        mlm_aux_loss(SequenceClassifier(ref, HeadConfig(), keep_scorer=False), x, cfg, torch.Generator())


# -- the loop ---------------------------------------------------------------------------------------
def test_finetune_learns_first_item_parity_with_aux_mlm_and_restores_best():
    rng = np.random.default_rng(0)
    x, y = parity_task(rng, 512)
    xv, yv = parity_task(rng, 256)
    model = head(layers=2)
    cfg = FinetuneConfig(encoder_lr=3e-3, head_lr=3e-3, layer_decay=0.9, aux="mlm", aux_lambda=0.2, patience=3)

    def batches(epoch):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            yield x[idx], y[idx]

    def accuracy(m):
        return float((m.predict(xv) == yv.long()).float().mean())

    rows = []
    res = finetune(model, batches, accuracy, cfg, epochs=25, sink=lambda r, step: rows.append(r))
    assert res.best_score > 0.8  # chance: 0.5
    assert rows and all(r["finetune/aux_loss"] > 0 for r in rows)
    assert accuracy(model) == pytest.approx(res.best_score)  # best weights restored
    assert not model.training


def test_finetune_stops_early_when_the_metric_does_not_improve():
    model = head(layers=1)
    x, y = parity_task(np.random.default_rng(0), 32)
    res = finetune(model, lambda e: [(x, y)], lambda m: 0.5, FinetuneConfig(patience=2), epochs=10)
    assert res.stopped_early and res.epochs_run == 2 and res.best_epoch == 0
    with pytest.raises(ConfigError, match="nothing to train"):
        model2 = head(layers=1)
        for p in model2.parameters():
            p.requires_grad_(False)
        make_optimizer(model2, 1e-3, 0.0)


def test_finetune_with_an_exploding_learning_rate_stops_with_a_divergence_error():
    model = head(layers=1)
    x, y = parity_task(np.random.default_rng(0), 64)
    cfg = FinetuneConfig(encoder_lr=1e30, head_lr=1e30, grad_clip=0.0, patience=50)
    with pytest.raises(DivergenceError, match=r"not finite"):
        finetune(model, lambda e: [(x[:32], y[:32]), (x[32:], y[32:])], lambda m: 0.5, cfg, epochs=20)


def test_finetune_refuses_non_finite_validation_scores_with_the_epoch():
    from recbert.heads.losses import roc_auc

    model = head(layers=1)
    x, y = parity_task(np.random.default_rng(0), 32)
    calls = []

    def val(m):
        calls.append(1)
        scores = m(x).reshape(-1) if len(calls) < 3 else torch.full((32,), float("nan"))
        return roc_auc(scores, y)

    with pytest.raises(DivergenceError, match=r"model scores are not finite: finetune diverged at epoch 2 \(32 NaN"):
        finetune(model, lambda e: [(x, y)], val, FinetuneConfig(patience=50), epochs=5)


# -- loading and compatibility ------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,field", [
    ({"freeze": "top"}, "finetune.freeze"), ({"freeze": "partial", "trainable_layers": 0}, "finetune.trainable_layers"),
    ({"encoder_lr": 0.0}, "finetune.encoder_lr"), ({"layer_decay": 1.5}, "finetune.layer_decay"),
    ({"aux": "mlm", "aux_lambda": 1.0}, "finetune.aux_lambda"), ({"aux_lambda": 0.5}, "finetune.aux_lambda"),
    ({"aux": "mlm", "freeze": "all"}, "finetune.aux"), ({"weight_decay": -1.0}, "finetune.weight_decay"),
    ({"schedule": "step"}, "finetune.schedule"), ({"warmup_ratio": 1.0}, "finetune.warmup_ratio"),
])
def test_bad_finetune_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        FinetuneConfig(**kwargs)
    assert FinetuneConfig.from_dict({"freeze": "partial", "trainable_layers": "2"}).trainable_layers == 2


def test_finetune_runs_a_ctr_model_with_context_and_aux():
    from recbert.heads.ctr import CTRConfig

    rng = np.random.default_rng(0)
    x, _ = parity_task(rng, 64)
    cand = torch.from_numpy(rng.integers(N_SPECIAL, N_SPECIAL + N_ITEMS, size=64))
    ctx = torch.randn(64, 2)
    y = (ctx[:, 0] > 0).float()
    model = CTRModel(backbone(layers=1), CTRConfig(n_context=2, dropout=0.0))
    cfg = FinetuneConfig(freeze="embeddings", aux="mlm", aux_lambda=0.5, head_lr=1e-2)
    res = finetune(model, lambda e: [(x[i:i + 32], cand[i:i + 32], ctx[i:i + 32], y[i:i + 32]) for i in (0, 32)],
                   lambda m: -float(m.loss(m(x, cand, ctx), y)), cfg, epochs=3)
    assert res.epochs_run == 3 and len(res.history) == 3
    assert all(np.isfinite(r["finetune/loss"]) and r["finetune/steps"] == 2 for r in res.history)
    assert not model.embeddings.item.weight.requires_grad


def test_aux_head_loss_trains_a_classifier_on_the_plain_last_layer():
    rng = np.random.default_rng(0)
    x, y = parity_task(rng, 512)
    xv, yv = parity_task(rng, 256)
    model = SequenceClassifier(backbone(layers=2, fusion="mean", fusion_layers=2),
                               HeadConfig(task="binary", dropout=0.0, aux_head=True))
    logits, aux = model.forward_with_aux(x[:4])
    assert logits.shape == aux.shape == (4,)
    torch.testing.assert_close(logits, model(x[:4]))  # the main logits are the plain forward's
    cfg = FinetuneConfig(encoder_lr=3e-3, head_lr=3e-3, aux="head", aux_lambda=0.8, patience=5)

    def batches(epoch):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(x), 64):
            yield x[perm[i:i + 64]], y[perm[i:i + 64]]

    before = model.aux_out.weight.detach().clone()
    rows = []
    res = finetune(model, batches, lambda m: float((m.predict(xv) == yv.long()).float().mean()), cfg, epochs=20,
                   sink=lambda r, step: rows.append(r))
    assert res.best_score > 0.75 and all(r["finetune/aux_loss"] > 0 for r in rows)
    assert not torch.equal(before, model.aux_out.weight)
    with torch.no_grad():  # the auxiliary classifier learned the task from the last layer too
        _, aux = model.forward_with_aux(xv)
    assert float(((aux > 0).long() == yv.long()).float().mean()) > 0.7


def test_aux_head_needs_a_head_built_with_it():
    x, y = parity_task(np.random.default_rng(0), 16)
    with pytest.raises(ConfigError, match="aux_head=true"):
        finetune(head(layers=1), lambda e: [(x, y)], lambda m: 0.5, FinetuneConfig(aux="head", aux_lambda=0.5),
                 epochs=1)
    with pytest.raises(ConfigError, match="head.aux_head=true"):
        head(layers=1).forward_with_aux(x)
    with pytest.raises(ConfigError, match="finetune.aux='head' with finetune.freeze='all'"):
        FinetuneConfig(aux="head", aux_lambda=0.5, freeze="all")


def test_ctr_aux_head_logits():
    from recbert.heads.ctr import CTRConfig

    rng = np.random.default_rng(0)
    x, _ = parity_task(rng, 8)
    cand = torch.from_numpy(rng.integers(N_SPECIAL, N_SPECIAL + N_ITEMS, size=8))
    model = CTRModel(backbone(layers=1), CTRConfig(pooling="mean_max", aux_head=True, dropout=0.0)).eval()
    logits, aux = model.forward_with_aux(x, cand)
    assert logits.shape == aux.shape == (8,)
    torch.testing.assert_close(logits, model(x, cand))
    assert isinstance(model.aux_project, torch.nn.Linear)  # mean_max is 2H wide
