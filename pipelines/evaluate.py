"""Batch job `evaluate`: the same as `recbert evaluate ...` (see pipelines/README.md)."""

import sys

from recbert.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
