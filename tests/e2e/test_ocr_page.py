"""The page over features with OCR text, in a real headless Chromium: what matched each hit is shown, and text
read in a picture is shown as text, never run (a picture whose text is <script> must not execute anything)."""

from __future__ import annotations

import os

import pytest

from tests.e2e.test_web import FLAGS, CHROMIUM, playwright, start_page

pytest.importorskip("rapidocr_onnxruntime")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
                                 reason="Debian chromium not installed (CI installs it)")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.unit.test_ocr import SCRIPT, _draw_script

    from clip_retrieval import api
    from clip_retrieval.collection.textpictures import make_photos_without_text, make_text_pictures

    folder = tmp_path_factory.mktemp("ocr_page") / "photos"
    make_text_pictures(folder, 3, seed=4)
    make_photos_without_text(folder, 2, seed=4)
    _draw_script(folder / "script.jpg")
    features = folder.parent / "out"
    api.extract_features(images=folder, model="demo", out=features, quiet=True, ocr=True, num_workers=1)
    proc, url, _ = start_page(features)
    yield {"url": url, "script": SCRIPT}
    proc.terminate()
    proc.wait(20)


def test_ocr_text_on_the_page_is_shown_as_text_and_runs_nothing(server):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(server["url"])
        page.locator("#query textarea").fill("alert")
        page.locator("#search").click()
        page.wait_for_selector("#results img", timeout=30_000)
        page.wait_for_timeout(1500)
        shown = page.locator("#results").inner_text()
        assert "[text]" in shown or "[both]" in shown, shown
        assert "alert(1)" in shown
        assert page.evaluate("document.querySelectorAll('#results script').length") == 0
        assert dialogs == []
        browser.close()
