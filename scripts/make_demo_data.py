"""``python -m scripts.make_demo_data``: regenerate data/ byte for byte (64 images, seed 0)."""

import argparse
import sys

from clip_retrieval.collection.generated import make_collection

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Regenerate the bundled demo collection.")
    parser.add_argument("--out", default="data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-pair", type=int, default=2, help="images per subject and scene")
    args = parser.parse_args()
    print(make_collection(args.out, per_pair=args.per_pair, seed=args.seed, english=True))
    sys.exit(0)
