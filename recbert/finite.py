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
    v = values.detach() if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))
    finite = torch.isfinite(v)
    if bool(finite.all()):
        return
    n_bad, n_nan = int((~finite).sum()), int(torch.isnan(v).sum())
    where = f"in {int((~finite).any(1).sum())} of {len(v)} rows" if v.ndim == 2 else f"of {v.numel()}"
    detail = f"{n_nan} NaN, {n_bad - n_nan} infinite, {where}"
    raise DivergenceError(f"{what} are not finite ({detail})", detail)
