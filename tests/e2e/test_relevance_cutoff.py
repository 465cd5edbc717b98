"""The relevance cutoff as a user meets it: clipsou search on a collection lacking a subject, --all,
--json, image queries, batch search, the search log, and a random-weight model."""

import json

import pytest

from clip_retrieval import api
from clip_retrieval.collection.generated import SCENES, SUBJECTS, make_collection


@pytest.fixture(scope="module")
def no_husky(tmp_path_factory):
    """The demo model over pictures of every subject but the husky (one per subject and scene)."""
    root = tmp_path_factory.mktemp("no_husky")
    pairs = {(s.key, c.key) for s in SUBJECTS if s.key != "husky" for c in SCENES}
    csv = make_collection(root, per_pair=2, seed=2500, pairs=pairs, english=True)
    api.extract_features(csv=csv, model="demo", out=root / "out", quiet=True, num_workers=0, rules=None)
    return root


def test_absent_subject_shows_nothing_relevant_and_the_closest_few(cli, no_husky, tmp_path):
    ran = cli("search", "哈士奇", "--features", no_husky / "out", "--log-dir", tmp_path, "--quiet")
    assert ran.returncode == 0, ran.stderr
    assert "nothing relevant" in ran.stdout and "没有相关结果" in ran.stdout
    assert ran.stdout.count("低/low") == 3          # the closest three, marked


def test_present_subject_shows_its_hits_and_counts_the_rest(cli, no_husky, tmp_path):
    ran = cli("search", "雪地里的黑猫", "-k", "8", "--features", no_husky / "out", "--log-dir", tmp_path)
    assert ran.returncode == 0, ran.stderr
    shown = [line for line in ran.stdout.splitlines() if "black_cat_snow" in line]
    assert len(shown) == 2 and all("/low" not in line for line in shown)
    assert "more below the cutoff: --all" in ran.stdout and "相关度较低" in ran.stdout
    every = cli("search", "雪地里的黑猫", "-k", "8", "--all", "--features", no_husky / "out", "--log-dir", tmp_path)
    assert sum(line.strip()[:1].isdigit() for line in every.stdout.splitlines()) == 8
    assert "below the cutoff" not in every.stdout


def test_json_and_the_log_carry_every_hit_with_its_flags(cli, no_husky, tmp_path):
    ran = cli("search", "哈士奇", "--json", "--features", no_husky / "out", "--log-dir", tmp_path)
    out = json.loads(ran.stdout)
    assert len(out["results"]) == 5 and not any(h["relevant"] for h in out["results"])
    assert {h["band"] for h in out["results"]} == {"low"} and out["results"][0]["band_zh"] == "低"
    assert out["relevance"]["source"] == "captions"
    record = json.loads((tmp_path / "search_log.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert record["results"][0]["band"] == "low" and record["results"][0]["relevant"] is False
    assert "[low]" in (tmp_path / "search_log.txt").read_text(encoding="utf-8")
    replay = cli("replay", "--log", tmp_path / "search_log.jsonl")
    assert replay.returncode == 0, replay.stdout


def test_every_mode_and_batch_carry_flags(cli, no_husky, tmp_path):
    image = next((no_husky / "images").glob("black_cat_snow_00.png"))
    modes = [("--image", image), ("--image", image, "--to", "text"), ("--image", image, "--query", "雪地里的黑猫"),
             ("--query", "黑猫", "--fuse")]
    for args in modes:
        out = json.loads(cli("search", *args, "--json", "--features", no_husky / "out", "--log-dir", tmp_path).stdout)
        assert out["results"][0]["relevant"] is True, args
    queries = tmp_path / "q.txt"
    queries.write_text("黑猫\n哈士奇\n", encoding="utf-8")
    lines = cli("search", "--queries", queries, "--features", no_husky / "out", "--log-dir", tmp_path).stdout
    first, second = [json.loads(line) for line in lines.splitlines()]
    assert first["results"][0]["relevant"] and not any(h["relevant"] for h in second["results"])


def test_random_weights_say_nothing_relevant_in_one_line(cli, tiny_features, tmp_path):
    ran = cli("search", "金毛", "--features", tiny_features, "--log-dir", tmp_path)
    assert ran.returncode == 0, ran.stderr
    lines = [line for line in ran.stdout.splitlines() if "nothing relevant" in line]
    assert len(lines) == 1 and "random or wrong weights" in lines[0]
    assert ".png" not in ran.stdout                  # no arbitrary pictures


def test_the_page_shows_the_relevant_hits_and_all_on_request(no_husky, tmp_path):
    import shutil

    from clip_retrieval.query.expansion import DEFAULT_RULES, find_rules
    from clip_retrieval.web import Page

    features = tmp_path / "f"
    shutil.copytree(no_husky / "out", features)
    page = Page(str(features), str(find_rules(DEFAULT_RULES)), device="cpu")
    status, gallery = page.text_search("雪地里的黑猫", True, 8)
    assert len(gallery) == 2 and all("black_cat_snow" in caption for _, caption in gallery)
    assert "6 more below the cutoff" in status and ("中/medium" in gallery[0][1] or "高/high" in gallery[0][1])
    status, gallery = page.text_search("雪地里的黑猫", True, 8, True)
    assert len(gallery) == 8 and "below the cutoff" not in status
    status, gallery = page.text_search("哈士奇", True, 8)
    assert len(gallery) == 3 and "nothing relevant" in status and all("低/low" in c for _, c in gallery)
