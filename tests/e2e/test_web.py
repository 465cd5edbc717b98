"""The web page in a real headless Chromium (Debian's), driven by Playwright; screenshots go to outputs/."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from clip_retrieval import api
from clip_retrieval.logs import searchlog

from tests.conftest import ROOT

pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
SHOTS = ROOT / "outputs"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                 reason="Debian chromium not installed (CI installs it)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_page(features: Path) -> tuple[subprocess.Popen, str, str]:
    """``clipsou serve`` on a free port, answering: (process, url, its first line)."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, "-m", "clip_retrieval", "serve", "--features", str(features),
                             "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:   # a failed start must not leave the server running after the tests
        banner = proc.stdout.readline()
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        else:
            pytest.fail(f"server did not start: {banner}")
        found = re.search(r"uploads: (\S+);", banner)
        assert found, f"the banner names no upload folder: {banner}"
        uploads = Path(found.group(1))
    except BaseException:
        proc.kill()
        raise
    return proc, url, banner


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_collection):
    features = tmp_path_factory.mktemp("web") / "out"
    shutil.copytree(demo_collection / "out", features)   # the page logs into its features folder
    proc, url, banner = start_page(features)
    uploads = Path(re.search(r"uploads: (\S+);", banner).group(1))
    yield {"url": url, "features": features, "banner": banner, "uploads": uploads}
    proc.terminate()
    proc.wait(20)
    assert not uploads.exists()  # the upload folder goes with the server


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def _captions(page, gallery: str) -> list[str]:
    page.wait_for_selector(f"{gallery} img", timeout=30_000)
    text = page.locator(gallery).inner_text()
    return [line for line in text.splitlines() if line.startswith("#")]


def test_binds_to_loopback_and_serves_no_other_file(server):
    assert "网页已启动 / serving on http://127.0.0.1:" in server["banner"]
    base = server["url"] + "gradio_api/file="
    for path in ("/etc/passwd", str(ROOT / "data" / "captions.csv"), str(ROOT / "data" / "images" / "husky_snow_00.png"),
                 str(server["features"] / "manifest.json"), "../../../../etc/passwd"):
        try:
            status = urllib.request.urlopen(base + path, timeout=5).status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert status in (403, 404), path


def _text_search(server, browser, query: str, shows: str):
    """A new page with ``query`` searched, once the expansions line shows ``shows``."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server["url"])
    page.locator("#query textarea").fill(query)
    page.locator("#search").click()
    page.wait_for_function(f"document.querySelector('#expansions').innerText.includes({shows!r})", timeout=30_000)
    return page


def test_text_query_shows_the_expected_image_first_and_logs_it(server, browser):
    page = _text_search(server, browser, "金毛", "golden retriever")
    captions = _captions(page, "#results")
    assert captions[0].startswith("#1") and "金毛" in captions[0]
    page.screenshot(path=str(SHOTS / "web_text_search.png"), full_page=True)
    records = list(searchlog.read_records(server["features"] / searchlog.JSON_LOG))
    assert records[-1]["query"] == "金毛" and records[-1]["expand"] is True
    page.close()


def test_results_name_their_files_and_a_click_gives_the_path_to_copy(server, browser):
    page = _text_search(server, browser, "金毛", "golden retriever")
    captions = _captions(page, "#results")
    assert all(re.match(r"#\d+\s+\d\.\d{3}\s+golden_retriever_\w+\.png", c) for c in captions[:3]), captions
    page.locator("#results img").first.click()
    page.wait_for_function("document.querySelector('#results-path textarea').value.length > 0", timeout=30_000)
    path = page.locator("#results-path textarea").input_value()
    shown = captions[0].split()[2]
    assert path.endswith("/" + shown) or path == shown, (path, shown)
    assert (server["features"] / "manifest.json").read_text(encoding="utf-8").count(json_string(path)) == 1
    page.close()


def json_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def test_expansions_are_grouped_by_language_with_dictionary_marked(server, browser):
    page = _text_search(server, browser, "草上的兔", "rabbit on the grass")
    shown = page.locator("#expansions").inner_text()
    assert "en dictionary / 词典" in shown and "zh query / 查询: 草上的兔" in shown
    records = list(searchlog.read_records(server["features"] / searchlog.JSON_LOG))
    assert any(e["source"] == "dictionary" for e in records[-1]["expansions"])
    page.close()


def _ask(server, browser, query: str, shown: str):
    """A new page that has searched ``query`` and shows ``shown`` in its expansions line."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server["url"])
    page.locator("#query textarea").fill(query)
    page.locator("#search").click()
    page.wait_for_function(f"document.querySelector('#expansions').innerText.includes('{shown}')", timeout=30_000)
    return page


def test_expansion_toggle_changes_what_is_shown(server, browser):
    page = _ask(server, browser, "黄金猎犬", "金毛")
    with_expansion = _captions(page, "#results")
    page.locator("#expand input[type=checkbox]").uncheck()
    page.locator("#search").click()
    page.wait_for_function("document.querySelector('#expansions').innerText.includes('expansion off')",
                           timeout=30_000)
    page.wait_for_timeout(500)
    without = _captions(page, "#results")
    assert with_expansion != without
    assert all("金毛" in c for c in with_expansion[:3])
    records = list(searchlog.read_records(server["features"] / searchlog.JSON_LOG))
    assert [r["expand"] for r in records[-2:]] == [True, False]
    page.close()


def test_upload_shows_similar_images_and_is_deleted(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server["url"])
    page.get_by_role("tab", name=re.compile("以图搜图")).click()
    upload = ROOT / "data" / "images" / "husky_snow_00.png"
    page.locator("#i2i-upload input[type=file]").set_input_files(str(upload))
    page.wait_for_timeout(1000)
    page.locator("#i2i-go").click()
    captions = _captions(page, "#i2i-results")
    assert "哈士奇" in captions[0] or "husky" in captions[0]
    page.screenshot(path=str(SHOTS / "web_image_search.png"), full_page=True)
    leftovers = [p for p in server["uploads"].rglob("husky_snow_00.png")]
    assert leftovers == []
    page.close()


def test_bad_upload_gets_a_message_not_a_crash(server, browser, tmp_path):
    fake = tmp_path / "not_an_image.png"
    fake.write_text("this is text, not pixels")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server["url"])
    page.get_by_role("tab", name=re.compile("以图搜图")).click()
    page.locator("#i2i-upload input[type=file]").set_input_files(str(fake))
    page.wait_for_timeout(1000)
    page.locator("#i2i-go").click()
    page.wait_for_function("document.querySelector('#i2i-status').innerText.includes('cannot use this upload')",
                           timeout=30_000)
    page.screenshot(path=str(SHOTS / "web_bad_upload.png"))
    # the page still works afterwards
    page.get_by_role("tab", name=re.compile("文搜图")).click()
    page.locator("#query textarea").fill("小猪")
    page.locator("#search").click()
    page.wait_for_function("document.querySelector('#expansions').innerText.includes('piglet')", timeout=30_000)
    captions = _captions(page, "#results")
    assert captions and all("小猪" in c or "piglet" in c for c in captions[:3]), captions
    status = page.locator("#i2i-status").inner_text()
    assert "无法使用这张图片 / cannot use this upload" in status, status
    page.close()


def test_zero_shot_tab(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server["url"])
    page.get_by_role("tab", name=re.compile("零样本")).click()
    page.locator("#cls-upload input[type=file]").set_input_files(str(ROOT / "data" / "images" / "piglet_grass_00.png"))
    page.wait_for_timeout(1000)
    page.locator("#labels textarea").fill("哈士奇,小猪,灰猫")
    page.locator("#cls-go").click()
    page.wait_for_function("document.querySelector('#cls-results').innerText.includes('小猪')", timeout=30_000)
    lines = [x for x in page.locator("#cls-results").inner_text().strip().splitlines() if x.strip()]
    top = next(x for x in lines if x.strip() in ("哈士奇", "小猪", "灰猫"))
    assert top.strip() == "小猪", lines
    page.close()


def test_history_tab_shows_the_latest_searches_as_the_report_does(server, browser):
    searcher = api.open_searcher(server["features"], rules=ROOT / "rules" / "expansions.yaml")
    api.search(searcher, "灰猫", k=4)  # logged beside the features, as the page's own searches are
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server["url"])
    page.get_by_role("tab", name=re.compile("日志")).click()
    page.wait_for_selector("#history section.search img", timeout=30_000)
    sections = page.locator("#history section.search")
    assert "灰猫" in sections.first.locator("h2").inner_text()  # newest first
    assert "grey cat" in sections.first.inner_text() and "#1 " in sections.first.inner_text()
    sources = page.eval_on_selector_all("#history section.search img", "els => els.map(e => e.src)")
    assert sources and all(s.startswith("data:image/jpeg;base64,") for s in sources)  # no path on disk exposed
    records = list(searchlog.read_records(server["features"] / searchlog.JSON_LOG))
    assert sections.count() == min(len(records), 20)
    page.screenshot(path=str(SHOTS / "web_history.png"), full_page=False)
    page.close()


def test_twenty_concurrent_queries_with_repeated_texts_are_all_answered(server):
    """Repeated texts share thumbnails; each answer's images must arrive whole (one of 80 used to be cut off
    with 'Too little data for declared Content-Length' while Gradio rewrote the same cache file)."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client
    from PIL import Image

    client = Client(server["url"], verbose=False)

    def ask(query: str):
        return client.predict(query, True, 6, True, api_name="/text_search")   # all six, below the cutoff too

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(ask, ["金毛", "灰猫", "小猪", "雪地里的哈士奇"] * 5))
    assert len(answers) == 20
    for status, gallery in answers:
        assert len(gallery) == 6, status
        for item in gallery:
            with Image.open(item["image"]) as img:
                img.load()


def test_empty_query_shows_a_line_on_the_page(server, browser):
    logged = len(list(searchlog.read_records(server["features"] / searchlog.JSON_LOG)))
    page = _ask(server, browser, "   ", "empty query")
    line = page.locator("#expansions").inner_text()
    assert "查询为空 / empty query" in line, line                 # both halves of the one-line error
    assert page.locator("#results img").count() == 0              # nothing searched, nothing shown
    assert len(list(searchlog.read_records(server["features"] / searchlog.JSON_LOG))) == logged   # nor logged
    page.close()
