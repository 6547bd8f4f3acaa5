"""Batch job `evaluate`: the same as `recbert evaluate ...` (see pipelines/README.md)."""

from recbert.cli import run_job

if __name__ == "__main__":
    run_job("evaluate")
