"""Item losses: computed only at positions that carry a target, a real item: a
position whose item has no token of its own (UNK or a hash bucket) can be neither
predicted nor recommended, so it carries no loss (:func:`gather_targets`).

A loss takes the encoder's hidden vectors at target positions ``[N, H]``, the target
tokens ``[N]`` and the model's item scorer, and returns a scalar. ``LOSSES`` is the
registry (the config's ``train.loss`` choices): each entry builds the loss from a
:class:`LossContext` (the stage's settings and the training items' counts).

* ``full_softmax``: cross-entropy over the whole catalogue; memory O(chunk x items), the
  positions scored a chunk at a time with their gradients (:mod:`recbert.training.chunked_softmax`).
* ``sampled_softmax``: cross-entropy over the target and a shared set of candidates: M
  negatives drawn per batch from a proposal (``uniform`` or ``popularity``) plus, with
  ``in_batch_negatives``, the targets of up to M positions of the batch drawn at random
  (a draw from the training popularity); accidental hits (a candidate equal to
  the row's target) are masked, and with ``logq_correction`` each candidate's logit is
  lowered by the log of its expected count among the candidates (Bengio & Senecal 2008;
  Yi et al., RecSys 2019): the candidates' exp-logits then estimate the rest of the
  catalogue's share of the softmax denominator without bias (importance sampling), so
  the loss approaches the full softmax as M grows; the target keeps its own logit, as it
  counts once in the full softmax. Memory O(N x M). With ``negatives`` equal to the catalogue
  size every item is a candidate exactly once and the loss is the full softmax.
* ``gbce``: generalised binary cross-entropy (gSASRec, Petrov & Macdonald, RecSys 2023):
  ``-beta log sigmoid(s+) - sum_j log sigmoid(-s_j)`` over M shared uniform or popularity
  negatives, per target (averaged over the targets), with ``beta = alpha (t (1 - 1/alpha) + 1/alpha)``
  and ``alpha = M / (items - 1)``; ``t = gbce_t`` in [0, 1] calibrates the overconfidence
  that negative sampling causes (t = 0: plain BCE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbert.data.vocab import N_SPECIAL
from recbert.errors import ConfigError, DivergenceError
from recbert.training.chunked_softmax import chunked_softmax_cross_entropy

ItemLoss = Callable[[Tensor, Tensor, nn.Module], Tensor]
SAMPLERS = ("uniform", "popularity")  # proposals of the sampled negatives


@dataclass
class LossContext:
    """What a loss is built from: the stage settings (a ``recbert.config.StageConfig``; not
    imported here, since config reads this module's registries), the catalogue size, the
    training targets' item counts (popularity, ``[n_items]``) and a generator for sampling."""

    stage: Any
    n_items: int
    item_counts: Optional[np.ndarray] = None
    generator: Optional[torch.Generator] = None
    section: str = "train"  # the stage's config section, for messages

    def counts(self) -> np.ndarray:
        """The training item counts as float64, all ones when none were given."""
        return np.asarray(self.item_counts if self.item_counts is not None else np.ones(self.n_items), np.float64)


def full_softmax_loss(hidden: Tensor, targets: Tensor, scorer: nn.Module) -> Tensor:
    """Cross-entropy over the whole catalogue (every real item is a negative); with the
    recommender's :class:`ItemScorer` a chunk of positions at a time, never holding the
    ``[N, items]`` logits (:mod:`recbert.training.chunked_softmax`)."""
    table = getattr(scorer, "item_table", None)  # an ItemScorer (not imported: config reads this module)
    if table is not None and not table.sparse:
        return chunked_softmax_cross_entropy(scorer.query(hidden), scorer.item_vectors(), scorer.bias,
                                             targets - N_SPECIAL)
    return F.cross_entropy(scorer(hidden), targets - N_SPECIAL)


class NegativeSampler:
    """M item indices per call from the proposal, plus each item's probability under it."""

    def __init__(self, ctx: LossContext):
        stage = ctx.stage
        if not 1 <= stage.negatives <= ctx.n_items:
            raise ConfigError(f"{ctx.section}.negatives={stage.negatives} must be between 1 and the catalogue "
                              f"size ({ctx.n_items} items)")
        self.m, self.n_items = stage.negatives, ctx.n_items
        self.generator = ctx.generator
        if stage.negative_sampler == "popularity":
            counts = ctx.counts()
            probs = (counts + 1.0) / (counts + 1.0).sum()  # +1: items unseen in training stay reachable
        else:
            probs = np.full(ctx.n_items, 1.0 / ctx.n_items)
        self.probs = torch.from_numpy(probs)
        self.uniform = stage.negative_sampler == "uniform"

    @property
    def exhaustive(self) -> bool:
        """Every item is a candidate exactly once (M = catalogue size)."""
        return self.m == self.n_items

    def sample(self) -> Tensor:
        if self.exhaustive:
            return torch.arange(self.n_items)
        if self.uniform:
            return torch.randint(0, self.n_items, (self.m,), generator=self.generator)
        return torch.multinomial(self.probs, self.m, replacement=True, generator=self.generator)

    def expected_counts(self, items: Tensor) -> Tensor:
        """Expected number of times each of ``items`` is among the M draws (on their device)."""
        if self.exhaustive:
            return torch.ones(len(items), dtype=torch.float64, device=items.device)
        return self.m * on_device(self, "probs", items.device)[items]


def on_device(owner: object, name: str, device: torch.device) -> Tensor:
    """``owner.<name>`` (a CPU tensor) on ``device``, copied once and kept: indexing it with
    device tensors then needs no copy back to the host (no GPU synchronisation per step)."""
    cache = owner.__dict__.setdefault("_on_device", {})
    key = (name, device)
    if key not in cache:
        cache[key] = getattr(owner, name).to(device)
    return cache[key]


def _candidate_logits(hidden: Tensor, targets: Tensor, scorer: nn.Module, candidates: Tensor
                      ) -> tuple[Tensor, Tensor]:
    """``(target logits [N], candidate logits [N, C])`` with the scorer's formula
    ``T(h) . E[i] + b[i]``, never scoring the whole catalogue."""
    query = scorer.query(hidden)
    bias = scorer.bias
    target_logits = (query * scorer.vectors_of(targets)).sum(-1) + bias[targets]
    return target_logits, torch.addmm(bias[candidates], query, scorer.vectors_of(candidates).T)


class SampledSoftmaxLoss:
    """See the module docstring; one candidate set per call (per batch)."""

    def __init__(self, ctx: LossContext):
        self.sampler = NegativeSampler(ctx)
        self.in_batch = ctx.stage.in_batch_negatives
        self.logq = ctx.stage.logq_correction
        counts = ctx.counts()
        self.popularity = torch.from_numpy(counts / max(float(counts.sum()), 1.0))

    def __call__(self, hidden: Tensor, targets: Tensor, scorer: nn.Module) -> Tensor:
        t = targets - N_SPECIAL
        candidates = self.sampler.sample().to(t.device)
        n_batch = min(self.sampler.m, len(t)) if self.in_batch else 0
        if n_batch:  # the targets of n_batch random positions: memory stays O(N x 2M), not O(N^2)
            picked = torch.randperm(len(t), generator=self.sampler.generator)[:n_batch].to(t.device)
            candidates = torch.cat([candidates, t[picked]])
        target_logits, logits = _candidate_logits(hidden, t, scorer, candidates)
        if self.logq:
            # expected count of item j among the candidates: M q(j) from the proposal, plus
            # n_batch p(j) from the batch's targets (p = training popularity) when they are in
            expected = self.sampler.expected_counts(candidates)
            if n_batch:
                expected = expected + n_batch * on_device(self, "popularity", candidates.device)[candidates]
            logits = logits - torch.log(expected.clamp(min=1e-30)).to(logits)[None, :]
        logits = logits.masked_fill(candidates[None, :] == t[:, None], float("-inf"))  # accidental hits
        all_logits = torch.cat([target_logits[:, None], logits], dim=1)
        return F.cross_entropy(all_logits, torch.zeros(len(t), dtype=torch.long, device=t.device))


class GBCELoss:
    """See the module docstring; M shared negatives per call (per batch)."""

    def __init__(self, ctx: LossContext):
        self.sampler = NegativeSampler(ctx)
        t = ctx.stage.gbce_t
        alpha = self.sampler.m / max(ctx.n_items - 1, 1)
        self.beta = alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)

    def __call__(self, hidden: Tensor, targets: Tensor, scorer: nn.Module) -> Tensor:
        t = targets - N_SPECIAL
        negatives = self.sampler.sample().to(t.device)
        pos, neg = _candidate_logits(hidden, t, scorer, negatives)
        hit = negatives[None, :] == t[:, None]  # a sampled negative that is the row's target
        neg_terms = (-F.logsigmoid(-neg)).masked_fill(hit, 0.0).sum(1)
        return (-self.beta * F.logsigmoid(pos) + neg_terms).mean()


class FullSoftmaxLoss:
    """:func:`full_softmax_loss`, with ``stage.label_smoothing`` = eps > 0 against the
    smoothed target ``(1 - eps) * onehot + eps / n_items``: the loss is then
    ``CE + eps * (z_target - mean_j z_j)``, and the mean logit over the catalogue is
    ``query . mean(item vectors) + mean(bias)``: no ``[N, items]`` logits either way."""

    def __init__(self, ctx: LossContext):
        self.eps = float(getattr(ctx.stage, "label_smoothing", 0.0))

    def __call__(self, hidden: Tensor, targets: Tensor, scorer: nn.Module) -> Tensor:
        ce = full_softmax_loss(hidden, targets, scorer)
        if not self.eps:
            return ce
        t = targets - N_SPECIAL
        if getattr(scorer, "item_table", None) is not None:  # an ItemScorer: from the factors
            query, vectors, bias = scorer.query(hidden), scorer.item_vectors(), scorer.bias
            target_logit = (query * vectors[t]).sum(-1) + bias[t]
            mean_logit = query @ vectors.mean(0) + bias.mean()
        else:
            logits = scorer(hidden)
            target_logit, mean_logit = logits.gather(1, t[:, None]).squeeze(1), logits.mean(1)
        return ce + self.eps * (target_logit - mean_logit).mean()


# loss name -> builder(LossContext) -> (hidden, targets, scorer) -> scalar
LOSSES: dict[str, Callable[[LossContext], ItemLoss]] = {
    "full_softmax": FullSoftmaxLoss,
    "sampled_softmax": SampledSoftmaxLoss,
    "gbce": GBCELoss,
}


def build_loss(ctx: LossContext) -> ItemLoss:
    """The loss ``ctx.stage.loss`` of :data:`LOSSES`."""
    return LOSSES[ctx.stage.loss](ctx)


def real_targets(labels: Tensor, n_items: int) -> Tensor:
    """Where ``labels`` is one of the ``n_items`` real items: not PAD, nor UNK or a hash bucket."""
    return (labels >= N_SPECIAL) & (labels < N_SPECIAL + n_items)


def gather_targets(hidden_states: Tensor, labels: Tensor, n_items: int) -> tuple[Tensor, Tensor]:
    """Hidden vectors and labels at positions whose label is one of the ``n_items`` real items."""
    where = real_targets(labels, n_items)
    return hidden_states[where], labels[where]


def check_finite_loss(loss: torch.Tensor, stage: str, epoch: int, step: int) -> None:
    """Stop training on a NaN or infinite loss, before it reaches the weights."""
    if not bool(torch.isfinite(loss.detach())):
        raise DivergenceError(f"training loss is not finite ({float(loss.detach())}): {stage} diverged at "
                              f"epoch {epoch}, step {step} of that epoch")
