"""``python -m benchmarks [--quick] [--json]``: run every measurement and print a table (or one JSON object)."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile

import torch

from benchmarks import measure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, same keys (under a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = measure.QUICK if args.quick else measure.FULL
    results: dict = {"quick": args.quick, "machine": f"{platform.processor() or platform.machine()}, "
                     f"{torch.get_num_threads()} threads, torch {torch.__version__}"}
    with tempfile.TemporaryDirectory(prefix="clip_retrieval_bench_") as work:
        for step in measure.STEPS:
            results.update(step(sizes, work))
            if not args.json:
                print(f"... {step.__name__} done", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results))
    else:
        width = max(len(k) for k in results)
        for key, value in results.items():
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            print(f"{key:<{width}}  {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
