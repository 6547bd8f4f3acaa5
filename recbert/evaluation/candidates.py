"""Ranking among candidate items only (``eval.candidates``).

Full ranking scores every item of the model's vocabulary. Often only some of them may
be recommended: the items on sale, one category's items, or the target catalogue of a
model pretrained on a broader log (whose vocabulary holds items the target never had).
Ranked against the whole vocabulary, such a model is measured on a harder task than a
model trained on the target alone. ``eval.candidates`` names a parquet file whose item
column (``data.item_col``) lists the items to rank; every protocol then ranks a user's
target among those items only (``unseen`` also removes the history's candidates, and
``sampled`` draws its negatives from the candidates), in validation and test alike. A
target outside the candidates is a miss, as an unknown target is.

The evaluation works on a compact catalogue: candidate ``j`` is item ``items[j]``
(:class:`CandidateScorer` scores only those; targets and histories are renumbered by
:meth:`Candidates.compact`), so the ranking code itself is unchanged and ranking with
every item as a candidate gives exactly the unrestricted figures.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import polars as pl
import torch
from torch import Tensor, nn

from recbert.data.events import id_expr
from recbert.data.sequences import EvalSet, Splits
from recbert.data.vocab import ItemVocab, item_index
from recbert.errors import DataError
from recbert.finite import require_finite
from recbert.model.catalogue import ItemSets
from recbert.model.recommender import ItemScorer

log = logging.getLogger("recbert.evaluation")


def read_candidate_ids(path: str | Path, item_col: str) -> pl.Series:
    """The distinct item ids of column ``item_col`` of the parquet file ``path`` (an items
    table, or an events file: its items), in first-seen order."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"eval.candidates: {p} is not a file (give a parquet file with an {item_col!r} column)")
    try:
        schema = pl.read_parquet_schema(p)
    except Exception as exc:  # polars raises several types for unreadable files
        raise DataError(f"eval.candidates: {p} is not a readable parquet file: {exc}") from None
    if item_col not in schema:
        raise DataError(f"eval.candidates: {p} has no column {item_col!r} (data.item_col); found {list(schema)}")
    as_id = id_expr(item_col, schema[item_col], f"eval.candidates: {p}", "item id")  # int64 or string, as events
    ids = pl.read_parquet(p, columns=[item_col]).select(as_id)[item_col]
    if ids.null_count():
        raise DataError(f"eval.candidates: {ids.null_count()} null value(s) in column {item_col!r} of {p}")
    ids = ids.unique(maintain_order=True)
    if ids.is_empty():
        raise DataError(f"eval.candidates: {p} lists no items")
    return ids


@dataclasses.dataclass(frozen=True, eq=False)
class Candidates:
    """The items ranked: ``items`` (sorted 0-based catalogue indices of the model's items)
    out of a catalogue of ``n_items``."""

    items: np.ndarray
    n_items: int

    def __post_init__(self) -> None:
        if len(self.items) == 0:
            raise DataError("eval.candidates: none of the candidate items is in the model's vocabulary")

    @classmethod
    def of_tokens(cls, tokens: np.ndarray, n_items: int) -> "Candidates":
        """From item tokens; tokens that are not one of the ``n_items`` items are dropped."""
        index = item_index(tokens, n_items)
        return cls(np.unique(index[index >= 0]), n_items)

    def __len__(self) -> int:
        return len(self.items)

    @functools.cached_property
    def positions(self) -> Tensor:
        """``[n_items]`` int64: each item's candidate position, -1 for the others."""
        out = torch.full((self.n_items,), -1, dtype=torch.long)
        out[torch.from_numpy(self.items)] = torch.arange(len(self.items))
        return out

    def compact(self, targets: Tensor, seen: ItemSets) -> tuple[Tensor, ItemSets]:
        """Targets (item indices, -1 unknown) and histories renumbered to candidate
        positions: a target outside the candidates becomes -1 (a miss), history items
        outside them are dropped."""
        moved = torch.where(targets >= 0, self.positions[targets.clamp(min=0)], -1)
        items = self.positions[seen.items]
        kept = items >= 0
        return moved, ItemSets(seen.rows[kept], items[kept], seen.n_rows, len(self.items))


class CandidateScorer:
    """An :class:`ItemScorer` over the candidates only: item ``j`` of this scorer is item
    ``items[j]`` of ``scorer``, scored by the same formula (its vectors and biases are
    gathered once: call it under ``torch.no_grad``)."""

    def __init__(self, scorer: ItemScorer, items: Tensor):
        self.query = scorer.query
        self.vectors = scorer.item_vectors()[items]
        self.bias = scorer.bias[items]
        self.n_items = len(items)

    def score(self, query: Tensor, items: slice = slice(None)) -> Tensor:
        return torch.addmm(self.bias[items], query, self.vectors[items].T)

    def score_each(self, query: Tensor, items: Tensor) -> Tensor:
        return (self.vectors[items] * query[:, None, :]).sum(-1) + self.bias[items]

    def checked_scores(self, query: Tensor, items: slice) -> Tensor:
        scores = self.score(query, items).float()
        require_finite(scores)
        return scores


class CandidateColumns(nn.Module):
    """A scorer that maps hidden states to ``[B, n_items]`` scores, kept to the candidates' columns."""

    def __init__(self, scorer: nn.Module, items: Tensor):
        super().__init__()
        self.inner, self.items = scorer, items

    def forward(self, hidden: Tensor) -> Tensor:
        return self.inner(hidden)[:, self.items.to(hidden.device)]


def candidate_scorer(scorer, items: np.ndarray, device: torch.device | str):
    """``scorer`` restricted to catalogue ``items``: a :class:`CandidateScorer` for an
    :class:`ItemScorer`, else :class:`CandidateColumns`."""
    index = torch.from_numpy(items).to(device)
    return CandidateScorer(scorer, index) if isinstance(scorer, ItemScorer) else CandidateColumns(scorer, index)


def with_candidates(splits: Splits, path: Optional[str], vocab: ItemVocab, item_col: str) -> Splits:
    """``splits`` whose validation and test users are ranked among the items of ``path``
    (``eval.candidates``) that ``vocab`` holds; unchanged when ``path`` is None. Logs how
    many candidates the vocabulary lacks and how many targets lie outside the candidates."""
    if path is None:
        return splits
    ids = read_candidate_ids(path, item_col)
    tokens = vocab.encode(ids)
    known = np.unique(tokens[vocab.is_item(tokens)])
    if len(known) == 0:
        raise DataError(f"eval.candidates: none of the {len(ids)} items of {path} is in the model's vocabulary "
                        f"({vocab.n_items} items); is {item_col!r} the same id column as the events'?")
    log.info("eval.candidates: ranking among %d of the %d items of %s (%d are not in the vocabulary of %d items)",
             len(known), len(ids), path, len(ids) - len(known), vocab.n_items)
    restricted = {}
    for name in ("val", "test"):
        part: EvalSet = getattr(splits, name)
        outside = int((~np.isin(part.targets, known)).sum())
        if outside:
            log.info("eval.candidates: %d of %d %s targets are not candidates (misses)", outside, len(part), name)
        restricted[name] = dataclasses.replace(part, candidates=known)
    return dataclasses.replace(splits, **restricted)
