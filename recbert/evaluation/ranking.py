"""Vectorised full-ranking evaluation of a sequence recommender.

Each evaluated user is scored once against every item; three protocols come
out of the same scores:

* ``all``: the target ranked against every item (no filtering);
* ``unseen``: items in the user's input history are removed first (the
  protocol of the S3-Rec code family and of RecTools' benchmarks); a target
  that is itself in the history is then a miss, never re-admitted;
* ``sampled``: the target ranked against ``n`` negatives drawn uniformly from
  items outside the history (for comparison with papers that used it).

Ties are counted honestly: a target's rank is the number of candidates scored
strictly above it plus half the number of other candidates tied with it, its
expected 0-based position under a random tie-break. A model whose scores
collapse to a constant therefore ranks every target at ``(n - 1) / 2``, a miss,
never a hit. Scores that are NaN or infinite are an error
(:class:`~recbert.errors.DivergenceError`), never a result.
"""

from __future__ import annotations

import numpy as np
import torch

from recbert.config import EvalConfig
from recbert.data.batches import pad_sequences
from recbert.data.sequences import EvalSet
from recbert.data.vocab import N_SPECIAL
from recbert.evaluation.metrics import ranking_metrics
from recbert.finite import require_finite

PROTOCOLS = ("all", "unseen", "sampled")


def history_mask(inputs, rows: np.ndarray, n_items: int) -> torch.Tensor:
    """``[len(rows), n_items]`` bool: True where the item is in that user's history."""
    starts, ends = inputs.offsets[rows], inputs.offsets[rows + 1]
    lengths = ends - starts
    pos = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    items = inputs.items[pos] - N_SPECIAL
    row_ids = np.repeat(np.arange(len(rows)), lengths)
    keep = items >= 0  # UNK history items are not items of the catalogue
    mask = torch.zeros(len(rows), n_items, dtype=torch.bool)
    mask[torch.from_numpy(row_ids[keep]), torch.from_numpy(items[keep])] = True
    return mask


def tie_aware_ranks(scores: torch.Tensor, target_score: torch.Tensor,
                    candidates: torch.Tensor | None = None) -> torch.Tensor:
    """``[B]`` float64 ranks: candidates strictly above ``target_score`` (``[B, 1]``) plus
    half the candidates tied with it, the target itself not counted. ``candidates``
    (``[B, n]`` bool) limits the count to those columns; the target's own column must
    either be left out of it or be the one tie subtracted (see :func:`target_ranks`)."""
    above, tied = scores > target_score, scores == target_score
    if candidates is not None:
        above, tied = above & candidates, tied & candidates
    return torch.count_nonzero(above, dim=1).double() + 0.5 * torch.count_nonzero(tied, dim=1).double()


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor,
                 n_negatives: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``[B]`` float64 ranks of ``targets`` (0-based item indices, -1 = unknown) under
    each protocol; ties count half (module docstring). Unknown targets, and under
    ``unseen`` targets in the history, get rank ``n_items`` (a miss). Non-finite
    scores raise :class:`DivergenceError`."""
    require_finite(scores)
    n_items = scores.shape[1]
    known = targets >= 0
    safe = targets.clamp(min=0)[:, None]
    target_score = scores.gather(1, safe)
    # the target is tied with itself: take that one tie back out (half a rank)
    ranks = {"all": tie_aware_ranks(scores, target_score) - 0.5}
    in_history = seen.gather(1, safe)[:, 0]
    unseen = tie_aware_ranks(scores, target_score, ~seen) - 0.5
    ranks["unseen"] = torch.where(in_history, float(n_items), unseen)
    if n_negatives:
        forbidden = seen.clone()
        forbidden.scatter_(1, safe, True)
        negatives, valid = sample_negatives(forbidden, min(n_negatives, n_items - 1), generator)
        ranks["sampled"] = tie_aware_ranks(scores.gather(1, negatives), target_score, valid)
    for name in ranks:
        ranks[name] = torch.where(known, ranks[name], float(n_items))
    return ranks


def sample_negatives(forbidden: torch.Tensor, n: int, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` distinct items per row drawn uniformly from the non-forbidden ones.

    Returns ``(items [B, n], valid [B, n])``; ``valid`` is False only in rows that
    have fewer than ``n`` allowed items. Oversamples and de-duplicates; rows that
    still lack ``n`` candidates are redrawn exactly by random keys."""
    b, n_items = forbidden.shape
    m = min(n_items, 2 * n + 64)
    cand = torch.randint(0, n_items, (b, m), generator=generator)
    ok = ~forbidden.gather(1, cand)
    sorted_cand, perm = cand.sort(dim=1, stable=True)  # keep the first draw of a duplicate
    dup_sorted = torch.zeros_like(ok)
    dup_sorted[:, 1:] = sorted_cand[:, 1:] == sorted_cand[:, :-1]
    ok &= ~torch.zeros_like(ok).scatter(1, perm, dup_sorted)
    rank = ok.cumsum(1) - 1
    take = ok & (rank < n)
    items = torch.zeros(b, n, dtype=torch.long)
    valid = torch.zeros(b, n, dtype=torch.bool)
    r, c = take.nonzero(as_tuple=True)
    items[r, rank[r, c]] = cand[r, c]
    valid[r, rank[r, c]] = True
    short = (~valid.all(1)).nonzero(as_tuple=True)[0]
    if len(short):  # exact fallback: random keys over the whole catalogue
        keys = torch.rand(len(short), n_items, generator=generator).masked_fill(forbidden[short], 2.0)
        idx = torch.topk(keys, n, dim=1, largest=False).indices
        items[short], valid[short] = idx, keys.gather(1, idx) < 2.0
    return items, valid


@torch.no_grad()
def evaluate_ranking(model, eval_set: EvalSet, config: EvalConfig, seed: int = 0,
                     device: torch.device | str = "cpu") -> dict[str, float]:
    """Metrics ``{protocol}/{metric}`` plus ``n_users``; see the module docstring.
    Raises :class:`~recbert.errors.DivergenceError` on non-finite model scores."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    inputs = eval_set.inputs
    n_items = model.config.n_tokens - N_SPECIAL
    collected: dict[str, list[torch.Tensor]] = {}
    # Users sorted by history length: batches of similar length carry little padding.
    by_length = np.argsort(np.minimum(inputs.lengths, model.config.max_len), kind="stable")
    for lo in range(0, len(eval_set), config.batch_size):
        rows = by_length[lo:lo + config.batch_size]
        histories = inputs.slice(inputs.offsets[rows], inputs.offsets[rows + 1], inputs.user_ids[rows])
        x = torch.from_numpy(pad_sequences(histories, model.config.max_len, append_mask=not model.causal)).to(device)
        scores = model.scorer(model(x).sequence_output[:, -1]).float().cpu()
        targets = torch.from_numpy(eval_set.targets[rows] - N_SPECIAL)
        seen = history_mask(inputs, rows, n_items)
        for name, r in target_ranks(scores, targets, seen, config.sampled_negatives, generator).items():
            collected.setdefault(name, []).append(r)
    if was_training:
        model.train()
    out: dict[str, float] = {"n_users": float(len(eval_set))}
    for name, parts in collected.items():
        ranks = torch.cat(parts).numpy()
        for metric, value in ranking_metrics(ranks, config.ks).items():
            out[f"{name}/{metric}"] = value
    return out


def selection_protocol(config: EvalConfig) -> str:
    """The protocol used for model selection and headline figures."""
    return "unseen" if config.exclude_seen else "all"
