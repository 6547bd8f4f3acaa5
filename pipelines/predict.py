"""Batch job `predict`: the same as `recbert predict ...` (see pipelines/README.md)."""

from recbert.cli import run_job

if __name__ == "__main__":
    run_job("predict")
