"""Image-to-image, image-to-text, image+text, fusion, dedup, zero-shot classification, batch and grids,
with the offline demo model on generated pictures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from clip_retrieval import api
from clip_retrieval.logs import searchlog
from clip_retrieval.core.errors import InputError

from tests.conftest import ROOT, RULES


@pytest.fixture
def demo(demo_collection):
    """The session's demo collection (demo data plus ``husky_snow_copy.png``, a second copy of one picture)."""
    return demo_collection


def test_image_to_image_excludes_the_query_and_its_copies(demo):
    searcher = api.open_searcher(demo / "out", rules=RULES)
    result = searcher.search_image(demo / "images" / "husky_snow_00.png", k=3)
    paths = [Path(h.image_path).name for h in result.results]
    assert "husky_snow_00.png" not in paths and "husky_snow_copy.png" not in paths
    assert paths[0] == "husky_snow_01.png"
    assert all(p.startswith("husky_") for p in paths)
    outside = demo / "query.png"
    shutil.copy(demo / "images" / "piglet_beach_00.png", outside)   # same content, not indexed under this path
    found = searcher.search_image(outside, k=3)
    names = [Path(h.image_path).name for h in found.results]
    assert "piglet_beach_00.png" not in names and all(n.startswith("piglet_") for n in names)
    # hidden from the ranking, but said: the copy already in the collection is named
    assert [Path(p).name for p in found.excluded] == ["piglet_beach_00.png"]
    assert [Path(p).name for p in found.to_json()["excluded"]] == ["piglet_beach_00.png"]
    assert sorted(Path(p).name for p in result.excluded) == ["husky_snow_00.png", "husky_snow_copy.png"]


def test_the_cli_names_the_excluded_copy(demo, cli, tmp_path):
    ran = cli("search", "--features", str(demo / "out"), "--image", str(demo / "images" / "husky_snow_00.png"),
              "-k", "2", "--log-dir", str(tmp_path))
    assert ran.returncode == 0, ran.stderr
    line = next(x for x in ran.stdout.splitlines() if x.startswith("已排除"))
    assert "husky_snow_00.png" in line and "husky_snow_copy.png" in line


def test_image_to_text_returns_captions(demo):
    searcher = api.open_searcher(demo / "out", rules=RULES)
    result = searcher.search_image(demo / "images" / "grey_cat_beach_01.png", k=3, to="text")
    assert result.to == "text" and len(result.results) == 3
    assert all("灰猫" in h.caption or "grey cat" in h.caption for h in result.results)


def test_image_plus_text_moves_the_scene(demo):
    searcher = api.open_searcher(demo / "out", rules=RULES)
    plain = [Path(h.image_path).name for h in searcher.search_image(demo / "images" / "husky_snow_00.png", k=3).results]
    mixed = searcher.search_image(demo / "images" / "husky_snow_00.png", k=3, text="海边", text_weight=0.5)
    names = [Path(h.image_path).name for h in mixed.results]
    assert plain[0].startswith("husky_snow")
    assert all("_beach_" in n for n in names) and any(n.startswith("husky_beach") for n in names)
    assert mixed.mode == "image+text" and mixed.query == "海边"
    with pytest.raises(InputError, match="text-weight"):
        searcher.search_image(demo / "images" / "husky_snow_00.png", text="海边", text_weight=1.5)


def test_fusion_merges_image_and_caption_rankings(demo):
    searcher = api.open_searcher(demo / "out", rules=RULES)
    fused = searcher.search_text("雪地里的哈士奇", k=3, fuse=True)
    assert fused.fuse and all(0 < h.score <= 2 / 61 + 1e-9 for h in fused.results)
    assert all(Path(h.image_path).name.startswith("husky_snow") for h in fused.results)


def test_modes_are_logged_and_replay_identical(demo, tmp_path):
    searcher = api.open_searcher(demo / "out", rules=RULES)
    api.search(searcher, image=demo / "images" / "rabbit_night_00.png", k=3, log_dir=tmp_path)
    api.search(searcher, "夜晚", image=demo / "images" / "rabbit_grass_00.png", k=3, log_dir=tmp_path)
    api.search(searcher, image=demo / "images" / "rabbit_night_00.png", to="text", k=3, log_dir=tmp_path)
    api.search(searcher, "兔子", fuse=True, k=3, log_dir=tmp_path)
    records = list(searchlog.read_records(tmp_path / "search_log.jsonl"))
    assert [r["mode"] for r in records] == ["image", "image+text", "image", "text"]
    assert records[2]["to"] == "text" and records[3]["fuse"] is True and len(records[0]["image_sha256"]) == 64
    assert [o.identical for o in api.replay_log(tmp_path / "search_log.jsonl")] == [True] * 4
    text = (tmp_path / "search_log.txt").read_text(encoding="utf-8")
    assert "image query / 以图搜" in text
    # the picture of "this picture, but at night" is in the block too, not only in the .jsonl
    assert f"image / 图片: {(demo / 'images' / 'rabbit_grass_00.png').resolve()}" in text


def test_dedup_groups_the_copy(demo, cli):
    groups = api.dedup(demo / "out", threshold=0.999)
    names = [sorted(Path(i["path"]).name for i in g) for g in groups]
    assert ["husky_snow_00.png", "husky_snow_copy.png"] in names
    assert all(i["similarity"] >= 0.999 for g in groups for i in g)
    proc = cli("dedup", "--features", demo / "out", "--threshold", "0.999", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["groups"] == json.loads(json.dumps(groups))


@pytest.mark.parametrize("image, labels, expected", [
    ("husky_snow_00.png", "哈士奇,小猪,灰猫,金毛", "哈士奇"),
    ("piglet_grass_01.png", "哈士奇,小猪,灰猫,金毛", "小猪"),
    ("red_car_night_00.png", "红色汽车，兔子，橘猫", "红色汽车"),
    ("grey_cat_beach_00.png", "灰猫,橘猫,黑猫", "灰猫"),
])
def test_zero_shot_classification_with_the_demo_model(demo, image, labels, expected, cli):
    proc = cli("classify", demo / "images" / image, "--labels", labels, "--model", "demo", "--json")
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert obj["image"].endswith(image)
    probs = obj["probabilities"]
    assert abs(sum(probs.values()) - 1) < 1e-4
    assert max(probs, key=probs.get) == expected


def test_classify_bad_input(cli):
    with pytest.raises(InputError, match="at least two labels"):
        api.parse_labels("猫")
    proc = cli("classify", "nope.png", "--labels", "猫,狗", "--model", "demo")
    assert proc.returncode == 2 and "nope.png" in proc.stderr and "Traceback" not in proc.stderr


def test_one_bad_image_does_not_sink_classify(demo, tmp_path, cli):
    (tmp_path / "empty.png").write_bytes(b"")
    good = demo / "images" / "piglet_grass_01.png"
    proc = cli("classify", tmp_path / "empty.png", good, tmp_path / "nope.png", "--labels", "哈士奇,小猪",
               "--model", "demo", "--json")
    assert proc.returncode == 3, proc.stderr   # partial results: the good ones done, each bad one listed
    items = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [Path(i["image"]).name for i in items] == ["empty.png", "piglet_grass_01.png", "nope.png"]
    assert "empty file" in items[0]["error"] and "nope.png" in items[2]["error"]
    assert max(items[1]["probabilities"], key=items[1]["probabilities"].get) == "小猪"
    assert proc.stderr.count("empty.png") == 1 and proc.stderr.count("nope.png") == 1


def test_one_bad_image_does_not_sink_a_batch_search(demo, tmp_path, cli):
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(demo / "images" / "rabbit_beach_00.png", folder / "a.png")
    (folder / "b.png").write_bytes((demo / "images" / "red_car_snow_01.png").read_bytes()[:300])
    shutil.copy(demo / "images" / "red_car_snow_01.png", folder / "c.png")
    proc = cli("search", "--features", demo / "out", "--image-dir", folder, "--log-dir", tmp_path, "-k", "2")
    assert proc.returncode == 3, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [Path(x["image"]).name if "error" in x else "ok" for x in lines] == ["ok", "b.png", "ok"]
    assert "b.png" in proc.stderr and len(list(searchlog.read_records(tmp_path / "search_log.jsonl"))) == 2
    (folder / "a.png").write_bytes(b"")
    (folder / "c.png").write_bytes(b"")
    proc = cli("search", "--features", demo / "out", "--image-dir", folder, "--log-dir", tmp_path, "-k", "2")
    assert proc.returncode == 2   # nothing could be searched: an input error, not a partial result


def test_batch_queries_and_image_dir_write_json_lines_and_log_each(demo, tmp_path, cli):
    queries = tmp_path / "q.txt"
    queries.write_text("金毛\n\n灰猫\n海边的兔子\n", encoding="utf-8")
    out = tmp_path / "results.jsonl"
    proc = cli("search", "--features", str(demo / "out"), "--queries", str(queries),
               "--output", str(out), "--log-dir", str(tmp_path), "-k", "2")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [x["query"] for x in lines] == ["金毛", "灰猫", "海边的兔子"]
    assert "golden_retriever" in lines[0]["results"][0]["image_path"]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("rabbit_beach_00.png", "red_car_snow_01.png"):
        shutil.copy(demo / "images" / name, folder / name)
    proc = cli("search", "--features", str(demo / "out"), "--image-dir", str(folder),
               "--log-dir", str(tmp_path), "-k", "2")
    assert proc.returncode == 0, proc.stderr
    image_lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(image_lines) == 2 and "rabbit_beach" not in image_lines[0]["results"][0]["image_path"]
    records = list(searchlog.read_records(tmp_path / "search_log.jsonl"))
    assert len(records) == 5 and [r["mode"] for r in records][-2:] == ["image", "image"]


def test_grid_renders_chinese_as_glyphs(demo, tmp_path, cli):
    from clip_retrieval.grid import find_cjk_font, has_glyphs

    font = find_cjk_font()
    assert has_glyphs(font, "金毛灰猫雪地")
    dejavu = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    if Path(dejavu).is_file():
        assert not has_glyphs(dejavu, "金毛")   # the check can fail: a Latin font draws boxes
    target = tmp_path / "grid.png"
    proc = cli("search", "--features", str(demo / "out"), "--query", "雪地里的哈士奇", "-k", "4",
               "--grid", str(target), "--log-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    img = Image.open(target)
    assert img.size[0] > 4 * 200 and img.size[1] > 200


@pytest.fixture
def no_system_font(monkeypatch, tmp_path):
    """A machine with no CJK font of its own: no known font files, no fontconfig, no $CLIP_RETRIEVAL_FONT."""
    from clip_retrieval import grid

    grid.find_cjk_font.cache_clear()
    monkeypatch.setattr(grid, "CJK_FONT_FILES", ())
    monkeypatch.setenv("CLIP_RETRIEVAL_FONT", str(tmp_path / "none.ttf"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no fc-match
    yield grid
    grid.find_cjk_font.cache_clear()


def test_bundled_font_draws_common_chinese_without_a_system_font(no_system_font, demo, tmp_path, cli):
    from clip_retrieval.collection.dataset import read_captions
    from scripts.make_font_subset import gb2312_hanzi

    grid = no_system_font
    assert grid.find_cjk_font() == str(grid.BUNDLED_FONT)
    assert grid.BUNDLED_FONT.stat().st_size <= 2 * 1024 * 1024
    assert (grid.BUNDLED_FONT.parent / "LICENSE-Apache-2.0.txt").is_file()
    gb2312 = gb2312_hanzi()[::15]
    rules_and_captions = "".join(read_captions(ROOT / "data" / "captions.csv", check_images=False).captions)
    sample = "".join(dict.fromkeys(gb2312 + [c for c in rules_and_captions if "\u4e00" <= c <= "\u9fff"]))
    for start in range(0, len(sample), 40):
        assert grid.has_glyphs(str(grid.BUNDLED_FONT), sample[start:start + 40]), sample[start:start + 40]
    proc = cli("search", "--features", demo / "out", "--query", "海边的灰猫", "-k", "2", "--grid", tmp_path / "g.png",
               "--log-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "g.png").size[0] > 3 * 200


def test_missing_font_message_says_what_to_install_before_searching(no_system_font, monkeypatch, demo, tmp_path,
                                                                     cli):
    grid = no_system_font
    monkeypatch.setattr(grid, "BUNDLED_FONT", tmp_path / "removed.ttf")
    with pytest.raises(grid.FontMissingError, match="fonts-wqy-microhei"):
        grid.find_cjk_font()
    proc = cli("search", "--features", demo / "out", "--query", "灰猫", "--grid", tmp_path / "g.png",
               "--log-dir", tmp_path)
    assert proc.returncode == 2 and "fonts-wqy-microhei" in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "search_log.jsonl").exists()


def test_captionless_results_show_the_file_name(demo, tmp_path):
    from clip_retrieval.grid import render_grid
    from clip_retrieval.search import Hit

    path = str(demo / "images" / "piglet_grass_00.png")
    render_grid(tmp_path / "bare.png", "小猪", [Hit(1, 0.9, path, "", 0)])
    render_grid(tmp_path / "named.png", "小猪", [Hit(1, 0.9, path, "piglet_grass_00.png", 0)])
    render_grid(tmp_path / "blank.png", "小猪", [Hit(1, 0.9, path, " ", 0)])
    bare, named, blank = (Image.open(tmp_path / f"{n}.png").tobytes() for n in ("bare", "named", "blank"))
    assert bare == named and bare != blank
