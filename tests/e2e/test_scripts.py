"""The two scripts as a user runs them, over a small generated collection.

``python -m scripts.extract_embeddings`` is ``clipsou extract`` and ``scripts.search_demo`` is
``clipsou search`` (``cli.run_subcommand``), so most checks call the CLI in-process; one runs a
real subprocess for what only a process shows (exit status, a single stderr line, no traceback).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run


@pytest.fixture(scope="module")
def messy_collection(tmp_path_factory, small_collection) -> Path:
    """The small collection plus the files real folders contain: broken, huge, CMYK, palette, 16-bit."""
    root = tmp_path_factory.mktemp("messy")
    shutil.copytree(small_collection.parent / "images", root / "images")
    rows = small_collection.read_text(encoding="utf-8").splitlines()
    good = Image.open(root / "images" / "piglet_grass_00.png")
    data = (root / "images" / "husky_snow_00.png").read_bytes()
    (root / "images" / "broken.png").write_bytes(data[: len(data) // 3])
    Image.new("L", (12000, 9000)).save(root / "images" / "bomb.png")
    good.convert("CMYK").save(root / "images" / "cmyk.jpg")
    good.convert("P").save(root / "images" / "palette.png")
    rows += ["images/broken.png,坏图", "images/bomb.png,超大图", "images/cmyk.jpg,草地上的小猪 CMYK",
             "images/palette.png,\"草地上的小猪, 调色板\""]
    path = root / "captions.csv"
    path.write_bytes(("\n".join(rows) + "\n").encode("gb18030"))
    return path


def test_extract_then_search_then_replay(messy_collection, tiny_open_clip, tmp_path, cli, caplog):
    out = tmp_path / "out"
    proc = cli("extract", "--csv", str(messy_collection), "--model", "open_clip:tiny",
               "--checkpoint", str(tiny_open_clip), "--out", str(out), "--batch-size", "8", "--num-workers", "2",
               "--max-pixels", "50000000")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"] == {"images": 34, "captions": 34, "skipped": 2}
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert "too many pixels" in reasons["images/bomb.png"]
    assert "truncated" in reasons["images/broken.png"] or "corrupt" in reasons["images/broken.png"]
    assert "images/broken.png" in proc.stderr and "34 images" in proc.stdout
    assert proc.stderr.count("images/broken.png") == 1 and not [r for r in caplog.records if "broken" in r.getMessage()
                                                                 and r.levelno >= logging.WARNING]
    assert "encoded 34 images" in proc.stdout   # the two skipped files are not counted as encoded
    assert re.search(r"captions / 文本: 100%.* 34/34 ", proc.stderr)   # the bar counts captions, not distinct texts
    assert manifest["source"]["encoding"] == "gb18030" and len(manifest["source"]["csv_sha256"]) == 64
    assert all(len(i["sha256"]) == 64 for i in manifest["images"])
    assert manifest["model"]["name"] == "open_clip:tiny" and manifest["model"]["fingerprint"].startswith("sha256:")

    proc = cli("search", "--features", str(out), "--query", "草地上的小猪", "--top-k", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert {"query", "expansions", "model", "results", "expansions_by_language", "normalized_query"} <= set(obj)
    assert obj["query"] == "草地上的小猪" and "piglet on the grass" in obj["expansions"]
    assert not any("piglet" in e and "小猪" in e for e in obj["expansions"])      # no mixed-script phrasing
    assert [r["rank"] for r in obj["results"]] == [1, 2, 3]
    assert set(obj["results"][0]) == {"rank", "score", "image_path", "caption", "relevant", "band", "band_zh"}

    proc = cli("search", "--features", str(out), "--no-expand", "--top-k", "2",
               stdin="灰猫\n\n雪地里的哈士奇\nexit\n这一行不会被搜索\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("查询 / query:") == 2 and "empty query" in proc.stderr
    records = [json.loads(line) for line in (out / "search_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["query"] for r in records] == ["草地上的小猪", "灰猫", "雪地里的哈士奇"]
    assert records[1]["expand"] is False and records[1]["rules_sha256"] is None

    proc = cli("replay", "--log", str(out / "search_log.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert "3/3 identical" in proc.stdout


def test_bad_input_exit_2_one_line_and_outputs_untouched(tiny_features, tiny_open_clip, tmp_path, cli):
    out = tmp_path / "out"
    shutil.copytree(tiny_features, out, ignore=shutil.ignore_patterns("search_log*"))   # others search the shared one
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.csv"
    bad.write_text("image_path,caption\nnope.png,狗\n", encoding="utf-8")
    proc = run("scripts.extract_embeddings", "--csv", str(bad), "--model", "open_clip:tiny",
               "--checkpoint", str(tiny_open_clip), "--out", str(out), "--quiet")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "bad.csv line 2: image not found" in proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    proc = cli("search", "--features", str(out), "--query", "  ")
    assert proc.returncode == 2 and "empty query" in proc.stderr
    assert not (out / "search_log.jsonl").exists()
    proc = cli("search", "--features", str(out), "--query", "狗", "--model", "cn_clip:ViT-B-16")
    assert proc.returncode == 2 and "rebuild" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("search", "--features", str(tmp_path / "missing"), "--query", "狗")
    assert proc.returncode == 2 and "clipsou extract" in proc.stderr
    proc = cli("search", "--top-k", "many")
    assert proc.returncode == 2 and "invalid int value" in proc.stderr


def test_images_folder_mode(small_collection, tiny_open_clip, tmp_path, cli):
    out = tmp_path / "out"
    folder = tmp_path / "images"
    shutil.copytree(small_collection.parent / "images", folder)
    (folder / "empty.png").write_bytes(b"")
    (folder / "IMG_0001.HEIC").write_bytes(b"an iPhone photo")
    (folder / "mockup.psd").write_bytes(b"a Photoshop file")
    (folder / "broken.png").write_bytes((folder / "piglet_grass_00.png").read_bytes()[:200])
    os.symlink("/nonexistent", folder / "broken_link.jpg")
    os.symlink(folder / "loopb", folder / "loopa")
    os.symlink(folder / "loopa", folder / "loopb")
    proc = cli("extract", "--images", str(folder), "--model",
               "open_clip:tiny", "--checkpoint", str(tiny_open_clip), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["images"] == 32 and manifest["counts"]["captions"] == 0
    assert {s["path"]: s["reason"] for s in manifest["skipped"]}["empty.png"].startswith("empty file (0 bytes)")
    assert "skipped / 跳过: empty.png: empty file (0 bytes); copy it again or delete it" in proc.stderr and "row 0" not in proc.stderr
    assert "skipped / 跳过: broken_link.jpg: 符号链接失效或循环 / broken or looping symbolic link" in proc.stderr
    assert manifest["skipped"][-1]["path"] == "broken_link.jpg" and manifest["counts"]["skipped"] == 4
    # HEIC is read (the heic extra is in dev), so a file that only has the name is skipped as damaged
    assert "skipped / 跳过: IMG_0001.HEIC: not a readable image: damaged, cut short, or not really a .heic file" \
        in proc.stderr
    assert all("row" not in entry for entry in manifest["skipped"])   # folder mode has no CSV line
    assert "encoded 32 images" in proc.stdout
    assert "files of other types not read: 1 (.psd 1); convert the photos among them to JPEG or PNG" in proc.stderr
    assert manifest["source"]["ignored_types"] == {".psd": 1}
    proc = cli("search", "--features", str(out), "--query", "金毛", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["caption"] == ""


def test_bad_rows_refused_or_skipped_and_listed(small_collection, tiny_open_clip, tmp_path, cli):
    rows = small_collection.read_text(encoding="utf-8").splitlines()
    rows[3:3] = ['images/piglet_grass_00.png,"引号没有闭合', rows[1], "images/piglet_grass_00.png,a,b,c,d"]
    csv_path = small_collection.parent / "bad_rows.csv"
    csv_path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = ["extract", "--csv", csv_path, "--model", "open_clip:tiny", "--checkpoint", tiny_open_clip,
            "--out", tmp_path / "out", "--quiet", "--num-workers", "0", "--rules", tmp_path / "no_rules.yaml"]
    proc = cli(*args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert f"{csv_path} line 4: a quote opened on this line is not closed" in proc.stderr
    assert not (tmp_path / "out").exists()
    proc = cli(*args, "--skip-bad-rows")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert [b["line"] for b in manifest["source"]["bad_rows"]] == [4, 6]
    assert manifest["source"]["duplicate_rows"] == {"count": 1, "lines": [5]}
    assert manifest["counts"]["captions"] == 32
    assert proc.stderr.count("line 4") == 1 and proc.stderr.count("line 6") == 1
    assert proc.stderr.count("duplicate rows ignored") == 1


def test_demo_model_on_photos_says_once_it_only_knows_the_drawings(small_collection, tmp_path, cli, caplog):
    folder = tmp_path / "photos"
    folder.mkdir()
    for n, name in enumerate(["IMG_0001.jpg", "IMG_0002.jpg", "husky_snow_00.png"]):
        shutil.copy(small_collection.parent / "images" / "husky_snow_00.png", folder / name)
    (folder / "IMG_0003.jpg").write_bytes(b"")   # skipped as unreadable: not one of the photos counted
    proc = cli("extract", "--images", folder, "--model", "demo", "--out", tmp_path / "out", "--quiet",
               "--num-workers", "0")
    assert proc.returncode == 0, proc.stderr
    notes = [r.getMessage() for r in caplog.records if "only knows the bundled drawings" in r.getMessage()]
    assert len(notes) == 1 and "2 of 3 images" in notes[0]
    # the user reads the warning itself on stderr, not the logger's level and name
    assert [line for line in proc.stderr.splitlines() if "bundled drawings" in line] == [notes[0]]
    assert "WARNING" not in proc.stderr and "clip_retrieval.api" not in proc.stderr
    proc = cli("extract", "--images", folder, "--model", "demo", "--out", tmp_path / "out", "--quiet",
               "--num-workers", "0", "--verbose")
    assert proc.returncode == 0 and f"WARNING clip_retrieval.api: {notes[0]}" in proc.stderr   # --verbose names it
    caplog.clear()
    proc = cli("extract", "--csv", small_collection, "--model", "demo", "--out", tmp_path / "demo_out", "--quiet",
               "--num-workers", "0")
    assert proc.returncode == 0 and not [r for r in caplog.records if "bundled drawings" in r.getMessage()]
