"""The search log under concurrent writers, and replay."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp

from clip_retrieval import api
from clip_retrieval.logs import searchlog

from tests.conftest import ROOT
from tests.unit.log_writer import write_records


def test_concurrent_processes_never_interleave_or_lose_records(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=write_records, args=(str(tmp_path), w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = (tmp_path / "search_log.jsonl").read_text(encoding="utf-8").splitlines()
    queries = sorted(json.loads(line)["query"].split("-长")[0] for line in lines)
    assert queries == sorted(f"{w}-{i}" for w in range(4) for i in range(25))
    blocks = (tmp_path / "search_log.txt").read_text(encoding="utf-8").split("\n\n")
    assert sum(1 for b in blocks if b.startswith("[")) == 100
    assert all(b.count("query / 查询") == 1 for b in blocks if b)
    # both files hold the records in the same order (without the lock, writers overtake each other between files)
    in_text = [b.split("query / 查询: ")[1].split("-长")[0] for b in blocks if b.startswith("[")]
    in_json = [json.loads(line)["query"].split("-长")[0] for line in lines]
    assert in_text == in_json


def test_replay_identical_then_reports_what_changed(tiny_features, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text((ROOT / "rules" / "expansions.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    searcher = api.open_searcher(tiny_features, rules=rules, device="cpu")
    for q in ("金毛", "雪地里的哈士奇"):
        api.search(searcher, q, k=3, log_dir=tmp_path)
    log = tmp_path / "search_log.jsonl"
    outcomes = api.replay_log(log, device="cpu")
    assert [o.identical for o in outcomes] == [True, True]

    rules.write_text(rules.read_text(encoding="utf-8").replace("en: [golden retriever, a golden retriever dog]",
                                                               "en: [a red sports car]"), encoding="utf-8")
    outcomes = api.replay_log(log, device="cpu")
    changed = outcomes[0]
    assert not changed.identical
    assert any(c.startswith("rules:") for c in changed.changes)
    assert any(c.startswith("expansions:") for c in changed.changes)
    assert changed.causes == ["rules"]
    assert outcomes[1].changes == [next(c for c in outcomes[1].changes if c.startswith("rules:"))]


def test_replay_against_other_features_names_the_change(tiny_features, small_collection, tmp_path):
    from tests.conftest import TINY_OPEN_CLIP
    from clip_retrieval.models.openclip import build_model, save_checkpoint_dir

    other_model = save_checkpoint_dir(build_model(TINY_OPEN_CLIP, seed=3), TINY_OPEN_CLIP, tmp_path / "m2")
    other = tmp_path / "other"
    api.extract_features(csv=small_collection, model="open_clip:tiny", checkpoint=str(other_model), out=other,
                         num_workers=0, device="cpu", quiet=True)
    searcher = api.open_searcher(tiny_features, rules=None, device="cpu")
    api.search(searcher, "金毛", k=5, expand=False, log_dir=tmp_path)
    outcome = api.replay_log(tmp_path / "search_log.jsonl", features=other, device="cpu")[0]
    assert not outcome.identical
    assert any(c.startswith("features:") for c in outcome.changes)
    assert any(c.startswith("model weights:") for c in outcome.changes)
    assert outcome.causes == ["weights"]  # the features changed because the weights did


def _one_search(features, log_dir, query: str = "金毛") -> dict:
    """One real search logged into ``log_dir``; returns its record as read back."""
    api.search(api.open_searcher(features, rules=None, device="cpu"), query, k=2, expand=False, log_dir=log_dir)
    return list(searchlog.read_records(log_dir / searchlog.JSON_LOG))[-1]


def test_an_append_after_a_torn_last_line_starts_a_fresh_line(tiny_features, tmp_path, caplog):
    """A crash mid-append leaves a partial line (here cut inside a Chinese character): the next record survives."""
    _one_search(tiny_features, tmp_path)
    log, text_log = tmp_path / searchlog.JSON_LOG, tmp_path / searchlog.TEXT_LOG
    whole = log.read_bytes()
    torn = whole[:whole.index("金毛".encode("utf-8")) + 1]   # one byte of a three-byte character
    log.write_bytes(torn)
    text_log.write_bytes(text_log.read_bytes()[:20])
    _one_search(tiny_features, tmp_path, "灰猫")
    assert log.read_bytes().startswith(torn + b"\n{")
    assert text_log.read_text(encoding="utf-8", errors="replace").splitlines()[1].startswith("[")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clip_retrieval.searchlog"):
        assert [r["query"] for r in searchlog.read_records(log)] == ["灰猫"]
    assert len(caplog.messages) == 1 and caplog.messages[0].startswith(f"{log} line 1: damaged")
    assert "日志第 1 行" in caplog.messages[0]


def test_records_of_a_newer_version_are_skipped_and_named(tiny_features, tmp_path, caplog):
    ours = _one_search(tiny_features, tmp_path)
    old = {k: v for k, v in ours.items() if k not in ("record_version", "backend", "collection_root")}
    variants = [dict(ours, record_version=searchlog.RECORD_VERSION + 97), dict(ours, embedding="v3"),
                dict(ours, mode="video"), old, [ours], dict(ours, record_version="2")]
    log = tmp_path / searchlog.JSON_LOG
    with open(log, "a", encoding="utf-8") as fh:
        fh.writelines(json.dumps(v, ensure_ascii=False) + "\n" for v in variants)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clip_retrieval.searchlog"):
        read = list(searchlog.read_records(log))
    assert read == [ours, old]   # ours and an older record (no version, fewer fields) are read
    assert [m.split(":")[0] for m in caplog.messages] == [f"{log} line {n}" for n in (2, 3, 4, 6, 7)]
    assert "record_version 99" in caplog.messages[0] and "update" in caplog.messages[0]
    assert "embedding" in caplog.messages[1] and "'video'" in caplog.messages[2]
    assert "not a JSON object" in caplog.messages[3] and "'2'" in caplog.messages[4]


def test_many_damaged_lines_are_named_up_to_a_limit_then_counted(tmp_path, caplog):
    log = tmp_path / searchlog.JSON_LOG
    log.write_text("{torn\n" * (searchlog.MAX_NAMED_LINES + 5), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="clip_retrieval.searchlog"):
        assert list(searchlog.read_records(log)) == []
    assert len(caplog.messages) == searchlog.MAX_NAMED_LINES + 1
    assert caplog.messages[-1].startswith("5 more lines")


def test_the_text_log_shows_the_filter_and_the_backend(tiny_features, tmp_path):
    searcher = api.open_searcher(tiny_features, rules=None, device="cpu")
    first = searcher.store.manifest.images[0]["path"].split("/")[0]
    api.search(searcher, "金毛", k=2, expand=False, log_dir=tmp_path,
               where=api.where_filter(searcher, first, None))
    block = (tmp_path / searchlog.TEXT_LOG).read_text(encoding="utf-8")
    assert "k=2" in block and "backend / 后端: exact" in block
    assert f"filter / 筛选: path_prefix={first}" in block
