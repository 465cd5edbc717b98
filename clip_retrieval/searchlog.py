"""The search log: a readable ``search_log.txt`` and a machine-readable ``search_log.jsonl``.

Owns appending records (under a file lock, so concurrent processes never interleave or
lose one) and replaying them. It must not search by itself: replay is handed a function
that runs a query.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock

from . import __version__
from .errors import InputError

log = logging.getLogger(__name__)

TEXT_LOG = "search_log.txt"
JSON_LOG = "search_log.jsonl"
LOCK_TIMEOUT_S = 30


def now_iso() -> str:
    """Local time with its UTC offset, to the second."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def make_record(result, *, model_fingerprint: str, features_fingerprint: str, features_dir: str,
                rules_sha256: str | None, rules_path: str | None) -> dict:
    """Everything a replay needs, beside what a person reads."""
    return {
        "time": now_iso(),
        "mode": result.mode,
        "to": result.to,
        "fuse": result.fuse,
        "image": result.image,
        "image_sha256": result.image_sha256,
        "text_weight": result.text_weight,
        "query": result.query,
        "expand": result.expand,
        "expansions": [{"text": p.text, "lang": p.lang, "weight": p.weight} for p in result.expansions],
        "k": result.k,
        "model": result.model,
        "model_fingerprint": model_fingerprint,
        "features_dir": features_dir,
        "features_fingerprint": features_fingerprint,
        "rules_path": rules_path,
        "rules_sha256": rules_sha256,
        "tool_version": __version__,
        "results": [{"rank": h.rank, "score": round(h.score, 6), "image_path": h.image_path,
                     "caption": h.caption} for h in result.results],
    }


def format_block(record: dict) -> str:
    """The human-readable block appended to search_log.txt."""
    mode = record.get("mode", "text")
    head = {"text": "query / 查询", "image": "image query / 以图搜", "image+text": "image+text / 图文组合"}.get(mode, mode)
    lines = [f"[{record['time']}] {head}: {record['query']}"]
    if record.get("to") == "text":
        lines[0] += "  (-> captions / 图搜文)"
    if record.get("fuse"):
        lines[0] += "  (fused with captions / 融合描述)"
    if record["expansions"]:
        lines.append("  expansions / 扩展: " + " | ".join(e["text"] for e in record["expansions"]))
    else:
        lines.append("  expansions / 扩展: (none)" if record["expand"] else "  expansions / 扩展: (disabled)")
    lines.append(f"  model: {record['model']} ({record['model_fingerprint']})  k={record['k']}  "
                 f"features: {record['features_fingerprint']}")
    for hit in record["results"]:
        lines.append(f"  {hit['rank']:>3}. {hit['score']:.4f}  {hit['image_path']}  {hit['caption']}")
    return "\n".join(lines) + "\n\n"


def append(log_dir: str | os.PathLike, record: dict) -> None:
    """Append one record to both logs, atomically with respect to other processes."""
    folder = Path(log_dir)
    folder.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False) + "\n"
    block = format_block(record)
    with FileLock(str(folder / ".search_log.lock"), timeout=LOCK_TIMEOUT_S):
        for name, text in ((TEXT_LOG, block), (JSON_LOG, line)):
            with open(folder / name, "a", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())


def read_records(path: str | os.PathLike) -> Iterator[dict]:
    """Records from a JSONL log; a damaged line is reported with its number."""
    path = Path(path)
    if path.is_dir():
        path = path / JSON_LOG
    if not path.is_file():
        raise InputError(f"search log not found: {path}; run a search first")
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise InputError(f"{path} line {number}: not a JSON record ({exc})") from exc


@dataclass
class ReplayOutcome:
    record: dict
    identical: bool
    changes: list[str]
    new_results: list[dict]


def compare(record: dict, fresh: dict) -> list[str]:
    """What differs between a logged record and the same query run now."""
    changes = []
    for key, label in (("model", "model"), ("model_fingerprint", "model weights"),
                       ("features_fingerprint", "features"), ("rules_sha256", "rules")):
        if record.get(key) != fresh.get(key):
            changes.append(f"{label}: {record.get(key)} -> {fresh.get(key)}")
    old_exp = [e["text"] for e in record["expansions"]]
    new_exp = [e["text"] for e in fresh["expansions"]]
    if old_exp != new_exp:
        changes.append(f"expansions: {old_exp} -> {new_exp}")
    old = [h["image_path"] for h in record["results"]]
    new = [h["image_path"] for h in fresh["results"]]
    if old != new:
        first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
        changes.append(f"ranking: first differs at rank {first + 1}: "
                       f"{old[first] if first < len(old) else '-'} -> {new[first] if first < len(new) else '-'}")
    else:
        drift = max((abs(a["score"] - b["score"]) for a, b in zip(record["results"], fresh["results"])), default=0.0)
        if drift > 1e-4:
            changes.append(f"scores: same ranking, largest score change {drift:.6f}")
    return changes


def replay(records: list[dict], run: Callable[[dict], dict]) -> list[ReplayOutcome]:
    """Re-run each logged query through ``run`` (which returns a fresh record) and compare."""
    outcomes = []
    for record in records:
        fresh = run(record)
        changes = compare(record, fresh)
        outcomes.append(ReplayOutcome(record, not changes, changes, fresh["results"]))
    return outcomes
