"""Batch job `predict`: the same as `recbert predict ...` (see pipelines/README.md)."""

import sys

from recbert.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
