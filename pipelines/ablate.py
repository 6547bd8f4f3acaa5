"""Batch job `ablate`: the same as `recbert ablate ...` (see pipelines/README.md)."""

from recbert.cli import run_job

if __name__ == "__main__":
    run_job("ablate")
