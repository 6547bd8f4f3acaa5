"""Vectorised full-ranking evaluation of a sequence recommender.

Each evaluated user is scored once against every item; three protocols come
out of the same scores:

* ``all``: the target ranked against every item (no filtering);
* ``unseen``: items in the user's input history are removed first (the
  protocol of the S3-Rec code family and of RecTools' benchmarks); a target
  that is itself in the history is then a miss, never re-admitted;
* ``sampled``: the target ranked against ``n`` negatives drawn uniformly from
  items outside the history (for comparison with papers that used it).

"Every item" is the model's catalogue, or the eval set's candidate items when it has
some (``eval.candidates``, :mod:`recbert.evaluation.candidates`).

Ties are counted honestly: a target's rank is the number of candidates scored
strictly above it plus half the number of other candidates tied with it, its
expected 0-based position under a random tie-break. A model whose scores
collapse to a constant therefore ranks every target at ``(n - 1) / 2``, a miss,
never a hit. Scores that are NaN or infinite are an error
(:class:`~recbert.errors.DivergenceError`), never a result.

Memory is bounded: an :class:`~recbert.model.recommender.ItemScorer` scores the
catalogue ``eval.item_chunk`` items at a time (:func:`chunked_target_ranks`), so one
batch holds ``batch_size x item_chunk`` scores (by default at most 256 MiB of float32,
which is a single chunk up to 65,536 items at batch size 1024) instead of
``batch_size x n_items``; the histories are ``(user, item)`` pairs, masked a chunk at
a time. Peak memory therefore stays flat as the catalogue grows; time grows linearly.
:func:`target_ranks` ranks a whole score matrix at once: the reference, and the path
of a scorer that only maps hidden states to ``[B, n_items]`` scores.
"""

from __future__ import annotations

import numpy as np
import torch

from recbert.config import EvalConfig
from recbert.data.batches import pad_sequences
from recbert.data.sequences import EvalSet
from recbert.data.vocab import catalogue_size, item_index
from recbert.evaluation.candidates import Candidates, CandidateScorer, candidate_scorer
from recbert.evaluation.metrics import ranking_metrics
from recbert.finite import require_finite
from recbert.model.catalogue import ItemSets, item_chunk_size, item_chunks
from recbert.model.recommender import ItemScorer
from recbert.runtime import DistributedContext, rank_seed

PROTOCOLS = ("all", "unseen", "sampled")


def history_mask(inputs, rows: np.ndarray, n_items: int) -> torch.Tensor:
    """``[len(rows), n_items]`` bool: True where the item is in that user's history."""
    histories = inputs.select(rows)
    return ItemSets.from_tokens(histories.items, histories.lengths, n_items).mask()


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
    safe = targets.clamp(min=0)[:, None]
    target_score = scores.gather(1, safe)
    # the target is tied with itself: take that one tie back out (half a rank)
    ranks = {"all": tie_aware_ranks(scores, target_score) - 0.5,
             "unseen": tie_aware_ranks(scores, target_score, ~seen) - 0.5}
    if n_negatives:
        forbidden = seen.clone()
        forbidden.scatter_(1, safe, True)
        negatives, valid = sample_negatives(forbidden, min(n_negatives, n_items - 1), generator)
        ranks["sampled"] = tie_aware_ranks(scores.gather(1, negatives), target_score, valid)
    return _with_misses(ranks, targets, seen.gather(1, safe)[:, 0], n_items)


def chunked_target_ranks(scorer: ItemScorer, query: torch.Tensor, targets: torch.Tensor, seen: ItemSets,
                         chunk: int, n_negatives: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """:func:`target_ranks` for query vectors ``[B, H]`` without their ``[B, n_items]``
    score matrix: the catalogue is scored ``chunk`` items at a time, and each user's
    items above and tied with the target are counted chunk by chunk, ``seen`` masked a
    chunk at a time; at most ``B x chunk`` scores are held at once. Users go in groups
    whose targets lie in the same chunk, which is scored first: it gives their target
    scores, so each target is compared with numbers of its own matmul, exactly as in
    one score matrix. ``sampled`` scores only each target and its negatives, in one
    :meth:`ItemScorer.score_each` call; the negatives are those :func:`target_ranks`
    draws from the same generator."""
    n_items = seen.n_items
    safe = targets.clamp(min=0)
    chunks = item_chunks(n_items, chunk)
    home = safe // chunk  # the chunk that holds each target
    ranks = {name: torch.empty(len(targets), dtype=torch.float64) for name in ("all", "unseen")}
    for h in torch.unique(home).tolist():
        rows = (home == h).nonzero(as_tuple=True)[0]
        group = _group_ranks(scorer, query[rows.to(query.device)], safe[rows], seen.take(rows), chunks, h)
        for name in ranks:
            ranks[name][rows] = group[name]
    if n_negatives:
        negatives, valid = sample_outside(seen.with_items(safe), min(n_negatives, n_items - 1), generator)
        candidates = torch.cat([safe[:, None], negatives], dim=1).to(query.device)
        scores = scorer.score_each(query, candidates).float().cpu()
        ranks["sampled"] = tie_aware_ranks(scores[:, 1:], scores[:, :1], valid)
    return _with_misses(ranks, targets, seen.contains(safe[:, None])[:, 0], n_items)


def _group_ranks(scorer: ItemScorer, query: torch.Tensor, targets: torch.Tensor, seen: ItemSets,
                 chunks: list[slice], home: int) -> dict[str, torch.Tensor]:
    """``all`` and ``unseen`` ranks (before misses) of users whose targets all lie in
    ``chunks[home]``: that chunk first, for the target scores, then every other one.
    ``unseen`` is ``all`` less what each user's own history items (distinct) add to it,
    read from the same score matrix, so no ``[B, chunk]`` mask is built; everything stays
    on the scorer's device (no score matrix goes to the host)."""
    device = query.device
    first = scorer.checked_scores(query, chunks[home])
    target_score = first.gather(1, (targets[:, None] - chunks[home].start).to(device))
    above = torch.full((len(targets),), -0.5, dtype=torch.float64, device=device)  # the target's tie with itself
    in_history = torch.zeros(len(targets), dtype=torch.float64, device=device)
    history = seen.distinct()
    rows, items = history.rows.to(device), history.items.to(device)
    for i, chunk in enumerate(chunks):
        scores = first if i == home else scorer.checked_scores(query, chunk)
        above += tie_aware_ranks(scores, target_score)
        inside = (items >= chunk.start) & (items < chunk.stop)
        r = rows[inside]
        s, t = scores[r, items[inside] - chunk.start], target_score[r, 0]
        in_history.index_add_(0, r, (s > t).double() + 0.5 * (s == t).double())
    return {"all": above.cpu(), "unseen": (above - in_history).cpu()}


def _with_misses(ranks: dict[str, torch.Tensor], targets: torch.Tensor, in_history: torch.Tensor,
                n_items: int) -> dict[str, torch.Tensor]:
    """``ranks`` with the misses (rank ``n_items``): unknown targets (-1) under every
    protocol, and under ``unseen`` targets in the history (``in_history`` ``[B]``)."""
    ranks = {**ranks, "unseen": torch.where(in_history, float(n_items), ranks["unseen"])}
    return {name: torch.where(targets >= 0, r, float(n_items)) for name, r in ranks.items()}


def sample_negatives(forbidden: torch.Tensor, n: int, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` distinct items per row drawn uniformly from the non-forbidden ones
    (``forbidden``: ``[B, n_items]`` bool); see :func:`sample_outside`."""
    return sample_outside(ItemSets.from_mask(forbidden), n, generator)


def sample_outside(forbidden: ItemSets, n: int, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` distinct items per row drawn uniformly from the items outside that row's set.

    Returns ``(items [B, n], valid [B, n])``; ``valid`` is False only in rows that
    have fewer than ``n`` allowed items. Oversamples and de-duplicates; rows that
    still lack ``n`` candidates are redrawn exactly by random keys over the whole
    catalogue (only those rows are ever held at catalogue width)."""
    b, n_items = forbidden.n_rows, forbidden.n_items
    m = min(n_items, 2 * n + 64)
    cand = torch.randint(0, n_items, (b, m), generator=generator)
    ok = ~forbidden.contains(cand)
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
        keys = torch.rand(len(short), n_items, generator=generator).masked_fill(forbidden.take(short).mask(), 2.0)
        idx = torch.topk(keys, n, dim=1, largest=False).indices
        items[short], valid[short] = idx, keys.gather(1, idx) < 2.0
    return items, valid


@torch.no_grad()
def evaluate_ranking(model, eval_set: EvalSet, config: EvalConfig, seed: int = 0,
                     device: torch.device | str = "cpu",
                     context: DistributedContext = DistributedContext()) -> dict[str, float]:
    """Metrics ``{protocol}/{metric}`` plus ``n_users``; see the module docstring (memory:
    ``batch_size x item_chunk`` scores at a time). Raises
    :class:`~recbert.errors.DivergenceError` on non-finite model scores.

    With several ranks (``context``) every rank must call it: rank ``r`` of ``W`` scores
    the users ``r, r + W, ...``, the ranks are gathered, and every rank returns the same
    metrics of all users (the sampled protocol then draws each rank's negatives from its
    own stream, so it differs from one process by sampling noise only)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(rank_seed(seed, context.rank))
    if context.distributed:
        share = np.arange(context.rank, len(eval_set), context.world_size)
        eval_set = EvalSet(eval_set.inputs.select(share), eval_set.targets[share], eval_set.candidates)
    inputs = eval_set.inputs
    n_items = catalogue_size(model.config.n_tokens, model.config.hash_buckets)
    scorer, candidates = model.scorer, None
    if eval_set.candidates is not None:  # a compact catalogue of the candidates (recbert.evaluation.candidates)
        candidates = Candidates.of_tokens(eval_set.candidates, n_items)
        scorer = candidate_scorer(scorer, candidates.items, device)
    collected: dict[str, list[torch.Tensor]] = {}
    # Users sorted by history length: batches of similar length carry little padding.
    by_length = np.argsort(np.minimum(inputs.lengths, model.config.max_len), kind="stable")
    for lo in range(0, len(eval_set), config.batch_size):
        rows = by_length[lo:lo + config.batch_size]
        histories = inputs.slice(inputs.offsets[rows], inputs.offsets[rows + 1], inputs.user_ids[rows])
        x = torch.from_numpy(pad_sequences(histories, model.config.max_len, append_mask=not model.causal)).to(device)
        hidden = model(x).sequence_output[:, -1]
        targets = torch.from_numpy(item_index(eval_set.targets[rows], n_items))  # -1: UNK or a bucket, a miss
        seen = ItemSets.from_tokens(histories.items, histories.lengths, n_items)
        if candidates is not None:
            targets, seen = candidates.compact(targets, seen)
        for name, r in _batch_ranks(scorer, hidden, targets, seen, config, generator).items():
            collected.setdefault(name, []).append(r)
    if was_training:
        model.train()
    ranks = {name: torch.cat(parts).numpy() for name, parts in collected.items()}
    n_users = len(eval_set)
    if context.distributed:
        ranks, n_users = _gather_ranks(ranks, n_users, context)
    out: dict[str, float] = {"n_users": float(n_users)}
    for name, values in ranks.items():
        for metric, value in ranking_metrics(values, config.ks).items():
            out[f"{name}/{metric}"] = value
    return out


def _gather_ranks(ranks: dict[str, np.ndarray], n_users: int,
                  context: DistributedContext) -> tuple[dict[str, np.ndarray], int]:
    """Every rank's ranks per protocol, concatenated in rank order, and the users in all."""
    gathered: list = [None] * context.world_size
    torch.distributed.all_gather_object(gathered, (ranks, n_users))
    names = sorted({name for r, _ in gathered for name in r})
    merged = {name: np.concatenate([r[name] for r, _ in gathered if name in r]) for name in names}
    return merged, sum(n for _, n in gathered)


def _batch_ranks(scorer, hidden: torch.Tensor, targets: torch.Tensor, seen: ItemSets, config: EvalConfig,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One batch's ranks per protocol. An :class:`ItemScorer` scores the catalogue in
    chunks of ``config.item_chunk`` items (None: as many as keep ``config.batch_size``
    users' float32 scores within 256 MiB); any other scorer, a module mapping hidden
    states to ``[B, n_items]`` scores, is scored whole and ranked by :func:`target_ranks`."""
    if isinstance(scorer, (ItemScorer, CandidateScorer)):
        chunk = item_chunk_size(config.batch_size, config.item_chunk)
        return chunked_target_ranks(scorer, scorer.query(hidden), targets, seen, chunk,
                                    config.sampled_negatives, generator)
    return target_ranks(scorer(hidden).float().cpu(), targets, seen.mask(), config.sampled_negatives, generator)


def selection_protocol(config: EvalConfig) -> str:
    """The protocol used for model selection and headline figures."""
    return "unseen" if config.exclude_seen else "all"
