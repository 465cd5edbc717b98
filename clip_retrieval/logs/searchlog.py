"""The search log: a readable ``search_log.txt`` and a machine-readable ``search_log.jsonl``.

Owns appending records (under a file lock, so concurrent processes never interleave or
lose one) and replaying them. It must not search by itself: replay is handed a function
that runs a query.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Iterator

from filelock import FileLock

from .. import __version__
from ..core.errors import InputError, UserError
from ..core.files import make_output_folder

log = logging.getLogger(__name__)

TEXT_LOG = "search_log.txt"
JSON_LOG = "search_log.jsonl"
LOCK_TIMEOUT_S = 30


def now_iso() -> str:
    """Local time with its UTC offset, to the second."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


RECORD_VERSION = 2


def make_record(result, store, *, model_fingerprint: str, rules_sha256: str | None,
                rules_path: str | None, backend: str = "exact") -> dict:
    """Everything a replay needs, beside what a person reads (the query as typed and normalised too).

    Paths that a replay resolves are absolute (features folder, query image, rules), and
    each result also carries its path relative to the collection root, so a replay from
    another working folder compares results by identity, not by how a path was printed.
    The fingerprints of what produced the answer let a replay name why it changed.
    """
    manifest = store.manifest
    pooled = result.expansion.pooled if result.expansion is not None else result.expansions
    return {
        "record_version": RECORD_VERSION,
        "time": now_iso(),
        "mode": result.mode,
        "to": result.to,
        "fuse": result.fuse,
        "image": str(Path(result.image).resolve()) if result.image else None,
        "image_sha256": result.image_sha256,
        "text_weight": result.text_weight,
        "query": result.query,
        "raw_query": result.raw_query if result.raw_query is not None else result.query,
        "normalized_query": result.expansion.normalized or result.query if result.expansion else result.query,
        "expand": result.expand,
        "expansions": [{"text": p.text, "lang": p.lang, "weight": p.weight, "term": p.term, "source": p.source,
                        "pooled": p in pooled} for p in result.expansions],
        "untranslated": result.expansion.untranslated if result.expansion else [],
        "k": result.k,
        "where": result.where.to_json() if result.where is not None else None,
        "backend": backend,
        "model": result.model,
        "model_fingerprint": model_fingerprint,
        "features_dir": str(Path(store.folder).resolve()),
        "collection_root": str(manifest.root),
        "features_fingerprint": store.fingerprint,
        "caption_features_fingerprint": manifest.text_features_fingerprint,
        "captions_sha256": manifest.source.get("csv_sha256"),
        "rules_path": str(Path(rules_path).resolve()) if rules_path else None,
        "rules_sha256": rules_sha256,
        "tool_version": __version__,
        "results": [{"rank": h.rank, "score": round(h.score, 6), "image_path": h.image_path,
                     "path": manifest.images[h.index]["path"], "caption": h.caption,
                     "row": h.caption_row} for h in result.results],
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
    if mode == "image+text" and record.get("image"):
        lines.append(f"  image / 图片: {record['image']}")
    if record.get("normalized_query") not in (None, record["query"]):
        lines.append(f"  normalised / 规范化: {record['normalized_query']}")
    if record["expansions"]:
        marks = {"dictionary": " [词典 dictionary]", "normalisation": " [规范化 normalised]"}
        lines.append("  expansions / 扩展: " + " | ".join(
            e["text"] + marks.get(e.get("source"), "") + ("" if e.get("pooled", True) else " [未使用 not pooled]")
            for e in record["expansions"]))
    else:
        lines.append("  expansions / 扩展: (none)" if record["expand"] else "  expansions / 扩展: (disabled)")
    if record.get("untranslated"):
        lines.append("  untranslated / 未翻译: " + "、".join(record["untranslated"]))
    lines.append(f"  model: {record['model']} ({record['model_fingerprint']})  k={record['k']}  "
                 f"features: {record['features_fingerprint']}")
    if record.get("collection_root"):
        # paths inside the collection read the same whichever folder the search ran from
        lines.append(f"  collection / 图库: {record['collection_root']}")
    for hit in record["results"]:
        lines.append(f"  {hit['rank']:>3}. {hit['score']:.4f}  {hit.get('path') or hit['image_path']}  {hit['caption']}")
    return "\n".join(lines) + "\n\n"


def append(log_dir: str | os.PathLike, record: dict) -> None:
    """Append one record to both logs, atomically with respect to other processes."""
    folder = make_output_folder(log_dir)
    line = json.dumps(record, ensure_ascii=False) + "\n"
    block = format_block(record)
    with FileLock(str(folder / ".search_log.lock"), timeout=LOCK_TIMEOUT_S):
        for name, text in ((TEXT_LOG, block), (JSON_LOG, line)):
            with open(folder / name, "a", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())


def json_log_file(path: str | os.PathLike) -> Path:
    """The JSONL log a user named, as the file itself or the folder holding it (InputError when absent)."""
    path = Path(path)
    if path.is_dir():
        path = path / JSON_LOG
    if not path.is_file():
        raise InputError(f"search log not found: {path}; run a search first / 日志不存在，请先检索")
    return path


def read_records(path: str | os.PathLike) -> Iterator[dict]:
    """Records from a JSONL log; a damaged line is reported with its number."""
    path = json_log_file(path)
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise InputError(f"日志第 {number} 行不是 JSON 记录 / {path} line {number}: not a JSON record ({exc})") from exc


IDENTICAL, DIFFERENT, NOT_REPLAYABLE = "identical", "different", "not replayable"

# What produced a search's answer: (record field, the cause a change of it names, label in the change list).
INPUTS = (("model", "model", "model"),
          ("model_fingerprint", "weights", "model weights"),
          ("features_fingerprint", "images", "features"),
          ("caption_features_fingerprint", "captions", "caption features"),
          ("captions_sha256", "captions", "captions file"),
          ("rules_sha256", "rules", "rules"),
          ("backend", "index", "index backend"))
RANKING_ONLY, CAUSE_UNKNOWN = "ranking only", "cause unknown"


class NotReplayable(Exception):
    """A record that cannot be run again (its query image is gone or changed, its features are missing)."""


@dataclass
class ReplayOutcome:
    """One record's replay: its status, what changed, why (causes), or why it could not run."""

    record: dict
    status: str
    changes: list[str] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    reason: str | None = None
    new_results: list[dict] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return self.status == IDENTICAL

    def to_json(self) -> dict:
        """The ``--json`` object of one replayed record."""
        return {"time": self.record.get("time"), "query": self.record.get("query"),
                "mode": self.record.get("mode", "text"), "status": self.status, "identical": self.identical,
                "causes": self.causes, "changes": self.changes, "reason": self.reason}


def _same_path(old: dict, new: dict) -> bool:
    """Whether two result rows name the same image: by collection-relative path, else by the printed path."""
    if old.get("path") is not None and new.get("path") is not None:
        return Path(old["path"]) == Path(new["path"])
    printed, fresh = Path(old.get("image_path", "")), Path(new.get("image_path", "")).resolve()
    if printed.is_absolute():
        return printed.resolve() == fresh
    parts = [p for p in Path(os.path.normpath(printed)).parts if p != ".."]
    return bool(parts) and list(fresh.parts[-len(parts):]) == parts


def _same_hit(old: dict, new: dict, to_text: bool) -> bool:
    """Image results are the same image; image-to-text results the same caption and row (else the same image)."""
    if to_text:
        if old.get("caption") != new.get("caption"):
            return False
        if old.get("row") is not None and new.get("row") is not None:
            return old["row"] == new["row"]
    return _same_path(old, new)


def _causes(record: dict, fresh: dict) -> tuple[list[str], list[str]]:
    """(changed inputs as readable lines, cause names) between a record and its replay."""
    changes, causes, changed = [], [], set()
    for key, cause, label in INPUTS:
        if key == "rules_sha256" and not (record.get("expand") and fresh.get("rules_sha256")):
            continue
        if key in record and record.get(key) != fresh.get(key):
            changes.append(f"{label}: {record.get(key)} -> {fresh.get(key)}")
            changed.add(key)
            causes.append(cause)
    if changed & {"model", "model_fingerprint"}:  # other weights re-encode everything: changed features follow
        causes = [c for k, c, _ in INPUTS
                  if k in changed and k not in ("features_fingerprint", "caption_features_fingerprint")]
    return changes, list(dict.fromkeys(causes))


def compare(record: dict, fresh: dict) -> ReplayOutcome:
    """What differs between a logged record and the same query run now, and which input explains it."""
    changes, causes = _causes(record, fresh)
    differs = []
    old_exp = [e.get("text") for e in record.get("expansions") or []]
    new_exp = [e.get("text") for e in fresh.get("expansions") or []]
    if old_exp != new_exp:
        differs.append(f"expansions: {old_exp} -> {new_exp}")
    old, new = record.get("results") or [], fresh.get("results") or []
    to_text = record.get("to") == "text"
    first = next((i for i, (a, b) in enumerate(zip(old, new)) if not _same_hit(a, b, to_text)), None)
    if first is None and len(old) != len(new):
        first = min(len(old), len(new))
    if first is not None:
        def show(hits, i):
            if i >= len(hits):
                return "-"
            return hits[i].get("caption") if to_text else hits[i].get("path") or hits[i].get("image_path")
        differs.append(f"ranking: first differs at rank {first + 1}: {show(old, first)} -> {show(new, first)}")
    else:
        for a, b in zip(old, new):
            if not to_text and a.get("caption") != b.get("caption"):
                differs.append(f"caption at rank {a.get('rank')}: {a.get('caption')} -> {b.get('caption')}")
                break
        drift = max((abs(a.get("score", 0.0) - b.get("score", 0.0)) for a, b in zip(old, new)), default=0.0)
        if drift > 1e-4:
            differs.append(f"scores: same ranking, largest score change {drift:.6f}")
    if not differs:
        return ReplayOutcome(record, IDENTICAL, changes, [], None, new)
    if not causes:
        known = all(key in record for key, _, _ in INPUTS)
        causes = [RANKING_ONLY if known else CAUSE_UNKNOWN]
    return ReplayOutcome(record, DIFFERENT, changes + differs, causes, None, new)


def _log_folder(log_path: str | os.PathLike) -> Path:
    path = Path(log_path).resolve()
    return path if path.is_dir() else path.parent


def _first_existing(logged: str, log_path: str | os.PathLike, found: Callable[[Path], bool]) -> str:
    """A relative path from an old record, tried from here, then beside and above the log's folder."""
    path = Path(logged)
    if path.is_absolute():
        return str(path)
    log_folder = _log_folder(log_path)
    for candidate in (path, log_folder / path, log_folder.parent / path):
        if found(candidate):
            return str(candidate.resolve())
    return logged


def features_folder(record: dict, log_path: str | os.PathLike, override: str | os.PathLike | None = None) -> str:
    """The features folder a record is replayed against: ``override``, else the logged one wherever it is."""
    from ..features.store import MANIFEST_FILE

    if override is not None:
        return str(Path(override).resolve())
    logged = record.get("features_dir")
    if not logged:
        raise NotReplayable("the record names no features folder; give --features DIR")
    folder = _first_existing(logged, log_path, lambda p: (p / MANIFEST_FILE).is_file())
    log_folder = _log_folder(log_path)
    if not (Path(folder) / MANIFEST_FILE).is_file() and (log_folder / MANIFEST_FILE).is_file():
        return str(log_folder)  # an old record's relative folder: the log lives in its features folder by default
    return folder


def rules_file(record: dict, log_path: str | os.PathLike) -> str | None:
    """The rules file a record was expanded with, found from any working folder (None: no rules)."""
    logged = record.get("rules_path")
    return _first_existing(logged, log_path, Path.is_file) if logged else None


def check_query_image(record: dict) -> None:
    """Refuse (NotReplayable) a record whose query image is gone or is no longer the same file."""
    from ..core.hashing import sha256_file

    image = record.get("image")
    if not image:
        return
    if not Path(image).is_file():
        raise NotReplayable(f"query image missing / 查询图片已不存在: {image}")
    logged = record.get("image_sha256")
    if logged and sha256_file(image) != logged:
        raise NotReplayable(f"query image changed since the search / 查询图片已改变: {image} "
                            f"(sha256 {logged[:12]}… now {sha256_file(image)[:12]}…)")


def replay(records: Iterable[dict], run: Callable[[dict], dict]) -> list[ReplayOutcome]:
    """Re-run each logged query through ``run`` (which returns a fresh record) and compare.

    A record that cannot run (``NotReplayable`` or a ``UserError`` such as missing features)
    is reported with its reason, and the replay goes on with the next one.
    """
    outcomes = []
    for record in records:
        try:
            check_query_image(record)
            fresh = run(record)
        except (NotReplayable, UserError) as exc:
            outcomes.append(ReplayOutcome(record, NOT_REPLAYABLE, reason=str(exc)))
            continue
        outcomes.append(compare(record, fresh))
    return outcomes
