"""``python -m scripts.search_demo``: same as ``clipsou search``."""

import sys

from clip_retrieval.cli import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("search"))
