"""Process set-up: device resolution."""

from __future__ import annotations

import pytest
import torch

from recbert import runtime
from recbert.errors import ConfigError


def test_resolve_device():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="not a torch device"):
        runtime.resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA device"):
            runtime.resolve_device("cuda")
