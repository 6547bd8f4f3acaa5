"""Batch job `finetune`: the same as `recbert finetune ...` (see pipelines/README.md)."""

import sys

from recbert.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
