"""Catalogue losses: full softmax, sampled softmax with logQ correction and in-batch
negatives, gBCE; never scoring the whole catalogue when sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recbert.config import ModelConfig, RunConfig, StageConfig
from recbert.data.vocab import N_SPECIAL
from recbert.errors import ConfigError
from recbert.model.recommender import SequenceRecommender
from recbert.training.losses import GBCELoss, LossContext, SampledSoftmaxLoss, build_loss, full_softmax_loss

N_ITEMS = 40


def scorer_and_batch(seed=0, n=24):
    torch.manual_seed(seed)
    model = SequenceRecommender(ModelConfig(hidden=16, layers=1, heads=2, intermediate=32, max_len=8,
                                            n_tokens=N_ITEMS + N_SPECIAL))
    with torch.no_grad():
        model.scorer.bias.normal_()
    hidden = torch.randn(n, 16, requires_grad=True)
    targets = torch.randint(N_SPECIAL, N_SPECIAL + N_ITEMS, (n,))
    return model.scorer, hidden, targets


def ctx(seed=0, counts=None, **stage):
    return LossContext(StageConfig(**stage), N_ITEMS, counts, torch.Generator().manual_seed(seed))


def test_sampled_softmax_over_every_item_without_correction_is_the_full_softmax():
    scorer, hidden, targets = scorer_and_batch()
    sampled = SampledSoftmaxLoss(ctx(negatives=N_ITEMS, in_batch_negatives=False, logq_correction=False))
    a = sampled(hidden, targets, scorer)
    ga, = torch.autograd.grad(a, hidden)
    b = full_softmax_loss(hidden, targets, scorer)
    gb, = torch.autograd.grad(b, hidden)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-7)
    # ... and with the (exhaustive) correction too: every candidate is expected once
    c = SampledSoftmaxLoss(ctx(negatives=N_ITEMS, in_batch_negatives=False))(hidden, targets, scorer)
    assert c.item() == pytest.approx(b.item(), rel=1e-6)


def test_sampled_losses_never_score_the_whole_catalogue():
    scorer, hidden, targets = scorer_and_batch()

    def refuse(*args, **kwargs):
        raise AssertionError("the full catalogue was scored")

    scorer.forward = refuse
    for loss in ("sampled_softmax", "gbce"):
        value = build_loss(ctx(loss=loss, negatives=8))(hidden, targets, scorer)
        assert math.isfinite(value.item()) and value.requires_grad


def test_uniform_logq_correction_scales_the_negatives_up_to_the_catalogue():
    """-s_t + log(exp(s_t) + n/M * sum_j exp(s_j)): the sampled part of the denominator
    is the importance-sampling estimate of the rest of the catalogue's."""
    scorer, hidden, targets = scorer_and_batch()
    got = SampledSoftmaxLoss(ctx(seed=3, negatives=10, in_batch_negatives=False))(hidden, targets, scorer)
    negatives = torch.randint(0, N_ITEMS, (10,), generator=torch.Generator().manual_seed(3))
    scores = scorer(hidden).detach().double()
    t = targets - N_SPECIAL
    neg = scores[:, negatives].masked_fill(negatives[None] == t[:, None], float("-inf"))
    target = scores.gather(1, t[:, None])[:, 0]
    want = (-target + torch.log(target.exp() + N_ITEMS / 10 * neg.exp().sum(1))).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_logq_corrected_sampled_softmax_estimates_the_full_softmax_better():
    """Popular items are over-sampled; without the correction the loss is biased."""
    scorer, hidden, targets = scorer_and_batch(n=64)
    full = full_softmax_loss(hidden, targets, scorer).item()
    counts = (1000.0 / (np.arange(N_ITEMS) + 1) ** 1.2).astype(np.int64)
    errors = {}
    for logq in (False, True):
        loss = SampledSoftmaxLoss(ctx(seed=1, counts=counts, negatives=20, negative_sampler="popularity",
                                      in_batch_negatives=False, logq_correction=logq))
        values = [loss(hidden, targets, scorer).item() for _ in range(200)]
        errors[logq] = abs(np.mean(values) - full)
    assert errors[True] < errors[False] / 2, errors


def test_accidental_hits_are_masked_and_in_batch_targets_are_candidates():
    scorer, hidden, targets = scorer_and_batch()
    targets[:] = targets[0]  # every row has the same target: all in-batch candidates are hits
    only_batch = SampledSoftmaxLoss(ctx(negatives=1, logq_correction=False))
    only_batch.sampler.sample = lambda: targets[:1] - N_SPECIAL  # the one negative is the target too
    assert only_batch(hidden, targets, scorer).item() == pytest.approx(0.0, abs=1e-6)  # nothing to beat


def test_gbce_with_t_zero_is_plain_bce_and_beta_follows_the_paper():
    scorer, hidden, targets = scorer_and_batch()
    loss = GBCELoss(ctx(seed=5, loss="gbce", negatives=6, gbce_t=0.0))
    assert loss.beta == pytest.approx(1.0)
    negatives = torch.randint(0, N_ITEMS, (6,), generator=torch.Generator().manual_seed(5))
    t = targets - N_SPECIAL
    q = scorer.query(hidden)
    pos = (q * scorer.item_vectors()[t]).sum(-1) + scorer.bias[t]
    neg = q @ scorer.item_vectors()[negatives].T + scorer.bias[negatives]
    neg_terms = (-F.logsigmoid(-neg)).masked_fill(negatives[None] == t[:, None], 0.0).sum(1)
    want = (-F.logsigmoid(pos) + neg_terms).mean()
    assert loss(hidden, targets, scorer).item() == pytest.approx(want.item(), rel=1e-6)
    alpha = 6 / (N_ITEMS - 1)
    assert GBCELoss(ctx(loss="gbce", negatives=6, gbce_t=0.75)).beta == pytest.approx(
        alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha))


def test_bad_negative_settings_are_one_clear_error():
    with pytest.raises(ConfigError, match=r"train.negatives=41 must be between 1 and the catalogue size \(40"):
        build_loss(ctx(loss="sampled_softmax", negatives=41))
    for override, key in (("train.negatives=0", "negatives"), ("train.gbce_t=1.5", "gbce_t"),
                          ("train.negative_sampler=zipf", "negative_sampler")):
        with pytest.raises(ConfigError, match=key):
            RunConfig.load(None, [override])


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_equals_torch_on_the_whole_logits_with_the_same_gradients(eps):
    scorer, hidden, targets = scorer_and_batch(seed=3)
    loss = build_loss(ctx(label_smoothing=eps))(hidden, targets, scorer)
    (grad,) = torch.autograd.grad(loss, hidden)
    h2 = hidden.detach().clone().requires_grad_(True)
    expected = F.cross_entropy(scorer(h2), targets - N_SPECIAL, label_smoothing=eps)
    (grad2,) = torch.autograd.grad(expected, h2)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(grad, grad2, rtol=1e-4, atol=1e-6)

    class Plain(torch.nn.Module):  # a scorer without item factors: the logits path
        def forward(self, h):
            return scorer(h)

    plain = build_loss(ctx(label_smoothing=eps))(hidden, targets, Plain())
    assert float(plain) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)


def test_label_smoothing_is_refused_off_the_full_softmax_and_out_of_range():
    with pytest.raises(ConfigError, match="label_smoothing works with loss = 'full_softmax'"):
        StageConfig(loss="sampled_softmax", label_smoothing=0.1)
    with pytest.raises(ConfigError, match=r"label_smoothing must be in \[0, 1\)"):
        StageConfig(label_smoothing=1.0)
