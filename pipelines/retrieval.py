"""Retrieval batch jobs: `python pipelines/retrieval.py export|index|recommend-batch ...`,
the same as `recbert export ...`, `recbert index build ...`, `recbert recommend-batch ...`
(see pipelines/README.md)."""

import sys

from recbert.cli import run_job

COMMANDS = ("export", "index", "recommend-batch")

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python pipelines/retrieval.py {{{'|'.join(COMMANDS)}}} ...")
    run_job(None)
