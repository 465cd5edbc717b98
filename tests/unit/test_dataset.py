"""Reading collections the way real files arrive, and decoding every kind of image safely."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_retrieval.dataset import open_image, read_captions, scan_images
from clip_retrieval.errors import InputError


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
    path.write_bytes(b"\xff\xfe\x00\x81\x30\xff\xff")
    with pytest.raises(InputError, match="not UTF-8 or GBK"):
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
    with pytest.raises(ValueError, match="too many pixels"):
        open_image(data, max_pixels=1_000_000)


def test_jpeg_draft_mode_decodes_smaller_but_enough():
    data = _encode(Image.new("RGB", (2000, 1500), (10, 20, 30)), "JPEG")
    img = open_image(data, target_size=224)
    assert min(img.size) >= 224 and img.size[0] < 2000


def test_a_users_image_file_gets_one_clear_error(tmp_path):
    from clip_retrieval.dataset import open_user_image
    from clip_retrieval.errors import InputError

    with pytest.raises(InputError, match=r"query image not readable: .*gone.png \("):
        open_user_image(tmp_path / "gone.png", what="query image")
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"^upload fake.jpg: not a readable image"):
        open_user_image(fake, what="upload", shown_as="fake.jpg")
    Image.new("RGB", (8, 6), "red").save(tmp_path / "ok.png")
    img, data = open_user_image(tmp_path / "ok.png")
    assert img.size == (8, 6) and data == (tmp_path / "ok.png").read_bytes()
