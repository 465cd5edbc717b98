"""``python -m scripts.image_to_text_demo``: the best captions for an image, as ``clipsou search --to text``.

``[--image PATH] [--features DIR] [--top-k 5] [--json]``; without ``--image`` it asks for one
image path per line until EOF or ``exit``. Each search is logged like the other scripts' searches.
"""

import sys
from typing import Sequence

from clip_retrieval.cli import run_subcommand


def main(argv: Sequence[str] | None = None) -> int:
    return run_subcommand("search", ["--to", "text", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
