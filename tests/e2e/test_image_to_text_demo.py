"""``python -m scripts.image_to_text_demo``: one image or a prompt of image paths, captions with scores, logged."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest

from clip_retrieval.logs import searchlog
from scripts import image_to_text_demo

from tests.conftest import ROOT


@pytest.fixture
def features(tiny_features, tmp_path):
    """A copy of the shared features: these searches log beside them, and other tests expect no log there."""
    return shutil.copytree(tiny_features, tmp_path / "features")


def test_one_image_prints_captions_as_json_and_logs_it(features, small_collection, capsys):
    image = small_collection.parent / "images" / "husky_snow_00.png"
    before = sum(1 for _ in searchlog.read_records(features)) if (features / searchlog.JSON_LOG).is_file() else 0
    assert image_to_text_demo.main(["--image", str(image), "--features", str(features), "--top-k", "3",
                                    "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    captions = {row.split(",", 1)[1] for row in small_collection.read_text(encoding="utf-8").splitlines()[1:]}
    assert len(result["results"]) == 3 and all(h["caption"] in captions for h in result["results"])
    scores = [h["score"] for h in result["results"]]
    assert scores == sorted(scores, reverse=True)
    records = list(searchlog.read_records(features))
    assert len(records) == before + 1 and records[-1]["to"] == "text" and records[-1]["image"] == str(image)


def test_prompt_reads_paths_until_exit_and_goes_on_after_a_bad_one(features, small_collection, monkeypatch,
                                                                    capsys):
    images = small_collection.parent / "images"
    typed = f"{images / 'piglet_grass_00.png'}\n\n{images / 'missing.png'}\n{images / 'red_car_snow_00.png'}\nexit\n" \
            f"{images / 'husky_snow_00.png'}\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
    assert image_to_text_demo.main(["--features", str(features), "--top-k", "2", "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    # two searches: the missing file is reported, nothing after exit runs (random weights: each says nothing relevant)
    assert out.count("图片 / image:") == 2 and out.count("nothing relevant") == 2
    assert "piglet_grass_00.png" in out and "red_car_snow_00.png" in out and "husky_snow_00" not in out
    assert "missing.png" in err and err.count("\n") == 2  # one line for the empty line, one for the missing file


def test_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "scripts.image_to_text_demo", "--help"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "--image" in proc.stdout and "--top-k" in proc.stdout
