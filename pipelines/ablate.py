"""Batch job `ablate`: the same as `recbert ablate ...` (see pipelines/README.md)."""

import sys

from recbert.cli import main

if __name__ == "__main__":
    sys.exit(main(["ablate", *sys.argv[1:]]))
