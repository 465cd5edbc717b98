"""``extract --update`` keeps the index that served the old features serving the new ones."""

import json
import shutil

from clip_retrieval.index.base import read_config, write_config

from tests.conftest import ROOT


def _folder(tmp_path, names):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in names:
        shutil.copy(ROOT / "data" / "images" / name, photos / name)
    return photos


def test_update_rebuilds_the_faiss_index_with_its_options_and_search_names_the_backend(cli, tmp_path):
    photos = _folder(tmp_path, ["black_cat_beach_00.png", "red_car_night_00.png", "piglet_grass_00.png"])
    out = tmp_path / "feats"
    assert cli("extract", "--images", photos, "--model", "demo", "--out", out, "--quiet").returncode == 0
    assert cli("index", "--features", out, "--backend", "faiss", "--kind", "flat", "--fp16").returncode == 0
    shutil.copy(ROOT / "data" / "images" / "golden_retriever_snow_00.png", photos / "golden_retriever_snow_00.png")
    ran = cli("extract", "--images", photos, "--update", "--out", out, "--quiet")
    assert ran.returncode == 0, ran.stderr
    assert "索引已更新 / index updated: faiss over 4 vectors" in ran.stdout
    config = read_config(out)
    assert (config["kind"], config["fp16"], config["count"]) == ("flat", True, 4)
    found = cli("search", "--features", out, "--query", "金毛", "--top-k", "1", "--json", "--log-dir", tmp_path)
    assert found.returncode == 0 and "ignoring" not in found.stderr, found.stderr
    answer = json.loads(found.stdout)
    assert answer["backend"] == "faiss"
    assert answer["results"][0]["image_path"].endswith("golden_retriever_snow_00.png")
    text = cli("search", "--features", out, "--query", "金毛", "--top-k", "1", "--log-dir", tmp_path)
    assert "检索方式 / searched by: faiss index / 索引" in text.stdout


def test_update_over_an_index_without_recorded_options_says_searches_use_the_exact_scan(cli, tmp_path):
    photos = _folder(tmp_path, ["black_cat_beach_00.png", "red_car_night_00.png"])
    out = tmp_path / "feats"
    assert cli("extract", "--images", photos, "--model", "demo", "--out", out, "--quiet").returncode == 0
    assert cli("index", "--features", out, "--backend", "faiss").returncode == 0
    old = read_config(out)
    del old["options"]              # as an index.json written before options were recorded
    write_config(out, old)
    shutil.copy(ROOT / "data" / "images" / "piglet_grass_00.png", photos / "piglet_grass_00.png")
    ran = cli("extract", "--images", photos, "--update", "--out", out, "--quiet")
    assert ran.returncode == 0, ran.stderr
    assert f"searches use the exact scan until you rebuild it: clipsou index --backend faiss --features {out}" \
        in ran.stderr
    assert read_config(out)["count"] == 2      # not rebuilt by guessing its options
    found = cli("search", "--features", out, "--query", "小猪", "--top-k", "1", "--log-dir", tmp_path)
    assert "检索方式 / searched by: 精确扫描 / exact scan" in found.stdout
    assert "索引与特征不符" in found.stderr
