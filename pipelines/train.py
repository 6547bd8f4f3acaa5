"""Batch job `train`: the same as `recbert train ...` (see pipelines/README.md)."""

from recbert.cli import run_job

if __name__ == "__main__":
    run_job("train")
