"""The bundled demo: data regenerates byte for byte, and the offline demo model finds the right images."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clip_retrieval.encoders import DEMO_DIR

from tests.conftest import ROOT
from tests.e2e.test_scripts import run


def test_demo_data_regenerates_byte_for_byte(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scripts.make_demo_data", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    shipped = sorted(p.relative_to(ROOT / "data") for p in (ROOT / "data").rglob("*") if p.is_file())
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert shipped == made and len([p for p in made if p.suffix == ".png"]) >= 60
    for rel in shipped:
        assert (ROOT / "data" / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_demo_model_is_small_and_offline():
    weights = DEMO_DIR / "open_clip_model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= 20 * 1024 * 1024
    assert json.loads((DEMO_DIR / "open_clip_config.json").read_text(encoding="utf-8"))["languages"] == ["zh", "en"]


@pytest.fixture(scope="module")
def demo_features(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_out")
    proc = run("scripts.extract_embeddings", "--model", "demo", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("query, prefix, n", [
    ("金毛", "golden_retriever_", 4),
    ("黄金猎犬", "golden_retriever_", 3),        # an alias: expansion adds 金毛
    ("灰猫", "grey_cat_", 4),
    ("小猪", "piglet_", 4),
    ("雪地里的哈士奇", "husky_snow_", 2),
    ("海边的灰猫", "grey_cat_beach_", 2),
    ("a red car", "red_car_", 3),
])
def test_demo_model_finds_the_right_images(demo_features, query, prefix, n):
    proc = run("scripts.search_demo", "--features", str(demo_features), "--query", query, "--top-k", str(n),
               "--json")
    assert proc.returncode == 0, proc.stderr
    paths = [r["image_path"] for r in json.loads(proc.stdout)["results"]]
    assert all(p.split("/")[-1].startswith(prefix) for p in paths), paths
