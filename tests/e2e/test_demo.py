"""The bundled demo: data regenerates byte for byte, the README's first command works as typed, and
the offline demo model finds the right images."""

from __future__ import annotations

import json
import shutil

import pytest

from clip_retrieval.models import BUNDLED, load_encoder

from tests.conftest import ROOT, run


def test_demo_data_regenerates_byte_for_byte(tmp_path):
    proc = run("scripts.make_demo_data", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    shipped = sorted(p.relative_to(ROOT / "data") for p in (ROOT / "data").rglob("*") if p.is_file())
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert shipped == made and len([p for p in made if p.suffix == ".png"]) >= 60
    for rel in shipped:
        assert (ROOT / "data" / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


@pytest.mark.parametrize("name, languages", [("demo", ["zh", "en"]), ("demo-en", ["en"])])
def test_demo_models_are_small_offline_and_say_what_they_read(name, languages):
    folder = BUNDLED[name]
    weights = folder / "open_clip_model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= 20 * 1024 * 1024
    assert json.loads((folder / "open_clip_config.json").read_text(encoding="utf-8"))["languages"] == languages
    encoder = load_encoder(name, device="cpu")
    assert encoder.name == name and encoder.languages == frozenset(languages)


@pytest.mark.slow
def test_readme_quick_start_commands(tmp_path):
    """The README's first command, as processes, in a copy of the checkout: extract with the demo model
    (default captions file and output folder), search 金毛, and the log it appends to."""
    work = tmp_path / "checkout"
    for name in ("data", "rules"):
        shutil.copytree(ROOT / name, work / name)
    proc = run("scripts.extract_embeddings", "--model", "demo", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "64 images" in proc.stdout and (work / "outputs" / "manifest.json").is_file()
    proc = run("scripts.search_demo", "--query", "金毛", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "golden_retriever_" in proc.stdout.split("caption / 描述", 1)[1].splitlines()[1]
    log = (work / "outputs" / "search_log.txt").read_text(encoding="utf-8")
    assert "金毛" in log and "golden retriever" in log


@pytest.mark.parametrize("query, prefix, n", [
    ("金毛", "golden_retriever_", 4),
    ("黄金猎犬", "golden_retriever_", 3),        # an alias: expansion adds 金毛
    ("灰猫", "grey_cat_", 4),
    ("小猪", "piglet_", 4),
    ("雪地里的哈士奇", "husky_snow_", 2),
    ("海边的灰猫", "grey_cat_beach_", 2),
    ("a red car", "red_car_", 3),
])
def test_demo_model_finds_the_right_images(demo_collection, query, prefix, n, cli, tmp_path):
    proc = cli("search", "--features", demo_collection / "out", "--query", query, "--top-k", n, "--json",
               "--log-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    paths = [r["image_path"] for r in json.loads(proc.stdout)["results"]]
    assert all(p.split("/")[-1].startswith(prefix) for p in paths), paths


@pytest.fixture(scope="module")
def demo_en_features(tmp_path_factory):
    from clip_retrieval import api

    out = tmp_path_factory.mktemp("demo_en_out")
    api.extract_features(csv=ROOT / "data" / "captions.csv", model="demo-en", out=out, quiet=True, num_workers=0,
                         device="cpu", rules=ROOT / "rules" / "expansions.yaml")
    return out


@pytest.mark.parametrize("query, prefix, n", [
    ("雪地里的哈士奇", "husky_snow_", 2),           # two rule terms, one English phrase
    ("夜晚的红色小汽车", "red_car_night_", 2),       # three terms
    ("雪地裡的小豬", "piglet_snow_", 2),            # Traditional 裡 and 豬
    ("草上的兔", "rabbit_grass_", 2),               # only the dictionary knows 草 and 兔
])
def test_english_only_model_finds_chinese_queries(demo_en_features, tmp_path, capsys, query, prefix, n):
    from clip_retrieval import cli

    assert cli.main(["search", "--features", str(demo_en_features), "--query", query, "-k", str(n), "--json",
                     "--log-dir", str(tmp_path), "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert all(r["image_path"].split("/")[-1].startswith(prefix) for r in out["results"]), out
    assert all(not e["pooled"] for e in out["expansions_by_language"]["zh"])     # the model reads no Chinese


def test_english_only_model_says_what_it_could_not_translate(demo_en_features, tmp_path, capsys):
    from clip_retrieval import cli

    assert cli.main(["search", "--features", str(demo_en_features), "--query", "草上的兔", "--no-dict",
                     "--log-dir", str(tmp_path), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    notice = [line for line in captured.err.splitlines() if "不读中文" in line]
    assert len(notice) == 1 and "草、兔" in notice[0] and "does not read Chinese" in notice[0]


def test_search_from_another_folder_uses_the_checkouts_rules_table(demo_collection, cli, tmp_path, monkeypatch):
    """The source install run from a photo folder: no rules/ there, so the checkout's table expands."""
    monkeypatch.chdir(tmp_path)
    proc = cli("search", "--features", demo_collection / "out", "--query", "金毛", "--json", "--log-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert "golden retriever" in " ".join(found["expansions"]), found["expansions"]
