"""Replay as a reviewer uses it: from any folder, through missing images and old records, naming causes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from clip_retrieval import api, cli
from clip_retrieval.logs import searchlog


@pytest.fixture()
def collection(small_collection, tmp_path) -> Path:
    """A private copy of the small collection (tests change its captions and images)."""
    shutil.copytree(small_collection.parent, tmp_path / "coll")
    return tmp_path / "coll" / "captions.csv"


def _extract(csv_path: Path, out: Path, checkpoint: Path) -> Path:
    api.extract_features(csv=csv_path, model="open_clip:tiny", checkpoint=str(checkpoint), out=out,
                         num_workers=0, device="cpu", quiet=True, rules=None)
    return out


def _records(log: Path) -> list[dict]:
    return list(searchlog.read_records(log))


def _rewrite(log: Path, records: list[dict]) -> None:
    log.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def _replace_caption(csv_path: Path, image_path: str, new: str) -> None:
    rows = list(csv.reader(open(csv_path, encoding="utf-8")))
    hits = [r for r in rows[1:] if r[0] == image_path]
    assert hits, image_path
    hits[0][1] = new
    with open(csv_path, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows)


@pytest.mark.slow  # extracts its own collection twice
def test_replay_from_another_folder_with_absolute_features_is_identical(collection, tiny_open_clip, tmp_path,
                                                                        monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    _extract(collection, Path("feats"), tiny_open_clip)  # typed relative, as a user does
    searcher = api.open_searcher("feats", rules=None, device="cpu")
    api.search(searcher, "金毛", k=5, expand=False)
    api.search(searcher, image=str(collection.parent / "images" / "husky_snow_00.png"), k=3, to="text")
    record = _records(work / "feats" / searchlog.JSON_LOG)[0]
    assert Path(record["features_dir"]).is_absolute()
    assert not Path(record["results"][0]["path"]).is_absolute()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    log = work / "feats" / searchlog.JSON_LOG
    assert cli.main(["replay", "--log", str(log), "--device", "cpu"]) == 0
    assert cli.main(["replay", "--log", str(log), "--features", str(work / "feats"), "--device", "cpu"]) == 0
    assert "2/2 identical" in capsys.readouterr().out


def test_missing_query_image_is_not_replayable_and_replay_goes_on(tiny_features, small_collection, tmp_path,
                                                                  capsys):
    query = tmp_path / "upload.png"
    shutil.copy(small_collection.parent / "images" / "husky_snow_00.png", query)
    changed = tmp_path / "changed.png"
    shutil.copy(small_collection.parent / "images" / "husky_snow_00.png", changed)
    searcher = api.open_searcher(tiny_features, rules=None, device="cpu")
    api.search(searcher, image=str(query), k=3, log_dir=tmp_path)
    api.search(searcher, image=str(changed), k=3, log_dir=tmp_path)
    api.search(searcher, "金毛", k=3, expand=False, log_dir=tmp_path)
    query.unlink()  # the web page deletes its uploads
    shutil.copy(small_collection.parent / "images" / "grey_cat_grass_00.png", changed)

    log = tmp_path / searchlog.JSON_LOG
    assert cli.main(["replay", "--log", str(log), "--json", "--device", "cpu"]) == 3
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["status"] for r in rows] == ["not replayable", "not replayable", "identical"]
    assert "missing" in rows[0]["reason"] and str(query) in rows[0]["reason"]
    assert "changed" in rows[1]["reason"] and "sha256" in rows[1]["reason"]


@pytest.mark.slow  # extracts its own collection twice
def test_changed_caption_is_flagged_and_named(collection, tiny_open_clip, tmp_path):
    feats = _extract(collection, tmp_path / "feats", tiny_open_clip)
    searcher = api.open_searcher(feats, rules=None, device="cpu")
    text, _ = api.search(searcher, "金毛", k=6, expand=False)
    query_image = str(collection.parent / "images" / "husky_snow_00.png")
    to_text, _ = api.search(searcher, image=query_image, k=5, to="text")
    root = collection.parent
    _replace_caption(collection, str(Path(text.results[3].image_path).resolve().relative_to(root)), "一只改过的狗")
    _replace_caption(collection, str(Path(to_text.results[0].image_path).resolve().relative_to(root)), "改过的描述")
    _extract(collection, feats, tiny_open_clip)

    text_outcome, caption_outcome = api.replay_log(feats / searchlog.JSON_LOG, device="cpu")
    assert text_outcome.status == "different" and text_outcome.causes == ["captions"]
    assert any(c.startswith("caption at rank 4") for c in text_outcome.changes)
    assert caption_outcome.status == "different" and caption_outcome.causes == ["captions"]
    assert any(c.startswith("ranking:") for c in caption_outcome.changes)


@pytest.mark.slow  # extracts its own collection twice
def test_changed_image_is_named(collection, tiny_open_clip, tmp_path):
    feats = _extract(collection, tmp_path / "feats", tiny_open_clip)
    api.search(api.open_searcher(feats, rules=None, device="cpu"), "金毛", k=32, expand=False)
    shutil.copy(collection.parent / "images" / "grey_cat_grass_00.png", collection.parent / "images" / "husky_snow_00.png")
    _extract(collection, feats, tiny_open_clip)
    outcome = api.replay_log(feats / searchlog.JSON_LOG, device="cpu")[0]
    assert outcome.status == "different" and outcome.causes == ["images"]
    assert any(c.startswith("features:") for c in outcome.changes)


def test_same_inputs_other_order_is_ranking_only(tiny_features, tmp_path):
    api.search(api.open_searcher(tiny_features, rules=None, device="cpu"), "灰猫", k=5, expand=False,
               log_dir=tmp_path)
    log = tmp_path / searchlog.JSON_LOG
    record = _records(log)[0]
    a, b = record["results"][:2]
    record["results"][:2] = [dict(b, rank=1), dict(a, rank=2)]
    _rewrite(log, [record])
    outcome = api.replay_log(log, device="cpu")[0]
    assert outcome.status == "different" and outcome.causes == ["ranking only"]
    assert outcome.changes[0].startswith("ranking: first differs at rank 1")


def test_old_records_replay_from_elsewhere_with_cause_unknown(tiny_features, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_features.parent)
    searcher = api.open_searcher(tiny_features.name, rules=None, device="cpu")
    api.search(searcher, "金毛", k=4, expand=False, log_dir=tmp_path)
    new = _records(tmp_path / searchlog.JSON_LOG)[0]
    old = {key: new[key] for key in ("time", "mode", "to", "fuse", "image", "image_sha256", "text_weight", "query",
                                     "expand", "expansions", "k", "model", "model_fingerprint",
                                     "features_fingerprint", "rules_path", "rules_sha256", "tool_version")}
    old["features_dir"] = tiny_features.name  # today's records: the folder as typed
    old["results"] = [{k: h[k] for k in ("rank", "score", "image_path", "caption")} for h in new["results"]]
    tampered = dict(old, results=[dict(old["results"][1], rank=1), dict(old["results"][0], rank=2),
                                  *old["results"][2:]])
    log = tiny_features / "old_log.jsonl"  # old logs sat in their features folder
    _rewrite(log, [old, tampered])
    monkeypatch.chdir(tmp_path)
    same, changed = api.replay_log(log, device="cpu")
    assert same.status == "identical", same.changes
    assert changed.status == "different" and changed.causes == ["cause unknown"]
    log.unlink()


def test_bad_input_exits_2(tmp_path, capsys):
    assert cli.main(["replay", "--log", str(tmp_path / "nothing.jsonl")]) == 2
    assert "nothing.jsonl" in capsys.readouterr().err
    (tmp_path / "ok.jsonl").write_text("", encoding="utf-8")
    assert cli.main(["replay", "--log", str(tmp_path / "ok.jsonl"), "--features", str(tmp_path / "nofeats")]) == 2
    assert "nofeats" in capsys.readouterr().err


def _log_of(features: Path, log_dir: Path, *searches: dict) -> list[dict]:
    """Real searches on ``features`` logged into ``log_dir``; their records as read back."""
    searcher = api.open_searcher(features, rules=None, device="cpu")
    for kwargs in searches:
        api.search(searcher, k=4, expand=False, log_dir=log_dir, **kwargs)
    return _records(log_dir / searchlog.JSON_LOG)


def test_damaged_and_newer_lines_are_not_replayable_and_replay_goes_on(tiny_features, tmp_path, capsys):
    first, second = _log_of(tiny_features, tmp_path, {"query": "金毛"}, {"query": "灰猫"})
    log = tmp_path / searchlog.JSON_LOG
    newer = dict(first, record_version=99, mode="video", embedding="v3")
    log.write_text(json.dumps(first, ensure_ascii=False) + "\n" + '{"time": "2026-03-01T09:00:00+08:00", "que\n'
                   + json.dumps(second, ensure_ascii=False) + "\n" + json.dumps(newer, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    assert cli.main(["replay", "--log", str(log), "--json", "--device", "cpu"]) == 3
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["status"] for r in rows] == ["identical", "not replayable", "identical", "not replayable"]
    assert [r["line"] for r in rows] == [None, 2, None, 4]
    assert "line 2: damaged" in rows[1]["reason"] and "record_version 99" in rows[3]["reason"]
    assert rows[3]["query"] == "金毛" and not rows[3]["identical"]
    assert [line.split(": ")[0] for line in err.splitlines()] == [f"{log} line 2", f"{log} line 4"]
    assert cli.main(["replay", "--log", str(log), "--device", "cpu"]) == 3
    out = capsys.readouterr().out
    assert "line 2: not replayable" in out and "2/4 identical" in out and "2 not replayable" in out


def test_score_drift_with_the_same_ranking_is_reported(tiny_features, tmp_path):
    record = _log_of(tiny_features, tmp_path, {"query": "灰猫"})[0]
    log = tmp_path / searchlog.JSON_LOG
    below = dict(record, results=[dict(h, score=h["score"] + searchlog.SCORE_TOLERANCE / 2) for h in record["results"]])
    drifted = dict(record, results=[dict(h, score=h["score"] + (0.02 if h["rank"] == 2 else 0.0))
                                    for h in record["results"]])
    _rewrite(log, [below, drifted])
    same, changed = api.replay_log(log, device="cpu")
    assert same.status == "identical", same.changes   # rounding is not drift
    assert changed.status == "different" and changed.causes == ["ranking only"]
    assert changed.changes == ["scores: same ranking, largest score change 0.020000"]


def test_an_index_backend_change_is_named_as_the_cause(tiny_features, tmp_path):
    record = _log_of(tiny_features, tmp_path, {"query": "金毛"})[0]
    assert record["backend"] == "exact"
    log = tmp_path / searchlog.JSON_LOG
    record["backend"] = "faiss"   # as if searched through an approximate index that missed the best match
    record["results"][:2] = [dict(record["results"][1], rank=1), dict(record["results"][0], rank=2)]
    _rewrite(log, [record])
    outcome = api.replay_log(log, device="cpu")[0]
    assert outcome.status == "different" and outcome.causes == ["index"]
    assert outcome.changes[0] == "index backend: faiss -> exact"


def _to_text_record(features: Path, collection: Path, log_dir: Path) -> dict:
    image = str(collection.parent / "images" / "husky_snow_00.png")
    return _log_of(features, log_dir, {"image": image, "to": "text"})[0]


def test_image_to_text_hits_are_compared_by_caption_and_image_not_row(tiny_features, small_collection, tmp_path):
    record = _to_text_record(tiny_features, small_collection, tmp_path)
    assert record["to"] == "text" and len({h["caption"] for h in record["results"]}) == 4
    log = tmp_path / searchlog.JSON_LOG
    shifted = dict(record, results=[dict(h, row=h["row"] + 1) for h in record["results"]])  # a row deleted above
    recaptioned = dict(record, results=[dict(record["results"][0], caption="一只改过的狗"), *record["results"][1:]])
    other_image = dict(record, results=[dict(record["results"][0], path=record["results"][1]["path"]),
                                        *record["results"][1:]])
    _rewrite(log, [shifted, recaptioned, other_image])
    same, caption, image = api.replay_log(log, device="cpu")
    assert same.status == "identical", same.changes
    assert caption.status == "different" and caption.changes[0].startswith("ranking: first differs at rank 1: 一只改过的狗 ->")
    assert image.status == "different" and image.changes[0].startswith("ranking: first differs at rank 1:")


def test_after_an_image_is_deleted_the_cause_is_images_not_captions(tiny_features, small_collection, tmp_path):
    """As logged before a deletion: a best hit whose image (and caption row) is gone, every later row one higher."""
    record = _to_text_record(tiny_features, small_collection, tmp_path)
    text = _log_of(tiny_features, tmp_path, {"query": "哈士奇"})[-1]
    gone = {"rank": 1, "score": 0.99, "image_path": str(small_collection.parent / "images" / "husky_snow_01.png"),
            "path": "images/husky_snow_01.png", "caption": "雪地里的哈士奇", "row": 2}
    before = {"features_fingerprint": "0" * 16, "caption_features_fingerprint": "1" * 16, "captions_sha256": "2" * 64}
    deleted = dict(record, **before, results=[gone, *[dict(h, rank=h["rank"] + 1, row=h["row"] + 1)
                                                      for h in record["results"][:-1]]])
    text_deleted = dict(text, **before, results=[dict(gone, caption=text["results"][0]["caption"]),
                                                 *[dict(h, rank=h["rank"] + 1) for h in text["results"][:-1]]])
    changed_caption = dict(deleted, results=[dict(h, caption="改过的描述") if h["rank"] == 2 else h
                                             for h in deleted["results"]])
    log = tmp_path / searchlog.JSON_LOG
    _rewrite(log, [deleted, text_deleted, changed_caption])
    to_text, to_images, recaptioned = api.replay_log(log, device="cpu")
    assert to_text.status == "different" and to_text.causes == ["images"], to_text.changes
    assert to_images.status == "different" and to_images.causes == ["images"], to_images.changes
    assert recaptioned.causes == ["images", "captions"]   # a kept image lost its caption: captions too


@pytest.mark.slow  # extracts its own collection twice
def test_deleting_an_image_and_its_captions_names_images_only(collection, tiny_open_clip, tmp_path):
    """Issue 22.5 end to end: rows below the deleted ones shift, the captions of kept images do not change."""
    feats = _extract(collection, tmp_path / "feats", tiny_open_clip)
    root = collection.parent
    query = tmp_path / "query.png"
    shutil.copy(root / "images" / "husky_snow_00.png", query)
    searcher = api.open_searcher(feats, rules=None, device="cpu")
    to_text, _ = api.search(searcher, image=str(query), k=6, to="text")
    _, text_record = api.search(searcher, "哈士奇", k=6, expand=False)
    deleted = str(Path(to_text.results[0].image_path).resolve().relative_to(root))
    rows = list(csv.reader(open(collection, encoding="utf-8")))
    kept = [r for r in rows if r[0] != deleted]
    assert len(kept) < len(rows) and rows.index([r for r in rows if r[0] == deleted][0]) < len(rows) - 1
    with open(collection, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(kept)
    (root / deleted).unlink()
    _extract(collection, feats, tiny_open_clip)

    image_to_text, text = api.replay_log(feats / searchlog.JSON_LOG, device="cpu")
    assert image_to_text.status == "different" and image_to_text.causes == ["images"], image_to_text.changes
    ranking = next(c for c in image_to_text.changes if c.startswith("ranking:"))
    assert ranking.startswith(f"ranking: first differs at rank 1: {to_text.results[0].caption} -> "
                              f"{to_text.results[1].caption}")
    shown = any(h["path"] == deleted for h in text_record["results"])
    assert (text.status, text.causes) == (("different", ["images"]) if shown else ("identical", [])), text.changes
