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


def test_a_sigterm_inside_uninterrupted_is_raised_when_the_block_ends():
    import os
    import signal

    from recbert.errors import Interrupted
    from recbert.runtime import interruptible, uninterrupted

    done = []
    with interruptible():
        with pytest.raises(Interrupted) as exc:
            with uninterrupted():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("after the signal")  # the block runs to its end
            done.append("never")
        assert exc.value.exit_code == 143
        with pytest.raises(Interrupted):  # outside the block: at once
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("never")
    assert done == ["after the signal"]


def test_ctrl_c_inside_uninterrupted_is_held_and_a_failing_block_keeps_its_own_error():
    import os
    import signal

    from recbert.runtime import uninterrupted

    before = signal.getsignal(signal.SIGINT)
    done = []
    with pytest.raises(KeyboardInterrupt):
        with uninterrupted():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("after the signal")
    assert done == ["after the signal"] and signal.getsignal(signal.SIGINT) is before
    with pytest.raises(ValueError):
        with uninterrupted():
            os.kill(os.getpid(), signal.SIGINT)
            raise ValueError("the block's own error")
    with uninterrupted():  # nothing held over from the failed block
        pass
