"""``python -m benchmarks.log_stats [--records 1000000]``: peak memory of ``clipsou log stats``.

Writes a synthetic search log (5,000 distinct queries, top-5 results, three expansions,
two models and three features fingerprints), then measures in fresh processes:
the baseline, loading the first ``--baseline-records`` whole with ``pandas.read_json``,
and ``logreview.stats`` (chunked) over the same slice and over the whole log. Peak memory
is each process's maximum resident set size (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import resource, sys, time
start = time.perf_counter()
if sys.argv[1] == "whole":
    import pandas as pd
    frame = pd.read_json(sys.argv[2], lines=True, dtype=False)
    n = len(frame)
else:
    from clip_retrieval import logreview
    n = logreview.stats(sys.argv[2], chunksize=int(sys.argv[3]))["records"]
print(n, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def write_log(path: Path, records: int, seed: int = 0) -> None:
    """A realistic log, streamed to disk (the generator never holds it either)."""
    rng = random.Random(seed)
    queries = [f"查询{i}号 {rng.choice(['金毛', '灰猫', '小猪', '雪地'])}" for i in range(5000)]
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(records):
            query = queries[min(int(rng.paretovariate(1.2)) - 1, len(queries) - 1) if i % 2 else rng.randrange(5000)]
            setup = rng.randrange(3)
            record = {
                "record_version": 2, "time": f"2026-{1 + i * 12 // records:02d}-{1 + i % 28:02d}T10:00:00+08:00",
                "mode": "text", "to": "image", "query": query, "raw_query": query, "expand": True,
                "expansions": [{"text": f"{query} {n}", "lang": "en", "weight": 1.0, "term": query, "source": "rule"}
                               for n in range(3)],
                "k": 5, "model": "demo" if setup else "open_clip:ViT-B-32/openai", "model_fingerprint": f"m{setup}",
                "features_dir": "/data/feats", "features_fingerprint": f"sha256:{setup:016d}",
                "results": [{"rank": r, "score": round(rng.random(), 6), "image_path": f"images/{rng.randrange(50000)}.jpg",
                             "path": f"images/{rng.randrange(50000)}.jpg", "caption": "一只狗在草地上"}
                            for r in range(1, 6)],
            }
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def measure(mode: str, path: Path, chunksize: int) -> tuple[int, float, float]:
    """(records, seconds, peak MiB) of one fresh process."""
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(chunksize)], check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[0]), float(out[1]), float(out[2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="records in the log (default: 1000000)")
    parser.add_argument("--baseline-records", type=int, default=100_000,
                        help="records the whole-file baseline loads (default: 100000)")
    parser.add_argument("--chunk-size", type=int, default=50_000, help="stats chunk size (default: 50000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clip_retrieval_logbench_") as work:
        big, small = Path(work) / "big.jsonl", Path(work) / "small.jsonl"
        start = time.perf_counter()
        write_log(big, args.records)
        with open(big, encoding="utf-8") as src, open(small, "w", encoding="utf-8") as dst:
            for _, line in zip(range(args.baseline_records), src):
                dst.write(line)
        print(f"wrote {args.records} records ({big.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        rows = [("baseline: pandas.read_json whole", *measure("whole", small, 0)),
                ("log stats, chunked", *measure("stats", small, args.chunk_size)),
                ("log stats, chunked", *measure("stats", big, args.chunk_size))]
    print(f"{'what':<34}{'records':>10}{'seconds':>10}{'peak MiB':>10}")
    for name, n, seconds, peak in rows:
        print(f"{name:<34}{n:>10}{seconds:>10.1f}{peak:>10.0f}")
    base, small_stats, big_stats = rows[0][3], rows[1][3], rows[2][3]
    print(f"peak memory, chunked / whole at {args.baseline_records} records: {small_stats / base:.2f}; "
          f"chunked at {args.records} / chunked at {args.baseline_records}: {big_stats / small_stats:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
