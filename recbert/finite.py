"""Non-finite numbers are an error, never a result: a model whose scores or
probabilities hold NaN or infinity has diverged, and ranking or AUC computed
from them would be meaningless (NaN compares false with everything, so it
would rank first). One check for tensors and arrays alike."""

from __future__ import annotations

import numpy as np
import torch

from recbert.errors import DivergenceError


def require_finite(values: torch.Tensor | np.ndarray, what: str = "model scores") -> None:
    """Raise :class:`DivergenceError` naming how many values are NaN / infinite (and, for
    a 2-D input, in how many rows) when any value is not finite."""
    if isinstance(values, torch.Tensor):
        v = values.detach()
        finite = torch.isfinite(v)
        if bool(finite.all()):
            return
        n_bad, n_nan = int((~finite).sum()), int(torch.isnan(v).sum())
        rows = int((~finite).any(1).sum()) if v.ndim == 2 else None
    else:
        v = np.asarray(values)
        finite = np.isfinite(v)
        if finite.all():
            return
        n_bad, n_nan = int((~finite).sum()), int(np.isnan(v).sum())
        rows = int((~finite).any(1).sum()) if v.ndim == 2 else None
    where = f"in {rows} of {len(v)} rows" if rows is not None else f"of {v.size if isinstance(v, np.ndarray) else v.numel()}"
    detail = f"{n_nan} NaN, {n_bad - n_nan} infinite, {where}"
    raise DivergenceError(f"{what} are not finite ({detail})", detail)
