"""Reviewing the search log: filtered listings, statistics, a CSV table and a self-contained HTML report.

Owns reading log records for people: which records a filter selects, the one-line summary
of a search, the statistics (pandas, reading the JSONL in chunks so a log of a million
records is never loaded whole) and the report page the CLI writes and the web page shows.
It must not search or replay by itself: replay outcomes are handed in. Records are read
with ``.get`` throughout, so older records and records with extra fields both work.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import math
import os
from collections import deque
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Iterable

from . import searchlog
from ..core.errors import InputError
from ..core.paths import resolve_path

MODES = searchlog.MODES
CSV_COLUMNS = ("time", "query", "mode", "to", "expansions", "top1_path", "top1_score", "top1_caption", "model",
               "k", "features_fingerprint", "replay")
THUMB = 96
MAX_VARIANTS = 10   # distinct top-k lists counted per query (more show as 10): bounds the memory per query


def parse_when(text: str | None, end: bool = False) -> datetime | None:
    """``YYYY-MM-DD`` or an ISO time (local when it names no offset); a date as ``end`` means the whole day."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"not a date: {text!r}; use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS] "
                         f"/ 日期格式应为 YYYY-MM-DD") from None
    if end and len(text) <= 10:
        when = datetime.combine(when.date() + timedelta(days=1), time()) - timedelta(microseconds=1)
    return when if when.tzinfo else when.astimezone()


def record_time(record: dict) -> datetime | None:
    """When a record was written (None when its time is missing or unreadable)."""
    try:
        when = datetime.fromisoformat(str(record.get("time")))
    except ValueError:
        return None
    return when if when.tzinfo else when.astimezone()


def select(records: Iterable[dict], since: str | None = None, until: str | None = None, query: str | None = None,
           model: str | None = None, mode: str | None = None, last: int | None = None) -> list[dict]:
    """The records a reviewer asked for, oldest first; ``last`` keeps only the most recent ones (streaming)."""
    start, stop = parse_when(since), parse_when(until, end=True)
    if mode is not None and mode not in MODES:
        raise InputError(f"--mode 取值无效 / --mode must be one of {', '.join(MODES)}, got {mode!r}")

    def wanted(r: dict) -> bool:
        when = record_time(r)
        if (start or stop) and when is None:
            return False
        return ((start is None or when >= start) and (stop is None or when <= stop)
                and (query is None or query in str(r.get("query", "")))
                and (model is None or model == r.get("model"))
                and (mode is None or mode == r.get("mode", "text")))

    kept: Iterable[dict] = (r for r in records if wanted(r))
    return list(deque(kept, maxlen=last) if last else kept)


def summary(record: dict) -> dict:
    """One search as a table row: time, query, mode, expansions, top-1 and its score, model."""
    results = record.get("results") or []
    top = results[0] if results else {}
    return {"time": record.get("time"), "query": record.get("query"), "mode": record.get("mode", "text"),
            "to": record.get("to", "image"), "expansions": len(record.get("expansions") or []),
            "top1_path": top.get("image_path"), "top1_score": top.get("score"), "top1_caption": top.get("caption"),
            "model": record.get("model"), "k": record.get("k"),
            "features_fingerprint": record.get("features_fingerprint")}


def format_line(row: dict) -> str:
    """The readable line ``clipsou log`` prints for one search."""
    score = f"{row['top1_score']:.4f}" if isinstance(row["top1_score"], (int, float)) else "-"
    return (f"{row['time']}  {row['mode']:<10}  {row['query']}  扩展/exp {row['expansions']}  "
            f"#1 {score} {row['top1_path'] or '-'}  {row['model']}")


def write_csv(records: list[dict], path: str | os.PathLike,
              outcomes: dict[int, searchlog.ReplayOutcome] | None = None) -> None:
    """The summary table as CSV (UTF-8 with BOM, so spreadsheet programs read the Chinese), written atomically."""
    from ..core.files import write_atomic

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8-sig", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for n, record in enumerate(records):
                outcome = (outcomes or {}).get(n)
                writer.writerow({**summary(record), "replay": status_text(outcome) if outcome else ""})

    write_atomic(Path(path), write)


# ---------------------------------------------------------------- statistics (pandas, in chunks)

def _signature(results: list | None, to: str | None) -> str:
    """A short digest of a top-k list: which images (or captions and rows) in which order."""
    parts = [f"{h.get('caption')}\x1f{h.get('row')}" if to == "text" else str(h.get("path") or h.get("image_path"))
             for h in results or []]
    return hashlib.blake2b("\x1e".join(parts).encode("utf-8"), digest_size=8).hexdigest()


# what, beside the query, decides a top-k: a change in any of them explains a changed top-k
SETUP_FIELDS = ("model", "model_fingerprint", "features_fingerprint", "k", "where", "backend", "to", "fuse",
                "expand", "rules_sha256", "image_sha256", "text_weight")


def _setup(record: dict) -> str:
    """One string per setup: records that differ in any of ``SETUP_FIELDS`` are different setups."""
    return json.dumps([record.get(name) for name in SETUP_FIELDS], sort_keys=True, ensure_ascii=False, default=str)


def _flat(record: dict) -> dict:
    """The few fields the statistics need from one record (missing ones get neutral values)."""
    results = record.get("results") or []
    top = results[0].get("score") if results and isinstance(results[0], dict) else None
    return {"day": str(record.get("time", "?"))[:10], "query": str(record.get("query", "")),
            "model": str(record.get("model", "?")),
            "setup": _setup(record),
            "top1": float(top) if isinstance(top, (int, float)) else math.nan,
            "topk": _signature(results, record.get("to"))}


def _chunks(path: Path, chunksize: int):
    """The log as flat DataFrames of ``chunksize`` records; only one chunk is in memory at a time.

    Records are parsed line by line (a damaged line is named by its number) and reduced to
    the fields the statistics use before pandas sees them: a chunk of whole records as a
    DataFrame of nested objects (``pandas.read_json(chunksize=...)``) measured eight times
    the memory (1.2 GB against 150 MB at 100k records) and three times the time.
    """
    import pandas as pd

    batch = []
    for record in searchlog.read_records(path):
        batch.append(_flat(record))
        if len(batch) >= chunksize:
            yield pd.DataFrame(batch)
            batch = []
    if batch:
        yield pd.DataFrame(batch)


def stats(path: str | os.PathLike, chunksize: int = 50_000, top: int = 10, low_quantile: float = 0.1,
          quiet: bool = True) -> dict:
    """Searches per day, frequent queries, low top-1 scores per model, and top-k changes of repeated queries.

    The log is read ``chunksize`` records at a time; only per-query aggregates are kept, so
    memory grows with the number of distinct queries (each keeps at most ``MAX_VARIANTS`` top-k
    digests and its setups), not with the length of the log (apart from 4 bytes per record for
    the top-1 score quantile of each model).
    """
    import numpy as np
    import pandas as pd
    from tqdm import tqdm

    path = searchlog.json_log_file(path)  # checked before the progress bar starts
    per_day = pd.Series(dtype="int64")
    per_query = pd.Series(dtype="int64")
    score_sum: pd.Series | None = None     # indexed by (model, query)
    score_n: pd.Series | None = None
    top1_by_model: dict[str, list[np.ndarray]] = {}
    setups: dict[str, set[str]] = {}       # per query: the setups it was searched with
    variants: dict[str, set[str]] = {}     # per query: its distinct top-k lists, at most MAX_VARIANTS kept
    total = 0
    progress = tqdm(desc="log / 日志", unit=" records", disable=quiet, unit_scale=True)
    for frame in _chunks(path, chunksize):
        progress.update(len(frame))
        total += len(frame)
        per_day = per_day.add(frame["day"].value_counts(), fill_value=0)
        per_query = per_query.add(frame["query"].value_counts(), fill_value=0)
        scored = frame.dropna(subset=["top1"])
        grouped = scored.groupby(["model", "query"])["top1"]
        sums, counts = grouped.sum(), grouped.count()
        score_sum = sums if score_sum is None else score_sum.add(sums, fill_value=0)
        score_n = counts if score_n is None else score_n.add(counts, fill_value=0)
        for model, scores in scored.groupby("model")["top1"]:
            top1_by_model.setdefault(model, []).append(scores.to_numpy(dtype=np.float32))
        for query, setup in frame[["query", "setup"]].drop_duplicates().itertuples(index=False):
            setups.setdefault(query, set()).add(setup)
        for query, topk in frame[["query", "topk"]].drop_duplicates().itertuples(index=False):
            seen = variants.setdefault(query, set())
            if len(seen) < MAX_VARIANTS:
                seen.add(topk)
    progress.close()
    low = []
    for model, parts in sorted(top1_by_model.items()):
        threshold = float(np.quantile(np.concatenate(parts), low_quantile))
        means = (score_sum / score_n).loc[model]
        for query, mean in means[means <= threshold].sort_values().head(top).items():
            low.append({"model": model, "query": query, "mean_top1": round(float(mean), 6),
                        "searches": int(score_n.loc[(model, query)]), "model_threshold": round(threshold, 6)})
    repeated = per_query[per_query > 1]
    changes = []
    if len(repeated):
        rows = [(query, int(n), len(setups[query]), len(variants[query])) for query, n in repeated.items()]
        for query, n, n_setups, n_variants in sorted(rows, key=lambda r: (-r[3], -r[2], r[0])):
            changes.append({"query": query, "searches": n, "setups": n_setups, "topk_variants": n_variants,
                            "changed": n_variants > 1, "across_setups": n_variants > 1 and n_setups > 1})
    frequent = per_query.sort_values(ascending=False, kind="stable").head(top)
    return {"log": str(path), "records": total,
            "per_day": {day: int(n) for day, n in per_day.sort_index().items()},
            "top_queries": [{"query": q, "searches": int(n)} for q, n in frequent.items()],
            "low_top1": low, "repeated": changes}


def format_stats(report: dict) -> str:
    """The readable form of :func:`stats`."""
    lines = [f"{report['records']} searches / 次检索 in {report['log']}", "", "searches per day / 每日检索:"]
    lines += [f"  {day}  {n}" for day, n in report["per_day"].items()]
    lines += ["", "most frequent queries / 最常见查询:"]
    lines += [f"  {q['searches']:>6}  {q['query']}" for q in report["top_queries"]]
    lines += ["", "low top-1 score for the model / 第一名得分偏低 (below the model's 10th percentile):"]
    lines += [f"  {r['mean_top1']:.4f}  {r['query']}  ({r['model']}, {r['searches']}x, threshold "
              f"{r['model_threshold']:.4f})" for r in report["low_top1"]] or ["  (none / 无)"]
    lines += ["", "repeated queries / 重复查询: top-k changed? (setup / 配置 = model and weights, features, k, "
                  "filter, backend, expansion table, search mode)"]
    for r in report["repeated"]:
        state = ("changed across setups / 随配置变化" if r["across_setups"] else
                 "changed, same setup / 同一配置下变化" if r["changed"] else "stable / 稳定")
        lines.append(f"  {r['query']}  {r['searches']}x, {r['setups']} setup(s), "
                     f"{r['topk_variants']} top-k variant(s): {state}")
    if not report["repeated"]:
        lines.append("  (none / 无)")
    return "\n".join(lines)


# ---------------------------------------------------------------- the HTML report

def status_text(outcome: searchlog.ReplayOutcome) -> str:
    text = outcome.status + (f" ({', '.join(outcome.causes)})" if outcome.causes else "")
    return text + (f": {outcome.reason}" if outcome.reason else "")


def result_file(record: dict, hit: dict) -> Path:
    """Where a logged result's image is: its collection-relative path under the logged root, else as printed."""
    root, rel = record.get("collection_root"), hit.get("path")
    if root and rel:
        return resolve_path(root, rel)
    return Path(str(hit.get("image_path", "")))


def _data_uri(path: Path, size: int = THUMB) -> str:
    """A thumbnail as an inline JPEG (a grey square when the file is gone), so the page needs no other file."""
    from ..collection.dataset import thumbnail

    buf = io.BytesIO()
    thumbnail(path, size).convert("RGB").save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _origin(expansion: dict) -> str:
    """Where an expansion came from: its source (rule, dictionary, ...) and the term that produced it."""
    parts = [str(expansion.get("source") or "rule"), str(expansion.get("term") or "")]
    text = " ".join(p for p in parts if p)
    return text + ("" if expansion.get("pooled", True) else ", 未使用 not pooled")


def _expansions_html(record: dict) -> str:
    """Expansions grouped by language, each with the rule term (source) that produced it."""
    items = record.get("expansions") or []
    if not items:
        return "<p class='muted'>" + ("没有扩展 / no expansions" if record.get("expand") else
                                      "扩展已关闭 / expansion off") + "</p>"
    by_lang: dict[str, list[dict]] = {}
    for e in items:
        by_lang.setdefault(str(e.get("lang") or "?"), []).append(e)
    rows = []
    for lang, group in by_lang.items():
        cells = ", ".join(f"{html.escape(str(e.get('text')))} <span class='src'>[{html.escape(_origin(e))}"
                          f"{'' if e.get('weight') in (None, 1, 1.0) else ' ×' + str(e.get('weight'))}]</span>"
                          for e in group)
        rows.append(f"<tr><th>{html.escape(lang)}</th><td>{cells}</td></tr>")
    return "<table class='exp'>" + "".join(rows) + "</table>"


def search_html(record: dict, outcome: searchlog.ReplayOutcome | None = None) -> str:
    """One search as an HTML section: query, expansions, top-k thumbnails with scores and captions, replay."""
    mode = record.get("mode", "text")
    head = html.escape(str(record.get("query")))
    extra = " → captions / 图搜文" if record.get("to") == "text" else ""
    parts = [f"<section class='search'><h2>{head} <small>{html.escape(mode)}{extra} · "
             f"{html.escape(str(record.get('time')))} · {html.escape(str(record.get('model')))}</small></h2>"]
    if record.get("image"):
        query_image = Path(str(record["image"]))
        parts.append(f"<p>query image / 查询图片: <img class='q' alt='query' src='{_data_uri(query_image)}'> "
                     f"{html.escape(query_image.name)}</p>")
    parts.append(_expansions_html(record))
    where = record.get("where") or {}
    setup = [f"k={record.get('k')}", f"backend / 后端: {record.get('backend') or 'exact'}"]
    setup += [f"{key}={value}" for key, value in where.items() if value not in (None, "", [], {})]
    parts.append(f"<p class='setup'>{html.escape(' · '.join(setup))}</p>")
    if outcome is not None:
        cls = {"identical": "ok", "different": "diff"}.get(outcome.status, "skip")
        details = "".join(f"<li>{html.escape(c)}</li>" for c in outcome.changes + ([outcome.reason] if outcome.reason
                                                                                  else []))
        parts.append(f"<p class='replay {cls}'>replay / 重放: {html.escape(status_text(outcome))}</p>"
                     + (f"<ul class='changes'>{details}</ul>" if details else ""))
    cards = []
    for hit in record.get("results") or []:
        score = hit.get("score")
        shown = f"{score:.4f}" if isinstance(score, (int, float)) else "-"
        file = result_file(record, hit)
        shown_path = str(hit.get("path") or hit.get("image_path") or "")
        link = html.escape(file.resolve().as_uri() if file.is_absolute() or file.exists() else shown_path, quote=True)
        cards.append(f"<figure><a href='{link}' title='{html.escape(str(file), quote=True)}'>"
                     f"<img alt='#{hit.get('rank')}' src='{_data_uri(file)}'></a>"
                     f"<figcaption>#{hit.get('rank')} {shown}<br><span class='name' title='"
                     f"{html.escape(str(file), quote=True)}'>{html.escape(Path(shown_path).name)}</span><br>"
                     f"{html.escape(str(hit.get('caption') or ''))}{_ocr_html(hit)}</figcaption></figure>")
    parts.append("<div class='hits'>" + "".join(cards) + "</div></section>")
    return "".join(parts)


def _ocr_html(hit: dict) -> str:
    """What matched a hit and the text read in it, escaped: OCR text is whatever an image shows."""
    parts = []
    if hit.get("matched_by"):
        parts.append(f"<span class='by'>{html.escape(str(hit['matched_by']))}</span>")
    text = hit.get("ocr_line") or hit.get("ocr_text")
    if text:
        parts.append(f"<span class='ocr'>{html.escape(str(text))}</span>")
    return "<br>" + " ".join(parts) if parts else ""


STYLE = """
body{font-family:system-ui,"Noto Sans CJK SC","WenQuanYi Micro Hei",sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.1em;margin:.2em 0} small{color:#666;font-weight:normal}
section.search{border:1px solid #ddd;border-radius:8px;padding:.6em 1em;margin:0 0 1em 0}
.hits{display:flex;flex-wrap:wrap;gap:8px} figure{margin:0;width:110px;font-size:.8em}
figure img{width:96px;height:96px;object-fit:cover;border-radius:4px} img.q{height:48px;vertical-align:middle}
table.exp{border-collapse:collapse;font-size:.9em;margin:.3em 0} table.exp th{text-align:left;padding-right:.8em}
.name{word-break:break-all;color:#345} p.setup{color:#666;font-size:.85em;margin:.2em 0}
.by{color:#176c2f} .ocr{color:#555;font-style:italic}
.src{color:#888} .muted{color:#888} .replay.ok{color:#176c2f} .replay.diff{color:#a33} .replay.skip{color:#a60}
"""


def report_html(records: list[dict], outcomes: dict[int, searchlog.ReplayOutcome] | None = None,
                title: str = "clip_retrieval 检索日志 / search log") -> str:
    """A whole self-contained page (styles and thumbnails inline), newest search first."""
    return (f"<!DOCTYPE html><html lang='zh'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"{searches_html(records, outcomes)}</body></html>")


def searches_html(records: list[dict], outcomes: dict[int, searchlog.ReplayOutcome] | None = None) -> str:
    """The report's body, newest first: the part the web page's History tab shows too."""
    body = "".join(search_html(r, (outcomes or {}).get(n)) for n, r in reversed(list(enumerate(records))))
    return f"<p>{len(records)} searches / 次检索</p>{body or '<p>没有记录 / no records</p>'}"


def write_html(records: list[dict], path: str | os.PathLike,
               outcomes: dict[int, searchlog.ReplayOutcome] | None = None) -> None:
    """Write the report page atomically."""
    from ..core.files import write_atomic

    page = report_html(records, outcomes)
    write_atomic(Path(path), lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))

