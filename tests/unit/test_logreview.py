"""Reviewing the log: the filtered listing, stats read in chunks, the HTML report and the CSV table."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from clip_retrieval import api, cli
from clip_retrieval.logs import review as logreview, searchlog

from tests.conftest import ROOT


@pytest.fixture()
def logged(tiny_features, small_collection, tmp_path):
    """A log of four real searches (two days apart), in its own folder."""
    rules = tmp_path / "rules.yaml"
    shutil.copy(ROOT / "rules" / "expansions.yaml", rules)
    searcher = api.open_searcher(tiny_features, rules=rules, device="cpu")
    api.search(searcher, "金毛", k=3, log_dir=tmp_path)
    api.search(searcher, "灰猫", k=3, log_dir=tmp_path)
    api.search(searcher, image=str(small_collection.parent / "images" / "husky_snow_00.png"), k=3, log_dir=tmp_path)
    api.search(searcher, "金毛", k=3, expand=False, log_dir=tmp_path)
    log = tmp_path / searchlog.JSON_LOG
    records = list(searchlog.read_records(log))
    for record, day in zip(records, ("2026-03-01", "2026-03-01", "2026-03-03", "2026-03-05")):
        record["time"] = f"{day}T10:00:00+08:00"
    log.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return log


def _lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line]


def test_log_lists_one_line_per_search_with_filters(logged, capsys):
    assert cli.main(["log", "--log", str(logged)]) == 0
    lines = _lines(capsys)
    assert len(lines) == 4
    assert re.search(r"金毛  扩展/exp \d+  #1 -?\d\.\d{4} \S+\.png  open_clip:tiny", lines[0])
    assert cli.main(["log", "--log", str(logged), "--query", "金毛"]) == 0
    assert len(_lines(capsys)) == 2
    assert cli.main(["log", "--log", str(logged), "--mode", "image"]) == 0
    assert [line.split()[1] for line in _lines(capsys)] == ["image"]
    assert cli.main(["log", "--log", str(logged), "--since", "2026-03-02", "--until", "2026-03-03"]) == 0
    assert len(_lines(capsys)) == 1
    assert cli.main(["log", "--log", str(logged), "--model", "other", "--json"]) == 0
    assert _lines(capsys) == []
    assert cli.main(["log", "--log", str(logged), "--until", "2026-03-01", "--json"]) == 0
    rows = [json.loads(line) for line in _lines(capsys)]
    assert [r["query"] for r in rows] == ["金毛", "灰猫"] and rows[0]["results"][0]["rank"] == 1
    assert cli.main(["log", "--log", str(logged), "--since", "March"]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err


def _synthetic(path, n: int) -> None:
    """A log of ``n`` records: three models/fingerprints, repeated queries, one old record, extra fields."""
    lines = []
    for i in range(n):
        query = f"q{i % 13}"
        setup = i % 3
        results = [{"rank": 1, "score": 0.2 + (i % 13) / 20, "image_path": f"img/{(i + setup * (i % 13 == 5)) % 7}.png",
                    "path": f"img/{(i + setup * (i % 13 == 5)) % 7}.png", "caption": "c"}]
        if i % 13 != 5:  # only q5's top-k moves with the setup
            results[0]["path"] = results[0]["image_path"] = f"img/{i % 13}.png"
        lines.append({"time": f"2026-03-{1 + i % 4:02d}T09:00:00+08:00", "query": query, "mode": "text",
                      "model": "demo" if setup else "open_clip:tiny", "model_fingerprint": f"m{setup}",
                      "features_fingerprint": "f", "results": results, "raw_query": f" {query} ",
                      "expansions": [{"text": "x", "lang": "en", "dictionary": "cc-cedict"}]})
    lines.append({"time": "2026-03-01T09:00:00", "query": "q0", "results": []})  # an old, thin record
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")


def test_stats_agree_whatever_the_chunk_size(tmp_path, capsys):
    log = tmp_path / "search_log.jsonl"
    _synthetic(log, 520)
    assert [len(frame) for frame in logreview._chunks(log, 200)] == [200, 200, 121]  # never the whole log at once
    whole = logreview.stats(log, chunksize=1_000_000)
    assert logreview.stats(log, chunksize=7) == whole
    assert whole["records"] == 521
    assert whole["per_day"] == {"2026-03-01": 131, "2026-03-02": 130, "2026-03-03": 130, "2026-03-04": 130}
    assert whole["top_queries"][0] == {"query": "q0", "searches": 41}
    moved = {r["query"]: r for r in whole["repeated"]}
    assert moved["q5"]["changed"] and moved["q5"]["across_setups"]
    assert not moved["q4"]["changed"] and moved["q4"]["setups"] == 3
    assert {r["query"] for r in whole["low_top1"]} <= {"q0", "q1"}
    assert cli.main(["log", "stats", "--log", str(log), "--chunk-size", "50"]) == 0
    out = capsys.readouterr().out
    assert "521 searches" in out and "q5" in out and "changed across setups" in out
    assert cli.main(["log", "stats", "--log", str(log), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 521


@pytest.mark.parametrize("change", [{"k": 10}, {"where": {"path_prefix": "宠物"}}, {"backend": "faiss"}])
def test_a_filter_k_or_backend_is_another_setup_not_a_change_under_the_same_one(tmp_path, change):
    log = tmp_path / "search_log.jsonl"
    base = {"time": "2026-03-01T09:00:00+08:00", "query": "金毛", "mode": "text", "to": "image", "model": "demo",
            "model_fingerprint": "m", "features_fingerprint": "f", "k": 5, "where": None, "backend": "exact"}
    hits = lambda name: [{"rank": 1, "score": 0.5, "image_path": name, "path": name, "caption": ""}]  # noqa: E731
    rows = [dict(base, results=hits("a.png")), dict(base, results=hits("a.png")),
            dict(base, **change, results=hits("b.png"))]
    log.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (row,) = logreview.stats(log)["repeated"]
    assert (row["searches"], row["setups"], row["topk_variants"]) == (3, 2, 2)
    assert row["across_setups"], row
    assert "changed across setups" in logreview.format_stats(logreview.stats(log))


def test_stats_skip_and_name_damaged_and_newer_lines(tmp_path, capsys):
    log = tmp_path / "search_log.jsonl"
    _synthetic(log, 5)
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    newer = json.dumps(dict(json.loads(lines[0]), record_version=99, mode="video"), ensure_ascii=False) + "\n"
    log.write_text("".join(lines[:2]) + '{"time": "2026-03-0\n' + "".join(lines[2:]) + newer, encoding="utf-8")
    assert cli.main(["log", "stats", "--log", str(log), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["records"] == 6   # every good record counted, the two others left out
    assert err.splitlines() == [f"{log} line 3: damaged, not a JSON record (Unterminated string starting at: "
                                f"line 1 column 10 (char 9)); skipped / 日志第 3 行已损坏，已跳过",
                                f"{log} line 8: record_version 99 is newer than this tool reads "
                                f"({searchlog.RECORD_VERSION}), update clip_retrieval; skipped "
                                f"/ 日志第 8 行来自更新的版本，请升级 clip_retrieval，已跳过"]


def test_log_lists_every_good_record_around_a_damaged_line(logged, capsys):
    lines = logged.read_text(encoding="utf-8").splitlines(keepends=True)
    logged.write_text(lines[0] + lines[1][:len(lines[1]) // 2] + "\n" + "".join(lines[2:]), encoding="utf-8")
    assert cli.main(["log", "--log", str(logged), "--json"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["time"][:10] for line in out.splitlines()] == ["2026-03-01", "2026-03-03", "2026-03-05"]
    assert err.startswith(f"{logged} line 2: damaged") and len(err.splitlines()) == 1


def test_html_report_is_self_contained_with_replay_and_csv(logged, tmp_path):
    page, table = tmp_path / "report.html", tmp_path / "table.csv"
    assert cli.main(["log", "--log", str(logged), "--html", str(page), "--csv", str(table), "--replay",
                     "--device", "cpu"]) == 0
    text = page.read_text(encoding="utf-8")
    sources = re.findall(r"<img[^>]* src='([^']*)'", text)
    assert len(sources) == 4 * 3 + 1 and all(s.startswith("data:image/jpeg;base64,") for s in sources)
    assert "golden retriever" in text and "<th>en</th>" in text and "[rule 金毛]" in text  # expansions by language, source
    assert text.count("replay / 重放: identical") == 4
    assert text.index("2026-03-05") < text.index("2026-03-01")  # newest first
    first = json.loads(logged.read_text(encoding="utf-8").splitlines()[0])
    top = first["results"][0]
    on_disk = Path(first["collection_root"]) / top["path"]
    # each hit names its file, with the whole path on hover and a link that opens it
    assert f"<span class='name' title='{on_disk}'>{Path(top['path']).name}</span>" in text
    assert f"<a href='{on_disk.resolve().as_uri()}' title='{on_disk}'>" in text
    assert text.count("k=3 · backend / 后端: exact") == 4
    rows = list(csv.DictReader(open(table, encoding="utf-8-sig")))
    assert [r["query"] for r in rows] == ["金毛", "灰猫", str(rows[2]["query"]), "金毛"]
    assert all(r["replay"] == "identical" for r in rows) and float(rows[0]["top1_score"]) != 0
