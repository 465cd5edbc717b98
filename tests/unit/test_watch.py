"""``clipsou watch`` / ``api.watcher`` / ``serve --watch``: the features follow a photo folder while it changes.

The demo model encodes for real (it knows the bundled drawings), and searches run between the
steps through the same API the CLI and the page use.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from clip_retrieval import api
from clip_retrieval.features import store
from clip_retrieval.models import open_encoder

ROOT = Path(__file__).resolve().parents[2]
DRAWINGS = ROOT / "data" / "images"


def _paths(out: Path) -> list[str]:
    return sorted(i["path"] for i in store.read_manifest(out).images)


def _top(out: Path, query: str, encoder) -> str:
    searcher = api.open_searcher(out, encoder=encoder, rules=None, exact=True, dictionary=False)
    return Path(api.search(searcher, query=query, k=1, expand=False)[0].results[0].image_path).name


@pytest.fixture(scope="module")
def demo_encoder():
    return open_encoder("demo", None, "cpu")


def _step(watcher, done: int, timeout: float = 20.0) -> int:
    assert watcher.wait_updates(done + 1, timeout), f"no update within {timeout} s: {watcher.status}"
    return done + 1


def test_adds_changes_renames_and_deletes_are_followed_and_searchable_between_steps(tmp_path, demo_encoder):
    photos, out = tmp_path / "photos", tmp_path / "features"
    photos.mkdir()
    for name in ("black_cat_beach_00.png", "husky_snow_00.png"):
        shutil.copy(DRAWINGS / name, photos / name)
    watcher = api.watcher(photos, out, encoder=demo_encoder, rules=None, settle_s=0.3, rescan_s=1.0).start()
    try:
        done = _step(watcher, 0)
        assert _paths(out) == ["black_cat_beach_00.png", "husky_snow_00.png"] and watcher.status.images == 2

        shutil.copy(DRAWINGS / "golden_retriever_grass_00.png", photos / "new.png")          # add
        done = _step(watcher, done)
        assert _paths(out) == ["black_cat_beach_00.png", "husky_snow_00.png", "new.png"]
        assert _top(out, "草地上的金毛", demo_encoder) == "new.png"

        shutil.copy(DRAWINGS / "orange_cat_night_00.png", photos / "new.png")               # change in place
        done = _step(watcher, done)
        assert _top(out, "夜里的橘猫", demo_encoder) == "new.png"
        assert _top(out, "草地上的金毛", demo_encoder) != "new.png" or len(_paths(out)) == 3

        os.rename(photos / "new.png", photos / "renamed.png")                               # move
        done = _step(watcher, done)
        assert _paths(out) == ["black_cat_beach_00.png", "husky_snow_00.png", "renamed.png"]
        assert _top(out, "夜里的橘猫", demo_encoder) == "renamed.png"

        (photos / "husky_snow_00.png").unlink()                                             # delete
        done = _step(watcher, done)
        assert _paths(out) == ["black_cat_beach_00.png", "renamed.png"] and watcher.status.images == 2
        assert _top(out, "雪地里的哈士奇", demo_encoder) != "husky_snow_00.png"
    finally:
        watcher.stop()
    store.load(out)   # a whole, consistent set


def test_the_rescan_finds_changes_without_filesystem_events(tmp_path, demo_encoder):
    photos, out = tmp_path / "photos", tmp_path / "features"
    photos.mkdir()
    shutil.copy(DRAWINGS / "black_cat_beach_00.png", photos / "a.png")
    watcher = api.watcher(photos, out, encoder=demo_encoder, rules=None, settle_s=0.2, rescan_s=0.5)
    watcher._events = False   # as on a platform (or a network share) that sends none
    watcher.start()
    try:
        done = _step(watcher, 0)
        shutil.copy(DRAWINGS / "husky_snow_00.png", photos / "b.png")
        _step(watcher, done, timeout=10)
        assert _paths(out) == ["a.png", "b.png"]
    finally:
        watcher.stop()


@pytest.mark.slow   # 7-15 s: a thousand files decoded and encoded
def test_a_burst_of_files_is_indexed_in_batches_not_one_model_call_per_file(tmp_path, demo_encoder, monkeypatch):
    photos, out = tmp_path / "photos", tmp_path / "features"
    photos.mkdir()
    shutil.copy(DRAWINGS / "black_cat_beach_00.png", photos / "seed.png")
    calls: list[int] = []
    encode = demo_encoder.encode_images

    def counted(pixels, *args, **kwargs):
        calls.append(len(pixels))
        return encode(pixels, *args, **kwargs)

    monkeypatch.setattr(demo_encoder, "encode_images", counted)
    watcher = api.watcher(photos, out, encoder=demo_encoder, rules=None, settle_s=0.5, rescan_s=5.0,
                          batch_size=64).start()
    try:
        done = _step(watcher, 0)
        calls.clear()
        drawings = sorted(DRAWINGS.glob("*.png"))
        for i in range(1000):   # copied in at once, as a phone import or a card reader does
            shutil.copy(drawings[i % len(drawings)], photos / f"burst_{i:04d}.png")
        deadline = time.monotonic() + 120
        while watcher.status.images < 1001 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert watcher.status.images == 1001, watcher.status
    finally:
        watcher.stop()
    assert len(_paths(out)) == 1001
    assert sum(calls) <= 1000 and len(calls) <= 1000 // 64 + 10, calls   # batches of up to 64, a few short ones
    assert watcher.status.updates - done <= 10


def test_watch_on_the_cli_follows_the_folder_and_ctrl_c_leaves_a_whole_set(tmp_path, cli, demo_encoder):
    """``clipsou watch`` in this process; Ctrl-C (a real SIGINT) arrives while a batch of 40 is going in."""
    photos, out = tmp_path / "photos", tmp_path / "features"
    photos.mkdir()
    shutil.copy(DRAWINGS / "black_cat_beach_00.png", photos / "a.png")

    def user() -> None:
        deadline = time.monotonic() + 60
        while not (out / "manifest.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        for i in range(40):
            shutil.copy(DRAWINGS / "husky_snow_00.png", photos / f"b{i}.png")
        time.sleep(1.3)   # the folder settles after 1 s: the batch is under way
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=user, daemon=True).start()
    ran = cli("watch", "--images", photos, "--out", out, "--model", "demo", "--rules", tmp_path / "none.yaml",
              "--rescan", "1", "--quiet", "--device", "cpu")
    assert ran.returncode == 0, ran.stderr
    assert "已更新 / updated" in ran.stdout and "1 photos" in ran.stdout and "finishing the batch" in ran.stderr
    feats = store.load(out)   # whole: the old set or the new one, never a mixture
    assert len(_paths(out)) in (1, 41) and feats.image_features.shape[0] == len(_paths(out))


def test_a_missing_folder_is_refused_at_once(tmp_path, cli):
    ran = cli("watch", "--images", tmp_path / "nope", "--out", tmp_path / "out", "--model", "demo")
    assert ran.returncode == 2 and "image folder not found" in ran.stderr


def test_the_page_follows_the_folder_and_says_when_and_how_many(tmp_path, demo_encoder):
    """``serve --watch``: the page's own searcher is replaced after each update, no restart."""
    from clip_retrieval.web import Page

    photos, out = tmp_path / "photos", tmp_path / "features"
    photos.mkdir()
    shutil.copy(DRAWINGS / "black_cat_beach_00.png", photos / "a.png")
    api.extract_features(images=photos, out=out, encoder=demo_encoder, rules=None, quiet=True, num_workers=0)
    page = Page(str(out), None, device="cpu", dictionary=False, work_dir=tmp_path / "page")
    assert page.status_line().startswith("1 张照片 / photos · 索引更新于 / index updated ")
    page.follow(photos, out)
    try:
        assert page.watcher.wait_updates(1)
        shutil.copy(DRAWINGS / "golden_retriever_grass_00.png", photos / "dog.png")
        assert page.watcher.wait_updates(2)
        assert page.status_line().startswith("2 张照片 / photos") and "watching" in page.status_line()
        _, gallery = page.text_search("草地上的金毛", False, 1, True)   # two photos: too few to judge relevance
        assert page.paths_of(gallery) == ["dog.png"]
    finally:
        page.watcher.stop()


def test_the_faiss_index_beside_the_features_follows_them(tmp_path, demo_encoder):
    pytest.importorskip("faiss")
    from clip_retrieval.index.base import read_config

    photos, out = tmp_path / "photos", tmp_path / "features"
    photos.mkdir()
    shutil.copy(DRAWINGS / "black_cat_beach_00.png", photos / "a.png")
    api.extract_features(images=photos, out=out, encoder=demo_encoder, rules=None, quiet=True, num_workers=0)
    api.build_index(out, "faiss", kind="flat")
    watcher = api.watcher(photos, out, encoder=demo_encoder, rules=None, settle_s=0.3).start()
    try:
        done = _step(watcher, 0)
        shutil.copy(DRAWINGS / "golden_retriever_grass_00.png", photos / "dog.png")
        _step(watcher, done)
    finally:
        watcher.stop()
    config = read_config(out)
    assert config["backend"] == "faiss" and config["count"] == 2
    assert config["features_fingerprint"] == store.load(out).fingerprint
    searcher = api.open_searcher(out, encoder=demo_encoder, rules=None, dictionary=False)   # served by FAISS
    assert Path(api.search(searcher, query="草地上的金毛", k=1, expand=False)[0].results[0].image_path).name == "dog.png"
