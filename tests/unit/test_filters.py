"""Search filters that match nothing say so: ``--where-path`` and ``--where-caption`` on the tiny model's features.

Every case here used to print an empty table with exit 0 (issue 21 item 8, issue 25 item 4).
"""

from __future__ import annotations

import json

import pytest


def _search(cli, features, tmp_path, *flags):
    return cli("search", "--features", features, "-q", "金毛", "--no-expand", "--json", "-k", "40",
               "--log-dir", tmp_path, *flags)


def test_a_folder_relative_to_the_working_folder_is_the_same_filter(cli, tiny_features, small_collection, tmp_path,
                                                                     monkeypatch):
    """``../images`` typed from inside the collection names the collection's images/ folder."""
    monkeypatch.chdir(small_collection.parent / "images")
    ran = _search(cli, tiny_features, tmp_path, "--where-path", "../images")
    assert ran.returncode == 0, ran.stderr
    results = json.loads(ran.stdout)["results"]
    assert len(results) == 32   # paths are shown relative to the working folder, so no "images/" before them
    record = json.loads((tmp_path / "search_log.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert record["where"] == {"path_prefix": "images"}


@pytest.mark.parametrize("flags, says", [
    (["--where-path", "imgs"], "--where-path imgs: no such folder in the collection (a folder relative to its root, "
                               "to the working folder, or absolute); nearest folders: images"),
    (["--where-path", "images/golden_retriever"], "--where-path images/golden_retriever: it is not a folder, though "
                                                  "4 image paths start with it; --where-path takes a folder (e.g. images)"),
    (["--where-path", "ima"], "--where-path ima: no such folder; folders whose names start with it: images"),
    (["--where-caption", "不存在的词"], "--where-caption '不存在的词': no caption contains it"),
    (["--where-path", "images", "--where-caption", "金毛在海边的月亮上"], "no caption contains it"),
])
def test_a_filter_that_matches_nothing_is_one_line_and_exit_2(cli, tiny_features, tmp_path, flags, says):
    ran = _search(cli, tiny_features, tmp_path, *flags)
    assert ran.returncode == 2 and ran.stdout == ""
    line, = ran.stderr.strip().splitlines()
    assert line.startswith("clipsou: 筛选条件没有匹配任何图片 / no image in the collection matches ") and says in line
    assert not (tmp_path / "search_log.jsonl").exists()   # nothing was searched, so nothing is logged


def test_caption_filter_on_a_folder_collection_says_it_has_no_captions(cli, tiny_open_clip, small_collection,
                                                                       tmp_path):
    out = tmp_path / "features"
    assert cli("extract", "--images", small_collection.parent / "images", "--model", "open_clip:tiny",
               "--checkpoint", tiny_open_clip, "--out", out, "--device", "cpu", "--num-workers", "0",
               "--quiet").returncode == 0
    ran = _search(cli, out, tmp_path, "--where-caption", "金毛")
    assert ran.returncode == 2
    assert "--where-caption '金毛': this collection has no captions (it was indexed from a folder)" in ran.stderr
