"""Vectorised full-ranking evaluation of a sequence recommender.

Each evaluated user is scored once against every item; three protocols come
out of the same scores:

* ``all``: the target ranked against every item (no filtering);
* ``unseen``: items in the user's input history are removed first (the
  protocol of the S3-Rec code family and of RecTools' benchmarks); a target
  that is itself in the history is then a miss, never re-admitted;
* ``sampled``: the target ranked against ``n`` negatives drawn uniformly from
  items outside the history (for comparison with papers that used it).
"""

from __future__ import annotations

import numpy as np
import torch

from recbert.config import EvalConfig
from recbert.data.batches import pad_sequences
from recbert.data.sequences import EvalSet
from recbert.data.vocab import N_SPECIAL
from recbert.evaluation.metrics import ranking_metrics

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


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor,
                 n_negatives: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Ranks of ``targets`` (0-based item indices, -1 = unknown) under each protocol."""
    n_items = scores.shape[1]
    known = targets >= 0
    safe = targets.clamp(min=0)[:, None]
    target_score = scores.gather(1, safe)
    above = scores > target_score
    ranks = {"all": torch.count_nonzero(above, dim=1)}
    in_history = seen.gather(1, safe)[:, 0]
    unseen_above = ranks["all"] - torch.count_nonzero(above & seen, dim=1)
    ranks["unseen"] = torch.where(in_history, n_items, unseen_above)
    if n_negatives:
        forbidden = seen.clone()
        forbidden.scatter_(1, safe, True)
        negatives, valid = sample_negatives(forbidden, min(n_negatives, n_items - 1), generator)
        ranks["sampled"] = ((scores.gather(1, negatives) > target_score) & valid).sum(1)
    for name in ranks:
        ranks[name] = torch.where(known, ranks[name], n_items)
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
    """Metrics ``{protocol}/{metric}`` plus ``n_users``; see the module docstring."""
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
