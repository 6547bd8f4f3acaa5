"""Batch job `finetune`: the same as `recbert finetune ...` (see pipelines/README.md)."""

from recbert.cli import run_job

if __name__ == "__main__":
    run_job("finetune")
