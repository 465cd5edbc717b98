"""A search-log writer for the concurrency test's child processes.

Kept apart from the test module so each spawned child imports only ``searchlog`` (no torch),
which keeps the test about the lock, not about interpreter start-up.
"""

from __future__ import annotations

from clip_retrieval.logs import searchlog

RECORD = {"time": "2026-01-01T00:00:00+08:00", "mode": "text", "query": "q", "expand": True, "expansions": [],
          "k": 1, "model": "m", "model_fingerprint": "f", "features_dir": ".", "features_fingerprint": "x",
          "rules_path": None, "rules_sha256": None, "tool_version": "0", "results": []}


def write_records(folder: str, worker: int, count: int) -> None:
    for i in range(count):
        record = dict(RECORD, query=f"{worker}-{i}-" + "长" * 3000)  # long lines make torn writes likely
        searchlog.append(folder, record)
