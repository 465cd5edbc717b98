"""The web page's handlers without a browser: inline messages, uploads deleted at once, collection paths,
thumbnails that concurrent requests never see half-written (the browser tests are in tests/e2e/test_web.py)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import RULES

pytest.importorskip("gradio")


@pytest.fixture
def page(tiny_features, tmp_path):
    from clip_retrieval.web import Page

    features = tmp_path / "f"   # the page logs beside its features
    shutil.copytree(tiny_features, features)
    return Page(str(features), str(RULES), device="cpu", work_dir=tmp_path / "uploads")


def _upload(page, name: str, data: bytes, folder: str = "a") -> str:
    path = page.work_dir / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def test_empty_query_is_a_line_on_the_page_not_an_exception(page):
    status, gallery = page.text_search("   ", True, 4)
    assert "empty query" in status and gallery == []


def test_rejected_upload_its_copies_and_empty_leftovers_are_deleted_at_once(page):
    bad = _upload(page, "not_an_image.png", b"this is text, not pixels")
    copy = _upload(page, "not_an_image.png", b"this is text, not pixels", folder="b")
    stale = _upload(page, "blob", b"", folder="c")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    fresh = _upload(page, "arriving.png", b"", folder="d")     # an upload still being written: kept
    status, gallery = page.image_search(bad, 3)
    assert "cannot use this upload" in status and gallery == []
    left = sorted(str(p.relative_to(page.work_dir)) for p in page.work_dir.rglob("*"))
    assert left == ["d", str(Path("d") / "arriving.png"), "thumbnails"], left
    assert not Path(copy).exists() and Path(fresh).exists()


def test_image_to_text_shows_collection_relative_paths_and_deletes_the_upload(page, small_collection):
    upload = _upload(page, "q.png", (small_collection.parent / "images" / "husky_snow_00.png").read_bytes())
    status, rows = page.image_to_text(upload, 3)
    assert status == "" and len(rows) == 3
    assert all(not Path(r[3]).is_absolute() and r[3].startswith("images/") for r in rows), rows
    assert not Path(upload).exists() and not (page.work_dir / "a").exists()


def test_concurrent_searches_hand_out_whole_thumbnail_files(page):
    answers, errors = [], []

    def ask(query: str) -> None:
        try:
            answers.append(page.text_search(query, True, 6)[1])
        except Exception as exc:  # noqa: BLE001 - any failure in a thread must reach the assertion
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(q,)) for q in ["金毛", "灰猫", "小猪", "雪地里的哈士奇"] * 5]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(answers) == 20
    files = {path for gallery in answers for path, _ in gallery}
    assert all(isinstance(p, str) and Path(p).parent == page.thumbs for p in files)
    for path in files:
        with Image.open(path) as img:
            img.load()   # a truncated file fails here


def test_serve_on_a_taken_port_says_so_before_claiming_to_serve(cli, tmp_path):
    import socket

    pytest.importorskip("gradio")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ran = cli("serve", "--features", tmp_path / "none", "--port", port)
    assert ran.returncode == 2 and "serving on" not in ran.stdout
    assert ran.stderr.strip() == (f"clipsou: 端口 {port} 已被占用 / port {port} on 127.0.0.1 is taken by another "
                                  f"program; pick another with --port, e.g. --port {port + 1}")


def test_uploads_never_searched_are_swept_in_the_background_and_thumbnails_stay(page):
    from clip_retrieval import web

    old = _upload(page, "posted_then_abandoned.png", b"x" * 100, folder="e")
    past = time.time() - web.UPLOAD_TTL_S - 1
    os.utime(old, (past, past))
    recent = _upload(page, "about_to_be_searched.png", b"y" * 100, folder="f")
    thumb = page.thumbs / "0.png"
    thumb.write_bytes(b"z")
    os.utime(thumb, (past, past))
    stop = page.start_sweeper(every_s=0.05)
    try:
        deadline = time.time() + 10
        while Path(old).exists() and time.time() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
    assert not Path(old).exists() and not (page.work_dir / "e").exists()
    assert Path(recent).exists() and thumb.exists()
