"""Extraction shards: a plan that depends only on the files, a journal that resumes, and the same features as one run."""

from __future__ import annotations

import sys

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from clip_retrieval import api, engines
from clip_retrieval.features import store
from clip_retrieval.extract import encode_images
from clip_retrieval.models import open_encoder
from clip_retrieval.features.shards import JOURNAL_DIR, Decoding, ShardJournal, plan


@pytest.fixture(scope="module")
def collection(tmp_path_factory, small_collection) -> Path:
    """The small collection plus one file that is not an image (skipped with a reason) in the middle of the rows."""
    root = tmp_path_factory.mktemp("sharded")
    shutil.copytree(small_collection.parent / "images", root / "images")
    (root / "images" / "broken.png").write_bytes(b"not a png at all")
    rows = small_collection.read_text(encoding="utf-8").rstrip("\n").splitlines()
    rows.insert(12, "images/broken.png,坏图")
    (root / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "captions.csv"


@pytest.fixture(scope="module")
def encoder(tiny_open_clip):
    return open_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")


def _paths(csv: Path) -> list[Path]:
    rows = csv.read_text(encoding="utf-8").splitlines()[1:]
    return list(dict.fromkeys(csv.parent / r.split(",")[0] for r in rows))


def _decoding(encoder) -> Decoding:
    return Decoding(fingerprint=encoder.fingerprint, dim=encoder.dim, image_size=encoder.image_size,
                    max_pixels=1 << 26)


def test_shards_are_consecutive_blocks_that_depend_only_on_the_files(collection, encoder, tmp_path):
    paths = _paths(collection)
    stats = [p.stat() for p in paths]
    shards = plan(paths, stats, _decoding(encoder), shard_size=5)
    assert [s.start for s in shards] == list(range(0, 33, 5))
    assert [p for s in shards for p in s.paths] == [str(p) for p in paths]   # every image once, in row order
    assert plan(paths, stats, _decoding(encoder), shard_size=5) == shards
    touched = paths[7]
    os.utime(touched, ns=(stats[7].st_atime_ns, stats[7].st_mtime_ns + 1_000_000_000))
    try:
        again = plan(paths, [p.stat() for p in paths], _decoding(encoder), shard_size=5)
    finally:
        os.utime(touched, ns=(stats[7].st_atime_ns, stats[7].st_mtime_ns))
    assert [s.key != t.key for s, t in zip(shards, again)] == [False, True] + [False] * 5
    other_model = Decoding("sha256:other", encoder.dim, encoder.image_size, 1 << 26)
    assert not {s.key for s in plan(paths, stats, other_model, 5)} & {s.key for s in shards}


def test_a_shard_not_made_for_these_files_is_encoded_again(collection, encoder, tmp_path):
    paths = _paths(collection)[:6]
    decoding = _decoding(encoder)
    shards = plan(paths, [p.stat() for p in paths], decoding, shard_size=3)
    journal = ShardJournal(tmp_path)
    settings = engines.WorkerSettings("open_clip:tiny", None, "cpu", 4, 0, False)
    for shard in shards:
        engines.encode_shard(encoder, shard, journal, decoding, settings)
    assert journal.finished(shards, decoding) == {0, 1}
    journal.path_of(shards[1]).write_bytes(journal.path_of(shards[1]).read_bytes()[:200])   # torn by a crash
    assert journal.finished(shards, decoding) == {0}
    os.replace(journal.path_of(shards[0]), journal.path_of(shards[1]))   # a file under another shard's name
    assert journal.finished(shards, decoding) == set()
    assert journal.finished(shards, Decoding("sha256:other", decoding.dim, decoding.image_size, 1 << 26)) == set()


def test_sharded_extraction_equals_one_run_and_resumes_only_missing_shards(collection, encoder, tmp_path):
    paths = _paths(collection)
    whole = encode_images(encoder, paths, batch_size=32, num_workers=0, quiet=True)
    engine = engines.make_engine("local", tmp_path, "open_clip:tiny", None, "cpu", shard_size=4)
    first = engine.encode(encoder, paths, batch_size=3, num_workers=0, quiet=True)
    assert engine.summary() == {"planned": 9, "resumed": 0}
    np.testing.assert_allclose(first[0], whole[0], atol=1e-6)
    np.testing.assert_array_equal(first[1], whole[1])
    assert first[2:] == whole[2:]   # content hashes, skipped (position, hash, reason)
    assert [(pos, reason.split(":")[0]) for pos, _, reason in first[3]] == [(11, "not a readable image")]

    files = sorted((tmp_path / JOURNAL_DIR).glob("shard-*.pt"))
    assert len(files) == 9
    lost = [files[2], files[6]]
    for f in lost:
        f.unlink()
    kept = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files if f not in lost}
    second = engine.encode(encoder, paths, batch_size=3, num_workers=0, quiet=True)
    assert engine.summary() == {"planned": 9, "resumed": 7}
    assert {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in kept} == kept   # the others were not rewritten
    assert all(f.is_file() for f in lost)
    np.testing.assert_allclose(second[0], whole[0], atol=1e-6)
    np.testing.assert_array_equal(second[1], whole[1])
    assert second[2:] == whole[2:]
    engine.finish()
    assert not (tmp_path / JOURNAL_DIR).exists()


def test_sharded_local_extract_saves_what_the_local_engine_saves(collection, tiny_open_clip, tmp_path):
    common = dict(csv=collection, model="open_clip:tiny", checkpoint=str(tiny_open_clip), num_workers=0,
                  device="cpu", quiet=True, rules=None)
    plain = api.extract_features(out=tmp_path / "plain", **common)
    sharded = api.extract_features(out=tmp_path / "sharded", shard_size=5, batch_size=2, **common)
    a, b = store.load(tmp_path / "plain"), store.load(tmp_path / "sharded")
    np.testing.assert_allclose(b.image_features, a.image_features, atol=1e-6)
    assert b.manifest.images == a.manifest.images and b.manifest.captions == a.manifest.captions
    assert b.manifest.skipped == a.manifest.skipped and len(a.manifest.skipped) == 1
    # the local engine is sharded by default too: 33 images in batches of 32 make two shards of one batch
    assert sharded.shards == {"planned": 7, "resumed": 0} and plain.shards == {"planned": 2, "resumed": 0}
    assert not (tmp_path / "sharded" / JOURNAL_DIR).exists()


class _Interrupted:
    """The real encoder, with a Ctrl-C arriving while batch ``stop_at`` encodes; counts the images it encoded."""

    def __init__(self, encoder, stop_at: int | None = None):
        self._encoder, self.stop_at, self.calls, self.images = encoder, stop_at, 0, 0

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode_images(self, pixels):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        self.images += len(pixels)
        return self._encoder.encode_images(pixels)


def test_an_interrupted_local_extraction_resumes_from_what_was_encoded(collection, encoder, tmp_path):
    """Ctrl-C in the fourth batch of four: the rerun encodes only the images after the first three batches,
    and saves what one uninterrupted run saves."""
    common = dict(csv=collection, num_workers=0, quiet=True, rules=None, batch_size=4)
    clean = api.extract_features(out=tmp_path / "clean", encoder=encoder, **common)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        api.extract_features(out=out, encoder=_Interrupted(encoder, stop_at=4), **common)
    assert not (out / store.MANIFEST_FILE).exists()          # nothing half-saved
    assert len(list((out / JOURNAL_DIR).glob("shard-*.pt"))) == 3
    again = _Interrupted(encoder)
    resumed = api.extract_features(out=out, encoder=again, **common)
    images = len(clean.manifest.images) + len(clean.manifest.skipped)
    assert resumed.shards == {"planned": 9, "resumed": 3}    # shards of one batch each
    assert again.images == images - 12      # the 21 files after the first 12 (the broken one is among those 12)
    a, b = store.load(tmp_path / "clean"), store.load(out)
    np.testing.assert_allclose(b.image_features, a.image_features, atol=1e-6)
    assert b.manifest.images == a.manifest.images and b.manifest.skipped == a.manifest.skipped
    assert images == 33 and not (out / JOURNAL_DIR).exists()


def test_engine_ray_without_ray_says_how_to_install_it(cli, monkeypatch, collection, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)        # import ray now fails as if it were not installed
    ran = cli("extract", "--csv", collection, "--model", "demo", "--out", tmp_path / "out", "--engine", "ray")
    assert ran.returncode == 2
    assert "pip install 'clipsou[ray]'" in ran.stderr and "缺少可选依赖 ray" in ran.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, says", [
    (["--workers", "2"], "--workers need --engine ray"),
    (["--engine", "ray", "--workers", "0"], "--workers must be at least 1"),
    (["--shard-size", "0"], "--shard-size must be at least 1"),
])
def test_engine_options_that_cannot_work_are_refused(cli, collection, tmp_path, args, says):
    ran = cli("extract", "--csv", collection, "--model", "demo", "--out", tmp_path / "out", "--quiet", *args)
    assert ran.returncode == 2 and says in ran.stderr
    assert not (tmp_path / "out" / store.MANIFEST_FILE).exists()
