"""extract --ocr and search over the text in images, with the real PP-OCRv4 models (they ship in the
rapidocr-onnxruntime wheel) on a few rendered pictures, through the CLI as a user runs it."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

pytest.importorskip("rapidocr_onnxruntime")

from clip_retrieval.collection.textpictures import FONT, make_photos_without_text, make_text_pictures  # noqa: E402
from clip_retrieval.core import extras  # noqa: E402
from clip_retrieval.features.ocrtext import OCR_FILE, OCR_FORMAT_VERSION  # noqa: E402
from clip_retrieval.query.textmatch import TextMatcher, normalize_text  # noqa: E402

SCRIPT = "<script>alert(1)</script>"


def _draw_script(path: Path) -> None:
    from PIL import ImageFont

    img = Image.new("RGB", (640, 200), (255, 255, 255))
    ImageDraw.Draw(img).text((30, 70), SCRIPT, font=ImageFont.truetype(str(FONT), 36), fill=(0, 0, 0))
    img.save(path, quality=92)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Six pictures with text (one of each kind), three photos without, one page saying <script>."""
    folder = tmp_path_factory.mktemp("ocr_collection") / "photos"
    texts = make_text_pictures(folder, 6, seed=3)
    photos = make_photos_without_text(folder, 3, seed=3)
    _draw_script(folder / "script.jpg")
    return folder, texts, photos


@pytest.fixture(scope="module")
def extracted(collection, tmp_path_factory):
    """``clipsou extract --ocr`` of the collection: (features folder, what it printed)."""
    from clip_retrieval.cli import main

    out = tmp_path_factory.mktemp("ocr_features") / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["extract", "--images", str(collection[0]), "--model", "demo", "--ocr", "--out", str(out),
                     "--quiet", "--num-workers", "1"]) == 0
    return out, printed.getvalue()


@pytest.fixture
def features(extracted):
    return extracted[0]


def _copy(features: Path, tmp_path: Path) -> Path:
    target = tmp_path / "out"
    shutil.copytree(features, target)
    return target


def _search(cli, features: Path, *args: str) -> dict:
    ran = cli("search", *args, "--features", features, "--json", "--log-dir", features.parent / "logs")
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


def _by_name(texts, kind: str):
    return next(t for t in texts if t.kind == kind)


def test_extract_reads_the_text_into_a_versioned_sidecar_with_lines_confidence_and_boxes(collection, features):
    folder, texts, photos = collection
    manifest = json.loads((features / "manifest.json").read_text(encoding="utf-8"))
    sidecar = json.loads((features / OCR_FILE).read_text(encoding="utf-8"))
    assert sidecar["format_version"] == OCR_FORMAT_VERSION and sidecar["generation"] == manifest["generation"]
    assert sidecar["engine"]["name"].startswith("rapidocr-onnxruntime PP-OCRv4")
    assert len(sidecar["images"]) == len(manifest["images"]) == 10
    by_path = {Path(m["path"]).name: entry for m, entry in zip(manifest["images"], sidecar["images"])}
    for name, _, _ in photos:      # photos without text stay empty: the probe found nothing
        assert by_path[name]["lines"] == [], name
    invoice = _by_name(texts, "invoice")
    lines = by_path[invoice.name]["lines"]
    assert any("发票" in line["text"] for line in lines), lines
    first = lines[0]
    assert 0.5 <= first["confidence"] <= 1.0 and len(first["box"]) == 4
    width, height = Image.open(folder / invoice.name).size
    assert all(0 <= x <= width and 0 <= y <= height for x, y in first["box"])
    assert sidecar["counts"] == {"images": 10, "with_text": 7, "failed": 0}


def test_extract_summary_says_how_many_images_had_text(extracted):
    assert "OCR: 7 of 10 images have text (read 10, reused 0, failed 0)" in extracted[1]


def test_a_word_written_in_a_screenshot_finds_it_first_with_the_line_that_matched(cli, collection, features):
    _, texts, _ = collection
    result = _search(cli, features, "发票")
    top = result["results"][0]
    assert Path(top["image_path"]).name == _by_name(texts, "invoice").name
    assert top["matched_by"] in ("text", "both") and "发票" in top["ocr_line"]
    assert result["ocr"] == "fuse"


def test_traditional_and_full_width_queries_match_simplified_half_width_text(cli, collection, features):
    _, texts, _ = collection
    invoice, ticket = _by_name(texts, "invoice"), _by_name(texts, "ticket")
    assert [Path(h["image_path"]).name for h in _search(cli, features, "發票", "--ocr-only")["results"]] == [invoice.name]
    wide = "".join(chr(ord(c) + 0xFEE0) for c in ticket.code) + "次"     # Ｇ１２３４次
    hits = _search(cli, features, wide, "--ocr-only")["results"]
    assert [Path(h["image_path"]).name for h in hits] == [ticket.name] and hits[0]["matched_by"] == "text"
    assert _search(cli, features, "金毛", "--ocr-only")["results"] == []   # no picture says it


def test_a_picture_query_still_ranks_by_the_picture(cli, collection, features):
    _, _, photos = collection
    fused = _search(cli, features, "金毛")["results"]
    plain = _search(cli, features, "金毛", "--no-ocr")["results"]
    assert [h["image_path"] for h in fused] == [h["image_path"] for h in plain]
    assert Path(fused[0]["image_path"]).name == photos[0][0] and fused[0]["matched_by"] == "picture"
    assert "matched_by" not in plain[0]


def test_the_table_shows_what_matched_and_the_line(cli, collection, features):
    ran = cli("search", "發票", "--features", features, "--log-dir", features.parent / "logs")
    assert ran.returncode == 0 and re.search(r"matched by / 匹配: (text|both)  text / 文字: .*发票", ran.stdout)


def test_ocr_only_on_features_without_text_says_how_to_read_it(cli, tiny_features):
    ran = cli("search", "发票", "--ocr-only", "--features", tiny_features, "--log-dir", tiny_features.parent / "l")
    assert ran.returncode == 2 and "extract --update --ocr" in ran.stderr and ran.stderr.count("\n") == 1


def test_update_reads_only_new_and_changed_images(cli, collection, features, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(collection[0], folder)
    out = tmp_path / "out"
    assert cli("extract", "--images", folder, "--model", "demo", "--ocr", "--out", out, "--quiet").returncode == 0
    Image.open(folder / "script.jpg").save(folder / "script_copy.jpg", quality=70)     # a new file
    photo = next(folder.glob("golden_retriever_*"))
    Image.open(photo).rotate(90).save(photo, quality=90)                                # a changed one
    ran = cli("extract", "--images", folder, "--update", "--out", out, "--quiet")      # OCR stays on by itself
    assert ran.returncode == 0, ran.stderr
    assert "(read 2, reused 9, failed 0)" in ran.stdout
    sidecar = json.loads((out / OCR_FILE).read_text(encoding="utf-8"))
    assert sidecar["counts"]["images"] == 11
    ran = cli("extract", "--images", folder, "--model", "demo", "--out", out, "--quiet")  # without --ocr: no stale text
    assert ran.returncode == 0 and not (out / OCR_FILE).exists()


def test_an_image_ocr_fails_on_keeps_its_picture_features_and_is_listed(cli, collection, tmp_path, monkeypatch):
    from clip_retrieval.models import ocr

    real = ocr.OcrEngine.read_found

    def fails_on_invoices(self, img):
        if img.size[0] > 880:     # the invoice canvas is the only one this wide
            raise RuntimeError("ONNXRuntimeError: out of memory")
        return real(self, img)

    monkeypatch.setattr(ocr.OcrEngine, "read_found", fails_on_invoices)
    ran = cli("extract", "--images", collection[0], "--model", "demo", "--ocr", "--out", tmp_path / "o", "--quiet",
              "--num-workers", "1")
    assert ran.returncode == 0, ran.stderr
    assert "failed 1)" in ran.stdout and "OCR failed / 文字识别失败: text_invoice_" in ran.stderr
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["images"] == 10      # its picture features are there


def test_without_the_extra_ocr_says_how_to_install_it(cli, collection, tmp_path, monkeypatch):
    from clip_retrieval.models import ocr

    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)
    ocr.engine_identity.cache_clear()
    try:
        ran = cli("extract", "--images", collection[0], "--model", "demo", "--ocr", "--out", tmp_path / "o")
    finally:
        ocr.engine_identity.cache_clear()
    assert ran.returncode == 2 and f"pip install '{extras.DISTRIBUTION}[ocr]'" in ran.stderr
    assert not (tmp_path / "o").exists()     # refused before anything was read or written


def test_script_in_ocr_text_is_escaped_in_the_html_report(cli, features, tmp_path):
    out = _copy(features, tmp_path)
    hits = _search(cli, out, "alert", "--ocr-only")["results"]
    assert hits and "<script>" in hits[0]["ocr_line"]          # the model read it as written
    ran = cli("log", "--log", out.parent / "logs" / "search_log.jsonl", "--html", tmp_path / "report.html")
    assert ran.returncode == 0, ran.stderr
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page


def test_search_log_and_replay_carry_the_text_match(cli, features, tmp_path):
    out = _copy(features, tmp_path)
    logs = out.parent / "logs"
    _search(cli, out, "发票")
    record = json.loads((logs / "search_log.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert record["ocr"] == "fuse" and record["ocr_fingerprint"].startswith("sha256:")
    assert record["results"][0]["matched_by"] in ("text", "both") and "发票" in record["results"][0]["ocr_line"]
    assert "匹配" in (logs / "search_log.txt").read_text(encoding="utf-8")
    ran = cli("replay", "--log", logs / "search_log.jsonl", "--device", "cpu")
    assert ran.returncode == 0 and "identical" in ran.stdout, ran.stdout + ran.stderr
    sidecar = json.loads((out / OCR_FILE).read_text(encoding="utf-8"))
    for entry in sidecar["images"]:
        for line in entry["lines"]:
            line["text"] = line["text"].replace("发票", "收据")
    (out / OCR_FILE).write_text(json.dumps(sidecar, ensure_ascii=False), encoding="utf-8")
    ran = cli("replay", "--log", logs / "search_log.jsonl", "--device", "cpu")
    assert "OCR text" in ran.stdout and "ocr text" in ran.stdout, ran.stdout


def test_a_sidecar_from_other_features_is_refused_with_the_fix(cli, features, tmp_path):
    out = _copy(features, tmp_path)
    sidecar = json.loads((out / OCR_FILE).read_text(encoding="utf-8"))
    sidecar["generation"] = "0" * 32
    (out / OCR_FILE).write_text(json.dumps(sidecar), encoding="utf-8")
    ran = cli("search", "发票", "--features", out, "--log-dir", tmp_path / "l")
    assert ran.returncode == 2 and "belongs to other features" in ran.stderr and "--ocr" in ran.stderr


def test_image_to_image_hits_carry_the_recognised_text(collection, features):
    from clip_retrieval import api

    searcher = api.open_searcher(features, device="cpu")
    invoice = _by_name(collection[1], "invoice")
    result = searcher.search_image(collection[0] / "script.jpg", k=10)
    texts = {Path(h.image_path).name: h.ocr_text for h in result.results}
    assert "发票" in texts[invoice.name] and texts[next(iter(collection[2]))[0]] is None


# ----------------------------------------------------------------- the matcher, without the model

def test_normalisation_folds_width_case_script_and_punctuation():
    assert normalize_text("Ｇ１２３４次，發票 No.１") == "g1234次发票no1"


def test_words_split_over_two_lines_match_and_a_picture_phrase_does_not():
    from clip_retrieval.query.expansion import load_rules

    rules = load_rules(Path(__file__).resolve().parent.parent.parent / "rules" / "expansions.yaml")
    matcher = TextMatcher([["G1234次 北京南站", "上海虹桥站"], ["海边咖啡馆 营业中"], []], rules.segment)
    (hit,) = matcher.match("北京南 上海虹桥")
    assert hit.image == 0 and 0.6 <= hit.score < 1.0 and "上海虹桥站" in hit.line
    assert matcher.match("海边的猫") == []        # 海边 alone is half the query: not a text match
    assert [m.image for m in matcher.match("咖啡館")] == [1]


def test_photos_without_text_stop_after_the_small_detection(tmp_path):
    """The detector outlines pets and cars in photos; only line-shaped boxes may send a photo to the full read."""
    from benchmarks.peers import make_photos
    from clip_retrieval.collection.dataset import open_image
    from clip_retrieval.models.ocr import PROBE_SIDE, open_ocr

    engine = open_ocr()
    photos = make_photos(tmp_path, 4, (1008, 756))
    assert not any(engine.has_text(open_image(p.read_bytes(), PROBE_SIDE // 2)) for p in photos)
    sign = make_text_pictures(tmp_path / "sign", 6, seed=5)[5]
    assert sign.kind == "sign" and engine.has_text(Image.open(tmp_path / "sign" / sign.name))


@pytest.mark.slow     # two 12 MP photos to draw
def test_a_photo_decoded_for_the_model_is_probed_there_and_not_decoded_again(tmp_path, monkeypatch):
    from benchmarks.peers import make_photos
    from clip_retrieval import api, extract

    folder = tmp_path / "photos"
    photos = make_photos(folder, 2, (4032, 3024))    # 1/8 draft decode for the model: 504x378, enough to probe
    invoice = make_text_pictures(folder, 3, seed=2)[2]
    probed = []
    real = extract._probe
    monkeypatch.setattr(extract, "_probe", lambda path, max_pixels: probed.append(path.name) or real(path, max_pixels))
    result = api.extract_features(images=folder, model="demo", out=tmp_path / "out", quiet=True, ocr=True,
                                  num_workers=1)
    assert not {p.name for p in photos} & set(probed) and invoice.name in probed
    text = {Path(m["path"]).name: result.ocr.text_of(i) for i, m in enumerate(result.manifest.images)}
    assert text[photos[0].name] == "" and "发票" in text[invoice.name]
    assert result.ocr_read == 5
