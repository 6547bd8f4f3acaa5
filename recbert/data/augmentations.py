"""Sequence augmentations of CL4SRec (Xie et al., "Contrastive Learning for Sequential
Recommendation", ICDE 2022), on batches of left-padded token rows (:mod:`recbert.data.batches`):

* ``crop``: a contiguous run of ``max(1, floor(ratio * n))`` of a row's ``n`` events, at a
  random place, left-padded again (the newest kept event in the last column);
* ``mask``: ``floor(ratio * n)`` events, at random places, replaced by the [MASK] token;
* ``reorder``: a contiguous run of ``floor(ratio * n)`` events, at a random place, shuffled.

Each works on the whole batch at once (no loop over rows) and draws from the ``generator``
it is given, so a seeded objective draws the same views again after a resume. PAD columns
stay PAD and a row keeps its width. :func:`augment` gives each row one augmentation drawn
uniformly from those named. ``AUGMENTATIONS`` is the registry: the config's choices
derive from it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from recbert.data.vocab import MASK, PAD


def _positions(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's event count ``n`` ``[B]`` and each column's place in its row's events
    ``[B, W]`` (0 = the oldest event; negative in the left padding)."""
    n = (rows != PAD).sum(1)
    cols = torch.arange(rows.shape[1], device=rows.device)
    return n, cols[None, :] - (rows.shape[1] - n)[:, None]


def _run(n: torch.Tensor, length: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A uniform start in ``[0, n - length]`` for runs of ``length`` events in rows of ``n``."""
    u = torch.rand(len(n), generator=generator, dtype=torch.float64).to(n.device)
    return torch.minimum((u * (n - length + 1)).long(), (n - length).clamp(min=0))


def crop(rows: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    n, place = _positions(rows)
    keep = torch.minimum(torch.clamp((ratio * n).long(), min=1), n)  # (0 for an empty row)
    start = _run(n, keep, generator)
    shift = (n - start - keep)[:, None]  # columns the kept run moves right, to end in the last column
    cols = torch.arange(rows.shape[1], device=rows.device)[None, :]
    source = (cols - shift).clamp(min=0)
    src_place = place.gather(1, source)
    kept = (cols >= shift) & (src_place >= start[:, None]) & (src_place < (start + keep)[:, None])
    return torch.where(kept, rows.gather(1, source), torch.full_like(rows, PAD))


def mask(rows: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    n, place = _positions(rows)
    count = (ratio * n).long()
    scores = torch.rand(rows.shape, generator=generator, dtype=torch.float64).to(rows.device)
    scores = scores.masked_fill(place < 0, 2.0)  # padding ranks last
    rank = scores.argsort(1).argsort(1)
    return torch.where(rank < count[:, None], torch.full_like(rows, MASK), rows)


def reorder(rows: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    n, place = _positions(rows)
    length = (ratio * n).long()
    start = _run(n, length, generator)
    inside = (place >= start[:, None]) & (place < (start + length)[:, None])
    u = torch.rand(rows.shape, generator=generator, dtype=torch.float64).to(rows.device)
    # sorting by these keys leaves every column outside the run where it is and shuffles the run
    keys = torch.where(inside, start[:, None] + u * length[:, None], place.double())
    return rows.gather(1, keys.argsort(dim=1, stable=True))


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = {
    "crop": crop, "mask": mask, "reorder": reorder}


def augment(rows: torch.Tensor, kinds: Sequence[str], ratios: dict[str, float],
            generator: torch.Generator) -> torch.Tensor:
    """``rows`` with one augmentation per row, drawn uniformly from ``kinds`` (names in
    ``AUGMENTATIONS``), each at its ``ratios[kind]``."""
    choice = torch.randint(len(kinds), (len(rows),), generator=generator).to(rows.device)
    out = rows.clone()
    for k, kind in enumerate(kinds):  # every kind runs over the whole batch: draws do not depend on the choice
        out = torch.where((choice == k)[:, None], AUGMENTATIONS[kind](rows, ratios[kind], generator), out)
    return out
