"""Result grids: the query and its top-k thumbnails with rank, score and caption, as a PNG.

Owns finding a font that has Chinese glyphs (the machine's own, else the subset bundled in
``clip_retrieval/fonts/``) and drawing the sheet. It must not search.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .core.errors import UserError
from .core.files import write_atomic

THUMB = 200
CJK_FONT_FILES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Medium.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simhei.ttf",
)
# A 1.2 MB subset of WenQuanYi Micro Hei (Apache-2.0) covering GB 2312: used when the machine has no CJK font.
BUNDLED_FONT = Path(__file__).resolve().parent / "fonts" / "wqy-microhei-subset.ttf"
INSTALL_HINT = ("没有找到中文字体 / no font with Chinese glyphs found (the bundled one is missing too): install one "
                "(Debian/Ubuntu: apt-get install fonts-wqy-microhei; Fedora: dnf install wqy-microhei-fonts; "
                "macOS and Windows ship one) or set CLIP_RETRIEVAL_FONT=/path/to/font.ttf")


class FontMissingError(UserError):
    """No CJK-capable font on this machine."""


@lru_cache(maxsize=1)
def find_cjk_font() -> str:
    """A font file that has Chinese glyphs: $CLIP_RETRIEVAL_FONT, fontconfig, well-known paths, then the bundled one."""
    candidates = [os.environ.get("CLIP_RETRIEVAL_FONT", "")]
    if shutil.which("fc-match"):
        try:
            found = subprocess.run(["fc-match", "-f", "%{file}", ":lang=zh"], capture_output=True, text=True,
                                   timeout=5).stdout.strip()
            candidates.append(found)
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += [*CJK_FONT_FILES, str(BUNDLED_FONT)]
    for path in candidates:
        if path and Path(path).is_file() and has_glyphs(path, "金毛灰猫"):
            return path
    raise FontMissingError(INSTALL_HINT)


def has_glyphs(font_path: str, text: str) -> bool:
    """True when every character draws as its own shape, not the font's missing-glyph box."""
    font = ImageFont.truetype(font_path, 32)
    missing = _bitmap(font, "\U0010fffd")
    shapes = [_bitmap(font, ch) for ch in text]
    return all(s != missing and any(s) for s in shapes) and len(set(shapes)) == len(set(text))


def _bitmap(font: ImageFont.FreeTypeFont, ch: str) -> bytes:
    img = Image.new("L", (40, 40), 0)
    ImageDraw.Draw(img).text((2, 2), ch, font=font, fill=255)
    return img.tobytes()


def _thumb(path: str) -> Image.Image:
    """The picture centred on a white square tile."""
    from .collection.dataset import thumbnail

    img = thumbnail(path, THUMB)
    tile = Image.new("RGB", (THUMB, THUMB), (255, 255, 255))
    tile.paste(img, ((THUMB - img.width) // 2, (THUMB - img.height) // 2))
    return tile


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 1 else ""
    return text


def render_grid(out: str | os.PathLike, query_text: str, results: list, query_image: str | None = None) -> Path:
    """Write a PNG: the query (text, or its image) first, then each hit with rank, score and caption."""
    font_path = find_cjk_font()
    font = ImageFont.truetype(font_path, 16)
    small = ImageFont.truetype(font_path, 13)
    cols = len(results) + 1
    pad, label = 10, 52
    sheet = Image.new("RGB", (cols * (THUMB + pad) + pad, THUMB + label + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    x = pad
    if query_image:
        sheet.paste(_thumb(query_image), (x, pad))
    else:
        draw.rectangle([x, pad, x + THUMB, pad + THUMB], fill=(240, 244, 250), outline=(120, 140, 180))
        words = _fit(draw, query_text, ImageFont.truetype(font_path, 28), THUMB - 16)
        draw.text((x + 8, pad + THUMB // 2 - 16), words, font=ImageFont.truetype(font_path, 28), fill=(20, 30, 60))
    draw.text((x, pad + THUMB + 6), _fit(draw, "查询 / query", font, THUMB), font=font, fill=(0, 0, 0))
    for hit in results:
        x += THUMB + pad
        sheet.paste(_thumb(hit.image_path), (x, pad))
        draw.text((x, pad + THUMB + 4), f"#{hit.rank}  {hit.score:.3f}", font=font, fill=(0, 0, 0))
        label = hit.caption or Path(hit.image_path).name   # a folder indexed without captions: its file name
        draw.text((x, pad + THUMB + 26), _fit(draw, label, small, THUMB), font=small, fill=(60, 60, 60))
    out = Path(out)
    from PIL.PngImagePlugin import PngInfo

    from .collection.dataset import TOOL_MARK

    mark = PngInfo()
    mark.add_text(TOOL_MARK, "result grid")   # so extract --images over this folder leaves the grid out
    write_atomic(out, lambda tmp: sheet.save(tmp, format="PNG", pnginfo=mark))
    return out
