"""``python -m scripts.extract_embeddings``: same as ``clipsou extract``."""

import sys

from clip_retrieval.cli import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("extract"))
