"""Reading collections the way real files arrive, and decoding every kind of image safely."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_retrieval.collection.dataset import (BROKEN_LINK, open_image, open_user_image, read_captions, read_query_lines,
                                               scan_images)
from clip_retrieval.core.errors import InputError


def _img(path: Path, colour=(200, 30, 30), size=(16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _csv(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "captions.csv"
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gbk", "gb18030"])
def test_encodings_and_messy_rows(tmp_path, encoding):
    _img(tmp_path / "images" / "a.png")
    _img(tmp_path / "images" / "b.png")
    absolute = _img(tmp_path / "elsewhere" / "c.png")
    text = ("image_path, caption\r\n"
            "images/a.png,草地上的金毛\r\n"
            "\r\n"
            "images/a.png,\"一只狗, 在草地上\"\r\n"
            f"{absolute},海边的灰猫\r\n"
            "  images/b.png ,  雪地里的哈士奇  \r\n")
    coll = read_captions(_csv(tmp_path, text, encoding))
    assert coll.images == ["images/a.png", str(absolute), "images/b.png"]
    assert coll.captions == ["草地上的金毛", "一只狗, 在草地上", "海边的灰猫", "雪地里的哈士奇"]
    assert coll.caption_image == [0, 0, 1, 2]
    assert coll.caption_rows == [2, 4, 5, 6]
    assert coll.resolve(coll.images[1]) == absolute
    assert coll.resolve("images/a.png") == (tmp_path / "images" / "a.png").resolve()


def test_missing_column_names_file_and_found_columns(tmp_path):
    path = _csv(tmp_path, "path,caption\nimages/a.png,x\n")
    with pytest.raises(InputError, match=r"captions.csv line 1: missing column image_path.*'path'"):
        read_captions(path)


def test_missing_image_names_row(tmp_path):
    _img(tmp_path / "a.png")
    path = _csv(tmp_path, "image_path,caption\na.png,ok\nmissing.png,狗\n")
    with pytest.raises(InputError, match=r"captions.csv line 3: image not found: .*missing.png"):
        read_captions(path)


def test_empty_caption_names_row_and_counts_more(tmp_path):
    _img(tmp_path / "a.png")
    path = _csv(tmp_path, "image_path,caption\na.png,\na.png,  \n")
    with pytest.raises(InputError, match=r"line 2: empty caption for a.png \(and 1 more problems\)"):
        read_captions(path)


def test_not_text(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_bytes(b"\x81\x30\xff\xff\x00")
    with pytest.raises(InputError, match="not UTF-8 or GBK"):
        read_captions(path)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_utf16_with_a_byte_order_mark_is_read(tmp_path, encoding):
    """Notepad's and Excel's "Unicode text" is UTF-16 with a BOM; it used to be refused as "not UTF-8 or GBK"."""
    _img(tmp_path / "a.png")
    path = tmp_path / "captions.csv"
    bom = "\ufeff" if encoding == "utf-16-be" else ""   # Python's utf-16 writes its own
    path.write_bytes((bom + "image_path,caption\r\na.png,雪地里的哈士奇\r\n").encode(encoding))
    coll = read_captions(path)
    assert coll.captions == ["雪地里的哈士奇"] and coll.source["encoding"] == "utf-16"
    queries = tmp_path / "queries.txt"
    queries.write_text("金毛\n灰猫\n", encoding="utf-16")
    assert read_query_lines(queries) == ["金毛", "灰猫"]


def test_broken_utf16_is_named_as_utf16(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_bytes(b"\xff\xfe\x00\x81\x30\xff\xff")
    with pytest.raises(InputError, match=r"captions.csv: UTF-16 文本已损坏 / UTF-16 text .* save it again as UTF-8"):
        read_captions(path)


def test_folder_scan_skips_hidden_and_survives_link_loops(tmp_path):
    root = tmp_path / "photos"
    _img(root / "a.jpg")
    _img(root / "sub" / "b.PNG")
    _img(root / ".hidden" / "c.png")
    _img(root / ".d.png")
    (root / "notes.txt").write_text("x")
    os.symlink(root, root / "sub" / "loop")
    coll = scan_images(root)
    assert coll.images == ["a.jpg", "sub/b.PNG"]
    assert coll.captions == []
    assert coll.source["ignored_types"] == {".txt": 1}   # hidden files are neither read nor counted


def test_folder_scan_lists_dead_and_looping_links_as_skipped_never_as_types(tmp_path):
    """A dead link named like a photo is a photo the user lost: say so; links to nowhere have no file type."""
    _img(tmp_path / "a.jpg")
    os.symlink("/nonexistent", tmp_path / "broken_link.jpg")
    os.symlink(tmp_path / "loopb", tmp_path / "loopa")
    os.symlink(tmp_path / "loopa", tmp_path / "loopb")
    os.symlink(tmp_path / "loopc.png", tmp_path / "loopc.png")
    coll = scan_images(tmp_path)
    assert coll.images == ["a.jpg"]
    assert coll.skipped == [("broken_link.jpg", BROKEN_LINK), ("loopc.png", BROKEN_LINK)]
    assert "符号链接失效或循环 / broken or looping symbolic link" in BROKEN_LINK
    assert "ignored_types" not in coll.source


def test_folder_scan_follows_links_inside_the_collection_and_outside_ones_only_when_asked(tmp_path):
    """A link to /etc made extraction walk its files (and the page could then show them): links that stay
    inside the collection are followed, those leading out are left out and named, unless follow_links."""
    root, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    _img(root / "album" / "a.jpg")
    _img(elsewhere / "secret.jpg")
    _img(elsewhere / "single.png")
    _img(root / ".archive" / "b.jpg")
    os.symlink(root / ".archive", root / "archive")            # inside (to a folder not walked otherwise): followed
    os.symlink(elsewhere, root / "outside")                    # a folder outside: left out
    os.symlink(elsewhere / "single.png", root / "linked.png")  # a file outside: left out too
    coll = scan_images(root)
    assert coll.images == ["album/a.jpg", "archive/b.jpg"]
    assert not any("secret" in p or "linked" in p for p in coll.images)
    assert sorted(coll.source["outside_links"]) == [f"linked.png -> {elsewhere / 'single.png'}", f"outside -> {elsewhere}"]
    followed = scan_images(root, follow_links=True)
    assert "outside/secret.jpg" in followed.images and "linked.png" in followed.images
    assert "outside_links" not in followed.source


def test_folder_scan_skips_fifos_without_opening_them(tmp_path):
    """A FIFO named x.jpg was in neither the images, the skipped list nor the counts; opening it blocks forever."""
    _img(tmp_path / "a.jpg")
    os.mkfifo(tmp_path / "x.jpg")
    coll = scan_images(tmp_path)   # a test that hangs here is the bug
    assert coll.images == ["a.jpg"]
    assert [p for p, _ in coll.skipped] == ["x.jpg"] and "FIFO" in coll.skipped[0][1] and "not opened" in coll.skipped[0][1]
    with pytest.raises(InputError, match=r"^无法读取图片 / query image not readable: .*x.jpg \(命名管道 / a FIFO"):
        open_user_image(tmp_path / "x.jpg", what="query image")
    with pytest.raises(InputError, match=r"queries file not readable: .*x.jpg \(命名管道 / a FIFO"):
        read_query_lines(tmp_path / "x.jpg")


def test_indexing_the_working_folder_leaves_out_the_tools_own_outputs(tmp_path):
    """extract --images . used to index outputs/ and the grids the tool drew; both are left out and counted."""
    from clip_retrieval.grid import render_grid

    _img(tmp_path / "a.jpg")
    features = tmp_path / "old_features"
    _img(features / "thumb.png")
    (features / "manifest.json").write_text("{}")
    (features / "image_features.pt").write_bytes(b"x")
    _img(tmp_path / "out" / "not_yet_features.png")
    render_grid(tmp_path / "grid.png", "金毛", [])
    _img(tmp_path / "my_drawing.png")
    coll = scan_images(tmp_path, exclude=(tmp_path / "out",))
    assert coll.images == ["a.jpg", "my_drawing.png"]
    assert sorted(coll.source["excluded"]) == ["grid.png", "old_features/", "out/"]


def test_folder_scan_counts_the_files_it_cannot_read_by_type(tmp_path):
    """A library of Photoshop files must not vanish silently: the types left out are counted and named."""
    _img(tmp_path / "a.jpg")
    for name in ("IMG_1.PSD", "sub/IMG_2.psd", "clip.mov", "README"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert scan_images(tmp_path).source["ignored_types"] == {".psd": 2, "(none)": 1, ".mov": 1}
    (tmp_path / "a.jpg").unlink()
    with pytest.raises(InputError, match=r": 没有找到图片 / no images found .*; found only \.psd, \(none\), \.mov: convert"):
        scan_images(tmp_path)


def test_heic_and_raw_are_listed_and_a_raw_beside_its_jpeg_is_indexed_once_as_the_jpeg(tmp_path):
    """A camera set to RAW+JPEG writes IMG_1.CR2 and IMG_1.JPG: one photo, indexed as the JPEG."""
    for name in ("IMG_1.JPG", "IMG_1.CR2", "IMG_2.NEF", "sub/IMG_3.heic", "sub/IMG_3.dng", "other/IMG_3.arw",
                 "IMG_4.avif"):
        _img(tmp_path / name) if name.endswith(".JPG") else (tmp_path / name).parent.mkdir(exist_ok=True)
        if not name.endswith(".JPG"):
            (tmp_path / name).write_bytes(b"x")
    coll = scan_images(tmp_path)
    assert coll.images == ["IMG_1.JPG", "IMG_2.NEF", "IMG_4.avif", "other/IMG_3.arw", "sub/IMG_3.heic"]
    assert coll.source["raw_beside_jpeg"] == ["IMG_1.CR2", "sub/IMG_3.dng"]
    assert "ignored_types" not in coll.source


def test_missing_captions_file_says_how_to_name_one(tmp_path, cli):
    """Outside a checkout (a wheel install) the default data/captions.csv is not there: say what to pass."""
    missing = tmp_path / "data" / "captions.csv"
    ran = cli("extract", "--csv", missing, "--model", "demo", "--out", tmp_path / "out", "--quiet")
    assert ran.returncode == 2 and not (tmp_path / "out").exists()
    assert ran.stderr.strip() == (f"clipsou: 找不到描述文件 / captions file not found: {missing}; pass --csv FILE with "
                                  f"image_path,caption rows (extract also takes --images DIR, a folder without "
                                  f"captions)")


def test_a_file_for_a_folder_and_a_folder_for_a_file_say_which_option_fits(tmp_path):
    photo = _img(tmp_path / "photos" / "a.jpg")
    with pytest.raises(InputError, match=rf"^{re.escape(str(photo))}: 是文件，--images 需要文件夹 / is a file; --images takes a folder "
                                         rf"\(its parent: --images {re.escape(str(photo.parent))}\)$"):
        scan_images(photo)
    with pytest.raises(InputError, match=rf"^{re.escape(str(photo.parent))}: 是文件夹，不是描述文件 / is a folder, not a captions file; "
                                         rf"for a folder of images use --images {re.escape(str(photo.parent))}$"):
        read_captions(photo.parent)


def test_folder_without_images(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InputError, match="no images found"):
        scan_images(tmp_path)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_cmyk_palette_rgba_and_16bit_convert_to_sensible_rgb():
    cmyk = open_image(_encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.mode == "RGB" and cmyk.getpixel((4, 4))[0] > 200 and cmyk.getpixel((4, 4))[1] < 60

    pal = Image.new("P", (8, 8))
    pal.putpalette([0, 0, 255] + [0] * 765)
    assert open_image(_encode(pal, "PNG")).getpixel((1, 1)) == (0, 0, 255)

    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert open_image(_encode(rgba, "PNG")).getpixel((1, 1)) == (255, 255, 255)  # transparent -> white

    deep = Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16))
    assert deep.mode.startswith("I;16")
    value = open_image(_encode(deep, "PNG")).getpixel((1, 1))
    assert 150 < value[0] < 160 and value[0] == value[1] == value[2]  # 40000/65535*255 = 155.6


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    assert open_image(_encode(img, "JPEG", exif=exif)).size == (20, 40)


def test_truncated_and_garbage_files_are_reasons_not_crashes():
    data = _encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    with pytest.raises(ValueError, match="truncated|corrupt|readable"):
        open_image(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable image"):
        open_image(b"this is not an image")


def test_decompression_bomb_is_skipped_without_decoding():
    data = _encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(ValueError, match=r"too many pixels \(3000x3000 > 1000000\); extract --max-pixels"):
        open_image(data, max_pixels=1_000_000)


def test_max_pixels_is_the_one_limit_even_past_pils_own(monkeypatch):
    """A user who raises --max-pixels gets the file in; below it, PIL's refusal reads as ours, with the fix."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)   # PIL refuses outright above 2,000,000
    data = _encode(Image.new("L", (1500, 1500)), "PNG")
    assert open_image(data, max_pixels=3_000_000).size == (1500, 1500)
    assert Image.MAX_IMAGE_PIXELS == 1_000_000
    with pytest.raises(ValueError, match=r"^too many pixels \(2250000 > 500000\); extract --max-pixels N includes it$"):
        open_image(data, max_pixels=500_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)     # PIL only warns between its limit and twice it
    small = _encode(Image.new("L", (400, 400)), "PNG")
    assert open_image(small, max_pixels=200_000).size == (400, 400)


def test_every_skip_reason_names_a_fix():
    for data, fix in [(b"", "copy it again or delete it"), (b"plain text", "convert it to JPEG or PNG")]:
        with pytest.raises(ValueError, match=fix):
            open_image(data)
    jpeg = _encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    with pytest.raises(ValueError, match="copy it again from its source"):
        open_image(jpeg[: len(jpeg) // 2])


def test_jpeg_draft_mode_decodes_smaller_but_enough():
    data = _encode(Image.new("RGB", (2000, 1500), (10, 20, 30)), "JPEG")
    img = open_image(data, target_size=224)
    assert min(img.size) >= 224 and img.size[0] < 2000


def test_a_users_image_file_gets_one_clear_error(tmp_path):
    from clip_retrieval.collection.dataset import open_user_image
    from clip_retrieval.core.errors import InputError

    with pytest.raises(InputError, match=r"^无法读取图片 / query image not readable: .*gone.png \("):
        open_user_image(tmp_path / "gone.png", what="query image")
    with pytest.raises(InputError, match=r"^image .*: 是文件夹，请指定一张图片 / is a folder; name one image file in it \(a folder's images: extract"):
        open_user_image(tmp_path)
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"^upload fake.jpg: 无法读取图片 / not a readable image"):
        open_user_image(fake, what="upload", shown_as="fake.jpg")
    Image.new("L", (40, 30)).save(tmp_path / "big.png")   # a query image has no --max-pixels to raise
    with pytest.raises(InputError, match=r"^query image .*big.png: 图片像素过多 / too many pixels \(40x30 > 1000\); use a smaller copy$"):
        open_user_image(tmp_path / "big.png", max_pixels=1000, what="query image")
    Image.new("RGB", (8, 6), "red").save(tmp_path / "ok.png")
    img, data = open_user_image(tmp_path / "ok.png")
    assert img.size == (8, 6) and data == (tmp_path / "ok.png").read_bytes()


def _rows_file(tmp_path: Path, rows: list[str], n_images: int = 3) -> Path:
    for i in range(n_images):
        _img(tmp_path / f"{i}.png", colour=(10 * i, 0, 0))
    return _csv(tmp_path, "image_path,caption\n" + "\n".join(rows) + "\n")


@pytest.mark.parametrize("bad, reason", [
    ('1.png,"一只没有闭合引号的狗', "quote opened on this line is not closed"),
    ("1.png,一只狗,在草地上,很开心,晴天", "expected 2 columns (image_path,caption), got 5"),
    ("1.png", "expected 2 columns"),
    ('1.png,"他说"你好', "text after a closing quote"),
    ("1.png,\0\0\0", "NUL bytes"),
    ("1.png," + "长" * 140_000, "longer than 131,072 characters"),
    (",一只狗", "empty image_path"),
    ("1.png,  ", "empty caption"),
    ("9.png,不存在的图", "image not found"),
])
def test_a_bad_row_is_named_never_merged_or_cut(tmp_path, bad, reason):
    """Each kind of broken row: an error naming the file and the line it starts on, or with skip_bad_rows the
    row left out and listed, and every other row read whole (nothing swallowed into a caption)."""
    rows = [f"{i % 3}.png,第{i}行的描述" for i in range(40)]
    rows[4] = bad
    path = _rows_file(tmp_path, rows)
    with pytest.raises(InputError) as info:
        read_captions(path)
    assert f"{path} line 6: " in str(info.value) and reason in str(info.value)
    assert "--skip-bad-rows" in str(info.value)
    coll = read_captions(path, skip_bad_rows=True)
    assert coll.captions == [f"第{i}行的描述" for i in range(40) if i != 4]
    assert coll.caption_rows == [i + 2 for i in range(40) if i != 4]
    assert [b["line"] for b in coll.source["bad_rows"]] == [6] and reason in coll.source["bad_rows"][0]["reason"]


def test_open_quote_in_a_long_file_names_its_line_not_the_field_limit(tmp_path):
    """An open quote near the top of 10,000 rows used to end as 'field larger than field limit' with no file or line."""
    rows = [f"{i % 3}.png,第{i}张图片的一段相当长的中文描述文字" for i in range(10_000)]
    rows[2] = '0.png,"引号没有闭合'
    path = _rows_file(tmp_path, rows)
    with pytest.raises(InputError, match=r"captions.csv line 4: a quote opened on this line is not closed"):
        read_captions(path)
    coll = read_captions(path, skip_bad_rows=True)
    assert len(coll.captions) == 9_999 and max(len(c) for c in coll.captions) < 40


def test_a_quoted_line_break_is_valid_csv_and_kept(tmp_path):
    """RFC 4180 (and Excel's Alt+Enter) allows a line break inside a quoted caption: it loads, break included,
    the row numbered by its first line and the rows after it numbered as the file numbers them."""
    path = _rows_file(tmp_path, ['0.png,"第一行\r\n第二行"', '1.png,"他说""你好""\n  第二段  \n"', "2.png,普通的一行"])
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n"))   # Excel's CRLF rows
    coll = read_captions(path)
    assert coll.captions == ["第一行\n第二行", '他说"你好"\n  第二段', "普通的一行"]
    assert coll.caption_rows == [2, 4, 7] and not coll.source["bad_rows"]


@pytest.mark.parametrize("rows, line, reason", [
    (['0.png,"开了引号', "这一行是描述的一部分", "1.png,一行自己的描述", "2.png,又一行"], 2,
     "not closed before line 4, which is a row of its own"),
    (["0.png,好的一行", '1.png,"开了引号', "一直到文件末尾", "也没有闭合"], 3, "still open at the end of the file"),
])
def test_a_runaway_quote_is_named_where_it_opened(tmp_path, rows, line, reason):
    """Only a quote that really runs away is refused: into a line that is a row itself, or to the end of the file.
    With skip_bad_rows the opening row goes and the rows it would have swallowed are kept."""
    path = _rows_file(tmp_path, rows)
    with pytest.raises(InputError, match=rf"captions.csv line {line}: a quote opened on this line is {reason}"):
        read_captions(path)
    kept = read_captions(path, skip_bad_rows=True)
    assert [b["line"] for b in kept.source["bad_rows"]][0] == line
    assert "一行自己的描述" in kept.captions or "好的一行" in kept.captions


def test_fifty_thousand_rows_with_line_breaks_and_a_runaway_quote_stay_fast(tmp_path):
    """The guard costs one pass: 50,000 rows, every tenth caption on two lines, load in well under a few seconds,
    and an open quote at the top of them is found at once, not after reading to the end."""
    import time

    rows = [f'{i % 3}.png,"第{i}张图\n第二行"' if i % 10 == 0 else f"{i % 3}.png,第{i}张图片的描述" for i in range(50_000)]
    path = _rows_file(tmp_path, rows)
    started = time.perf_counter()
    coll = read_captions(path)
    assert len(coll.captions) == 50_000 and coll.captions[0] == "第0张图\n第二行"
    assert coll.caption_rows[-1] == 50_000 + 5_000 + 1
    rows[3] = '0.png,"引号没有闭合'
    path = _rows_file(tmp_path, rows)
    with pytest.raises(InputError, match=r"line 6: a quote opened on this line is not closed before line 7"):
        read_captions(path)
    assert time.perf_counter() - started < 10


def test_trailing_empty_cells_and_quoted_commas_are_fine(tmp_path):
    path = _rows_file(tmp_path, ['0.png,"一只狗, 在草地上",,', '1.png,"a ""quoted"" word"  ', "2.png,他说\"你好\""])
    coll = read_captions(path)
    assert coll.captions == ["一只狗, 在草地上", 'a "quoted" word', '他说"你好"'] and not coll.source["bad_rows"]


def test_duplicate_rows_are_kept_once_and_counted(tmp_path):
    path = _rows_file(tmp_path, ["0.png,狗", "1.png,猫", "0.png,狗", " 0.png , 狗 ", "0.png,另一只狗", "1.png,猫"])
    coll = read_captions(path)
    assert coll.captions == ["狗", "猫", "另一只狗"] and coll.caption_rows == [2, 3, 6]
    assert coll.source["duplicate_rows"] == {"count": 3, "lines": [4, 5, 7]}


def test_every_bad_row_is_listed_and_the_error_names_the_first_with_a_count(tmp_path):
    """Refused: the first bad line and how many more; with --skip-bad-rows, each bad row with its own reason."""
    _img(tmp_path / "a.png")
    path = _csv(tmp_path, "image_path,caption\na.png,ok\nmissing.png,狗\na.png,\nb.png,猫\na.png,好\n")
    with pytest.raises(InputError, match=r"captions.csv line 3: image not found: .*missing.png \(and 2 more problems\)"):
        read_captions(path)
    coll = read_captions(path, skip_bad_rows=True)
    assert [(r["line"], r["reason"].split(":")[0]) for r in coll.source["bad_rows"]] == [
        (3, "image not found"), (4, "empty caption for a.png"), (5, "image not found")]
    assert coll.captions == ["ok", "好"] and coll.caption_rows == [2, 6]
