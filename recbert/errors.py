"""User-facing errors: the CLI prints these as one line, without a traceback."""

from __future__ import annotations


class RecbertError(Exception):
    """A problem with the user's input (data, config, checkpoint), not a bug."""


class DataError(RecbertError):
    """Events or feature files that cannot be used as they are."""


class ConfigError(RecbertError):
    """A configuration that names an unknown key or holds a bad value."""


class CheckpointError(RecbertError):
    """A saved model directory that is missing, corrupt or does not match its config."""


class OutputError(RecbertError):
    """An output could not be written (disk full, not writable); what was there is unchanged."""


class DivergenceError(RecbertError):
    """Training produced a non-finite loss, or a model whose scores are NaN or infinite.
    ``detail`` holds the counts (how many NaN / infinite values, where) for callers that
    rephrase the message with their own context (stage, epoch)."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail

    def __reduce__(self):  # keeps ``detail`` when sent between processes (pickled)
        return type(self), (str(self), self.detail)


class Interrupted(RecbertError):
    """The process was asked to stop (SIGTERM, Ctrl-C) during a job; ``exit_code`` is the
    shell's convention for the signal (128 + its number)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):
        return type(self), (str(self), self.exit_code)
