"""The search log: a readable ``search_log.txt`` and a machine-readable ``search_log.jsonl``.

Owns appending records (under a file lock, so concurrent processes never interleave or
lose one, each on a fresh line whatever the file ends with), reading them back (a damaged
line, or a record of a newer version, is named and skipped, never read as ours) and
replaying them. It must not search by itself: replay is handed a function that runs a query.
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
                     "row": h.caption_row, "relevant": h.relevant, "band": h.band} for h in result.results],
        "relevance": result.relevance,
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
    if record.get("ocr") in ("fuse", "only"):
        lines[0] += "  (OCR text only / 仅图中文字)" if record["ocr"] == "only" else "  (with OCR text / 含图中文字)"
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
                 f"features: {record['features_fingerprint']}  backend / 后端: {record.get('backend', 'exact')}")
    if record.get("where"):
        lines.append("  filter / 筛选: " + "  ".join(f"{key}={value}" for key, value in record["where"].items()
                                                      if value not in (None, "", [], {})))
    if record.get("collection_root"):
        # paths inside the collection read the same whichever folder the search ran from
        lines.append(f"  collection / 图库: {record['collection_root']}")
    for hit in record["results"]:
        band = f"  [{hit['band']}]" if hit.get("band") else ""
        lines.append(f"  {hit['rank']:>3}. {hit['score']:.4f}{band}  {hit.get('path') or hit['image_path']}  "
                     f"{hit['caption']}")
        if hit.get("matched_by"):
            lines.append(f"       matched by / 匹配: {hit['matched_by']}"
                         + (f"  text / 文字: {hit['ocr_line']}" if hit.get("ocr_line") else ""))
    return "\n".join(lines) + "\n\n"


def append(log_dir: str | os.PathLike, record: dict) -> None:
    """Append one record to both logs, atomically with respect to other processes."""
    folder = make_output_folder(log_dir)
    line = json.dumps(record, ensure_ascii=False) + "\n"
    block = format_block(record)
    with FileLock(str(folder / ".search_log.lock"), timeout=LOCK_TIMEOUT_S):
        for name, text in ((TEXT_LOG, block), (JSON_LOG, line)):
            _append_on_fresh_line(folder / name, text)


def _append_on_fresh_line(path: Path, text: str) -> None:
    """Append ``text`` so that it starts a line, whatever the file ends with.

    A crash or a full disk mid-append leaves a partial last line; written straight after it,
    the next record would join it and be lost with it. Readers skip the torn line alone.
    """
    with open(path, "a+b") as fh:
        end = fh.seek(0, os.SEEK_END)
        if end:
            fh.seek(end - 1)
            if fh.read(1) != b"\n":
                text = "\n" + text
        fh.write(text.encode("utf-8"))
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


MODES = ("text", "image", "image+text")
# Every top-level field a record of this version may hold (make_record's, plus "dictionary" from api.record_for).
# A field outside it means a newer writer: its meaning is unknown here, so the record is not read as ours.
RECORD_FIELDS = frozenset({
    "record_version", "time", "mode", "to", "fuse", "image", "image_sha256", "text_weight", "query", "raw_query",
    "normalized_query", "expand", "expansions", "untranslated", "k", "where", "backend", "model",
    "model_fingerprint", "features_dir", "collection_root", "features_fingerprint", "caption_features_fingerprint",
    "captions_sha256", "rules_path", "rules_sha256", "tool_version", "results", "dictionary", "relevance"})
RECORD_FIELDS |= {"ocr", "ocr_fingerprint"}   # api.record_for, for features with OCR text
MAX_NAMED_LINES = 20   # skipped lines named one by one; past this, one line counts the rest


@dataclass
class LogLine:
    """One non-blank line of a JSONL log: the record read from it, or why it is skipped."""

    path: Path
    number: int
    record: dict | None = None      # the parsed object (also for a foreign record, so replay can show its query)
    problem: str | None = None      # None: a record of this version (or an older one)
    problem_zh: str = ""

    @property
    def message(self) -> str:
        """The one line a user reads about a skipped line: file, line number, what is wrong."""
        return f"{self.path} line {self.number}: {self.problem}; skipped / 日志第 {self.number} 行{self.problem_zh}，已跳过"


def foreign(record: dict) -> tuple[str, str] | None:
    """Why (English, Chinese) a parsed record is not one this version can read as its own (None: ours, or older)."""
    version = record.get("record_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version > RECORD_VERSION:
        return (f"record_version {version!r} is newer than this tool reads ({RECORD_VERSION}), update clip_retrieval",
                "来自更新的版本，请升级 clip_retrieval")
    if record.get("mode", "text") not in MODES:
        return f"unknown mode {record.get('mode')!r}", "检索方式未知"
    if record.get("to", "image") not in (None, "image", "text"):
        return f"unknown result kind to={record.get('to')!r}", "结果类型未知"
    unknown = sorted(set(record) - RECORD_FIELDS)
    if unknown:
        return f"unknown fields {', '.join(unknown[:5])} (a newer version's record?)", "含未知字段"
    return None


def read_lines(path: str | os.PathLike) -> Iterator[LogLine]:
    """Every non-blank line of a JSONL log, parsed, with the problem of each line that is not a record of ours.

    Lines are read as bytes and decoded one at a time: a crash mid-append can cut a line inside a
    multi-byte character, and that must cost that line only, not the file.
    """
    path = json_log_file(path)
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.rstrip(b"\r\n").decode("utf-8"))
            except ValueError as exc:   # UnicodeDecodeError is a ValueError too
                yield LogLine(path, number, problem=f"damaged, not a JSON record ({exc})", problem_zh="已损坏")
                continue
            if not isinstance(record, dict):
                yield LogLine(path, number, problem="not a JSON object", problem_zh="不是 JSON 记录")
                continue
            problem, problem_zh = foreign(record) or (None, "")
            yield LogLine(path, number, record, problem, problem_zh)


def warn_skipped(lines: Iterable[LogLine]) -> Iterator[LogLine]:
    """Pass lines through, naming each skipped one in a warning (the first MAX_NAMED_LINES, then a count)."""
    skipped = 0
    for line in lines:
        if line.problem is not None:
            skipped += 1
            if skipped <= MAX_NAMED_LINES:
                log.warning("%s", line.message)
        yield line
    if skipped > MAX_NAMED_LINES:
        log.warning("%d more lines of the log skipped, not named / 另有 %d 行已跳过", skipped - MAX_NAMED_LINES,
                    skipped - MAX_NAMED_LINES)


def read_records(path: str | os.PathLike) -> Iterator[dict]:
    """The records of a JSONL log this version can read; a damaged or foreign line is named (one warning) and skipped.

    One torn line (a crash mid-append, a full disk) or a record from a newer version must not
    hide every good record, so readers go on past it.
    """
    for line in warn_skipped(read_lines(path)):
        if line.problem is None:
            yield line.record


IDENTICAL, DIFFERENT, NOT_REPLAYABLE = "identical", "different", "not replayable"

# What produced a search's answer: (record field, the cause a change of it names, label in the change list).
INPUTS = (("model", "model", "model"),
          ("model_fingerprint", "weights", "model weights"),
          ("features_fingerprint", "images", "features"),
          ("caption_features_fingerprint", "captions", "caption features"),
          ("captions_sha256", "captions", "captions file"),
          ("rules_sha256", "rules", "rules"),
          ("backend", "index", "index backend"),
          ("ocr_fingerprint", "ocr text", "OCR text"))
OPTIONAL_INPUTS = {"ocr_fingerprint"}     # recorded only for features with OCR text
RANKING_ONLY, CAUSE_UNKNOWN = "ranking only", "cause unknown"
# Scores are logged to 6 decimals; a change beyond this with the same ranking is drift worth naming
# (other weights or features that happen to rank alike), below it rounding and BLAS noise.
SCORE_TOLERANCE = 1e-4


class NotReplayable(Exception):
    """A record that cannot be run again (its query image is gone or changed, its features are missing)."""


# Whether the collection a record replays against holds an image now (by its collection-relative path):
# lets replay tell a deleted image from a changed caption.
Holds = Callable[[dict, str], bool]


@dataclass
class ReplayOutcome:
    """One record's replay: its status, what changed, why (causes), or why it could not run."""

    record: dict
    status: str
    changes: list[str] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    reason: str | None = None
    new_results: list[dict] = field(default_factory=list)
    line: int | None = None         # the log line, for a line that could not be read as a record

    @property
    def identical(self) -> bool:
        return self.status == IDENTICAL

    def to_json(self) -> dict:
        """The ``--json`` object of one replayed record."""
        return {"time": self.record.get("time"), "query": self.record.get("query"),
                "mode": self.record.get("mode", "text"), "status": self.status, "identical": self.identical,
                "causes": self.causes, "changes": self.changes, "reason": self.reason, "line": self.line}


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
    """Image results are the same image; image-to-text results the same caption text of the same image.

    Compared by content, never by the caption's row number: deleting rows shifts the rows of
    every caption below them without changing any of them.
    """
    if to_text and old.get("caption") != new.get("caption"):
        return False
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


def _captions_explain(record: dict, old: list[dict], new: list[dict], holds: Holds | None) -> bool:
    """Whether changed captions can explain a difference that changed images explain as well.

    Deleting an image deletes its caption rows, so the captions file changes with the
    features; naming captions then blames what did not change. A ranking over images
    (without --fuse) never reads captions: they explain only a shown caption that changed on
    an image in both lists. An image-to-text ranking is explained by images alone when every
    lost hit's image is gone from the collection (``holds``) and the new hits only fill the
    places left at the end, the kept ones in their old order.
    """
    to_text = record.get("to") == "text"
    if not to_text:
        if record.get("fuse"):
            return True
        return any(_same_path(a, b) and a.get("caption") != b.get("caption") for a in old for b in new)
    if holds is None:
        return True
    kept_old = [a for a in old if any(_same_hit(a, b, True) for b in new)]
    lost = [a for a in old if a not in kept_old]
    if any(a.get("path") is None or holds(record, a["path"]) for a in lost):
        return True   # the image is still there (or, in an old record, unknown): it lost or changed that caption
    kept_new = [b for b in new if any(_same_hit(a, b, True) for a in old)]
    in_order = all(_same_hit(a, b, True) for a, b in zip(kept_old, kept_new))
    return not (in_order and new[:len(kept_new)] == kept_new)


def compare(record: dict, fresh: dict, holds: Holds | None = None) -> ReplayOutcome:
    """What differs between a logged record and the same query run now, and which input explains it.

    ``holds`` (see :data:`Holds`) lets the causes of an image-to-text record tell a deleted
    image from a changed caption; without it both are named when both files changed.
    """
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
        if drift > SCORE_TOLERANCE:
            differs.append(f"scores: same ranking, largest score change {drift:.6f}")
    if not differs:
        return ReplayOutcome(record, IDENTICAL, changes, [], None, new)
    if {"images", "captions"} <= set(causes) and not _captions_explain(record, old, new, holds):
        causes.remove("captions")
    if not causes:
        known = all(key in record for key, _, _ in INPUTS if key not in OPTIONAL_INPUTS)
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


def replay(records: Iterable[dict | LogLine], run: Callable[[dict], dict],
           holds: Holds | None = None) -> list[ReplayOutcome]:
    """Re-run each logged query through ``run`` (which returns a fresh record) and compare.

    A record that cannot run (``NotReplayable`` or a ``UserError`` such as missing features)
    is reported with its reason, and the replay goes on with the next one. Items may be a
    log's lines (:func:`read_lines`): a damaged line or a record this version cannot read as
    its own is reported not replayable, never identical, and is not run.
    """
    outcomes = []
    for item in records:
        if isinstance(item, LogLine):
            if item.problem is not None:
                outcomes.append(ReplayOutcome(item.record or {}, NOT_REPLAYABLE, reason=item.message,
                                              line=item.number))
                continue
            item = item.record
        record = item
        try:
            check_query_image(record)
            fresh = run(record)
        except (NotReplayable, UserError) as exc:
            outcomes.append(ReplayOutcome(record, NOT_REPLAYABLE, reason=str(exc)))
            continue
        outcomes.append(compare(record, fresh, holds))
    return outcomes
