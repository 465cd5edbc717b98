"""The features folder: round trip, versioning, and no damage from a failed write."""

from __future__ import annotations

import json

import pytest
import torch

from clip_retrieval import store
from clip_retrieval.errors import FeatureStoreError, ModelMismatchError


def _manifest(n: int) -> dict:
    return {"model": {"name": "open_clip:tiny", "fingerprint": "sha256:abc", "dim": 4},
            "root": "/tmp", "images": [{"path": f"{i}.png", "sha256": str(i), "captions": [f"c{i}"]} for i in range(n)],
            "captions": [], "counts": {"images": n}}


def _feats(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)


def test_round_trip(tmp_path):
    img, txt = _feats(3), _feats(5, 1)
    written = store.save(tmp_path, img, txt, _manifest(3))
    loaded = store.load(tmp_path)
    assert torch.equal(loaded.image_features, img) and torch.equal(loaded.text_features, txt)
    assert loaded.manifest == json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert written["format_version"] == store.FORMAT_VERSION
    assert loaded.fingerprint == store.tensor_fingerprint(img)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image_features.pt", "manifest.json", "text_features.pt"]


def test_failed_write_leaves_previous_set_intact(tmp_path, monkeypatch):
    store.save(tmp_path, _feats(3), _feats(3), _manifest(3))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_save = torch.save
    calls = []

    def failing_save(obj, path, *a, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        store.save(tmp_path, _feats(4, 9), _feats(4, 9), _manifest(4))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files left either
    assert store.load(tmp_path).image_features.shape[0] == 3


def test_mixed_generations_are_detected(tmp_path):
    store.save(tmp_path / "a", _feats(3), _feats(3), _manifest(3))
    store.save(tmp_path / "b", _feats(3, 2), _feats(3, 2), _manifest(3))
    (tmp_path / "a" / "image_features.pt").write_bytes((tmp_path / "b" / "image_features.pt").read_bytes())
    with pytest.raises(FeatureStoreError, match="does not belong"):
        store.load(tmp_path / "a")


def test_version_and_missing_folder_messages(tmp_path):
    with pytest.raises(FeatureStoreError, match="clip-retrieval extract"):
        store.load(tmp_path / "none")
    store.save(tmp_path, _feats(2), _feats(2), _manifest(2))
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    manifest["format_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(FeatureStoreError, match="format version 99"):
        store.load(tmp_path)


def test_other_model_is_refused_with_rebuild_command(tmp_path):
    store.save(tmp_path, _feats(2), _feats(2), _manifest(2))
    feats = store.load(tmp_path)
    feats.check_model("open_clip:tiny")
    with pytest.raises(ModelMismatchError, match=r"open_clip:tiny.*cn_clip:ViT-B-16.*extract --model cn_clip:ViT-B-16"):
        feats.check_model("cn_clip:ViT-B-16")


def test_no_pickle_needed_to_load(tmp_path):
    store.save(tmp_path, _feats(2), _feats(2), _manifest(2))
    payload = torch.load(tmp_path / "image_features.pt", weights_only=True)
    assert set(payload) == {"features", "generation"}
