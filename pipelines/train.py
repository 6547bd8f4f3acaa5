"""Batch job `train`: the same as `recbert train ...` (see pipelines/README.md)."""

import sys

from recbert.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
