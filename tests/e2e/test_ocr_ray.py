"""extract --ocr --engine ray: the text is read in Ray tasks and equals what the local engine reads."""

from __future__ import annotations

import json

import pytest

from clip_retrieval import api
from clip_retrieval.features.ocrtext import OCR_FILE

pytest.importorskip("ray")
pytest.importorskip("rapidocr_onnxruntime")
pytestmark = pytest.mark.slow


def test_ray_reads_the_same_text_as_the_local_engine(tmp_path):
    from clip_retrieval.collection.textpictures import make_photos_without_text, make_text_pictures

    folder = tmp_path / "photos"
    make_text_pictures(folder, 4, seed=6)
    make_photos_without_text(folder, 2, seed=6)
    local = api.extract_features(images=folder, model="demo", out=tmp_path / "local", quiet=True, ocr=True)
    ray = api.extract_features(images=folder, model="demo", out=tmp_path / "ray", quiet=True, ocr=True,
                               engine="ray", shard_size=2, workers=2)
    assert ray.ocr_read == 6 and ray.ocr.with_text == local.ocr.with_text == 4
    assert [e["lines"] for e in ray.ocr.images] == [e["lines"] for e in local.ocr.images]
    assert json.loads((tmp_path / "ray" / OCR_FILE).read_text(encoding="utf-8"))["counts"]["with_text"] == 4
