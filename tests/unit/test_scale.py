"""No scale cliffs: work per image query and memory of the near-duplicate join stay bounded as collections grow."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from clip_retrieval import dedup
from clip_retrieval.features import store


def _planted(n: int, d: int = 64, pairs: int = 150, seed: int = 0) -> torch.Tensor:
    """Clustered unit vectors plus near-copies (similarity about 0.97-0.995) of some of them, and one chain."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(8, n // 200), d)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.8 * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src = rng.choice(n - pairs, size=pairs, replace=False)
    for k, s in enumerate(src):
        noisy = x[s] + rng.uniform(0.02, 0.12) * rng.standard_normal(d).astype(np.float32) / np.sqrt(d)
        x[n - pairs + k] = noisy / np.linalg.norm(noisy)
    return torch.from_numpy(x)


def test_inverted_file_join_finds_the_same_groups_as_the_exact_join():
    x = _planted(20_000)
    exact = dedup.near_duplicate_groups(x, threshold=0.95, method="exact")
    fast = dedup.near_duplicate_groups(x, threshold=0.95, method="ivf")
    assert len(exact) >= 150
    assert [[i for i, _ in g] for g in fast] == [[i for i, _ in g] for g in exact]


def test_exact_join_memory_is_bounded_at_a_million_images(monkeypatch):
    assert dedup.exact_block_rows(1_000_000) * 1_000_000 <= dedup.MAX_SCORES   # was 4096 x 1M floats: 16 GB
    assert dedup.exact_block_rows(100) == 4096
    x = _planted(3_000, pairs=40)
    want = dedup.near_duplicate_groups(x, threshold=0.95, method="exact")
    shapes = []
    real_matmul = np.matmul

    def spy(a, b, *rest, **kw):
        out = real_matmul(a, b, *rest, **kw)
        shapes.append(out.size)
        return out

    monkeypatch.setattr(dedup, "MAX_SCORES", 50_000)
    monkeypatch.setattr(dedup.np, "matmul", spy)
    got = dedup.near_duplicate_groups(x, threshold=0.95, method="exact")
    monkeypatch.undo()
    assert got == want and max(s for s in shapes if s > 1) <= 50_000


def test_image_query_resolves_its_own_path_not_every_indexed_one(demo_collection, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(demo_collection / "out", out)
    feats = store.load(out, with_text=False)
    images = demo_collection / "images"
    calls = []
    real_resolve = Path.resolve

    def counting(self, *args, **kwargs):
        calls.append(self)
        return real_resolve(self, *args, **kwargs)

    monkeypatch.setattr(Path, "resolve", counting)
    husky = feats.same_image(images / "husky_snow_00.png", "not-its-hash")          # by path
    copies = feats.same_image(tmp_path / "elsewhere.png", feats.manifest.images[0]["sha256"])   # by content
    monkeypatch.undo()
    paths = [feats.manifest.images[i]["path"] for i in husky]
    assert paths == ["images/husky_snow_00.png"]
    assert 0 in copies
    assert len(calls) <= 4 < len(feats.manifest.images)   # two per query at most, not one per indexed image
