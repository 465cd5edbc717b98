"""The search log under concurrent writers, and replay."""

from __future__ import annotations

import json
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
