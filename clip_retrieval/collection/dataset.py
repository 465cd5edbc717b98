"""Reading what the user hands in: a collection (captions.csv or a folder of images), a
batch of queries, an image file, validated and decoded safely.

Owns: CSV encodings and quirks, folder walking, the queries file of a batch search,
turning any image file into an RGB picture (or a reason it was skipped), opening an image
file the user named with one clear error (``open_user_image``), and the torch Dataset the
extraction DataLoader reads. Paths are resolved by ``store.resolve_path``. It must not load
models or write outputs.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import functools
import importlib.util
import io
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageOps

from ..core.errors import InputError
from ..core.extras import install_hint
from ..core.hashing import sha256_bytes
from ..core.paths import resolve_path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# The file-type table beyond Pillow's own formats: each needs an extra (or a Pillow built with it).
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})          # iPhone photos; the heic extra (pi-heif)
AVIF_EXTENSIONS = frozenset({".avif"})                           # Pillow 11.3+ wheels read AVIF themselves
RAW_EXTENSIONS = frozenset({".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf",
                            ".rw2", ".pef", ".srw"})             # camera RAW; the raw extra (rawpy, LibRaw)
PHOTO_EXTENSIONS = IMAGE_EXTENSIONS | HEIF_EXTENSIONS | AVIF_EXTENSIONS | RAW_EXTENSIONS   # what --images lists
# A RAW file's embedded preview is used when its shorter side is at least this (and the model's input size).
RAW_PREVIEW_MIN_SIDE = 256
# About 89 megapixels: PIL's own default warns there; bigger files are skipped, not decoded.
DEFAULT_MAX_PIXELS = 89_478_485
CSV_ENCODINGS = ("utf-8-sig", "gb18030")
BROKEN_LINK = "符号链接失效或循环 / broken or looping symbolic link; point it at the photo again or delete it"


@dataclass
class Collection:
    """Unique images and their captions (an image may have several, or none)."""

    root: Path
    images: list[str]                       # paths as written, relative to root unless absolute
    captions: list[str] = field(default_factory=list)
    caption_image: list[int] = field(default_factory=list)   # caption i belongs to images[caption_image[i]]
    caption_rows: list[int] = field(default_factory=list)    # CSV line number of caption i
    image_rows: list[int] = field(default_factory=list)      # first CSV line of each image (0: folder)
    source: dict = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, reason) found unreadable while listing

    def resolve(self, path: str) -> Path:
        return resolve_path(self.root, path)


def special_file_reason(path: str | os.PathLike) -> str:
    """Why ``path`` is not a plain file one may read ('' when it is, or when it does not exist).

    A FIFO, socket or device would block or never end when read, so it is named and never
    opened; ``os.stat`` looks at it without opening it.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return ""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return ""
    kind = ("命名管道 / a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "套接字 / a socket" if stat.S_ISSOCK(mode)
            else "设备文件 / a device file" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "特殊文件 / a special file")
    return f"{kind}, not a regular file; not opened, as reading it could wait forever"


def read_user_text(path: str | os.PathLike, what: tuple[str, str] = ("文本文件", "text file"),
                   encodings: tuple[str, ...] = CSV_ENCODINGS) -> tuple[str, str]:
    """A text file a user made, decoded, and the encoding that read it.

    A byte-order mark decides first (UTF-16, as Windows Notepad and Excel's "Unicode text" write,
    or UTF-8), then each of ``encodings`` is tried. Anything else is an ``InputError`` naming
    the file and how to save it.
    """
    path = Path(path)
    special = special_file_reason(path)
    if special:
        raise InputError(f"无法读取{what[0]} / {what[1]} not readable: {path} ({special})")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"无法读取{what[0]} / {what[1]} not readable: {path} ({exc.strerror or exc})") from exc
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and not raw.startswith(codecs.BOM_UTF32_LE):
        try:
            return raw.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: UTF-16 文本已损坏 / UTF-16 text (it starts with a UTF-16 byte-order mark) that "
                             f"does not decode at byte {exc.start}; save it again as UTF-8") from exc
    for encoding in encodings:
        try:
            return raw.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    names = " or ".join("UTF-8" if e.startswith("utf-8") else "GBK/GB18030" for e in encodings)
    raise InputError(f"{path}: 不是 UTF-8 或 GBK 文本，请另存为 UTF-8 / not {names} (nor UTF-16 with a byte-order "
                     f"mark) text; save it as UTF-8")


_START, _UNQUOTED, _QUOTED, _AFTER_QUOTE = range(4)


def _ends_inside_quotes(line: str, state: int) -> int:
    """The quoting state after ``line`` (``_QUOTED``: a quoted field runs on to the next line).

    The same rules as ``csv.reader(skipinitialspace=True)``: a quote opens a field only at its
    start, and ``""`` inside a quoted field is a quote. Linear in the line, so a record's end
    is found without re-parsing the lines before it.
    """
    for ch in line:
        if state == _QUOTED:
            if ch == '"':
                state = _AFTER_QUOTE
        elif state == _AFTER_QUOTE:
            state = _QUOTED if ch == '"' else _START if ch == "," else _UNQUOTED
        elif ch == ",":
            state = _START
        elif state == _START and ch == '"':
            state = _QUOTED
        elif state == _START and ch == " ":
            pass
        else:
            state = _UNQUOTED
    return _QUOTED if state == _QUOTED else _START


def _csv_lines(text: str, is_row: Callable[[str], bool] | None = None):
    """(first line number, cells or None, problem) for each CSV record.

    A quoted field may hold line breaks (RFC 4180; what a spreadsheet writes for Alt+Enter), so a
    record may span lines. A quote that runs away is still found where it opened and never
    swallows later rows: the record stops being continued, and is a problem, when it reaches the
    end of the file, grows past the CSV field limit, or would take in a line that ``is_row``
    says is a row of its own. Parsing then goes on from the line after the one that opened it.
    """
    lines = text.split("\n") if "\n" in text or "\r" not in text else text.split("\r")   # old Mac files: \r only
    limit = csv.field_size_limit()
    i = 0
    while i < len(lines):
        first = i
        record = [lines[i].rstrip("\r")]
        size = len(record[0])
        problem = ""
        while _ends_inside_quotes(record[-1], _START if len(record) == 1 else _QUOTED) == _QUOTED:
            if "\0" in record[-1]:
                break
            if i + 1 >= len(lines) or size > limit or (is_row is not None and is_row(lines[i + 1].rstrip("\r"))):
                problem = _runaway(first + 1, i + 1 - first, i + 1 >= len(lines), size > limit)
                break
            i += 1
            record.append(lines[i].rstrip("\r"))
            size += len(record[-1]) + 1
        if problem:
            yield first + 1, None, problem
            i = first + 1
            continue
        i += 1
        joined = "\n".join(record).rstrip(" \t")
        if "\0" in joined:
            yield first + 1, None, "contains NUL bytes; is this a CSV text file?"
            continue
        try:
            yield first + 1, next(csv.reader([joined], skipinitialspace=True, strict=True), []), ""
        except csv.Error as exc:
            yield first + 1, None, _csv_problem(str(exc))


def _runaway(line: int, spanned: int, at_end: bool, too_long: bool) -> str:
    """Why an open quote that starts on ``line`` is refused (it is reported on that line)."""
    if too_long:
        where = f"still open after {csv.field_size_limit():,} characters"
    elif at_end:
        where = "still open at the end of the file" if spanned > 1 else "not closed on it"
    else:
        where = f"not closed before line {line + spanned}, which is a row of its own"
    return (f"a quote opened on this line is {where} (it would swallow the rows below); close it, or write a "
            f"quote inside a quoted caption as two quotes \"\"")


def _csv_problem(message: str) -> str:
    if "unexpected end of data" in message:
        return _runaway(0, 1, at_end=True, too_long=False)
    if "field larger than field limit" in message:
        return f"a field longer than {csv.field_size_limit():,} characters; is this a CSV of image_path,caption?"
    if "expected after" in message:
        return "text after a closing quote; quote the whole caption, e.g. \"他说\"\"你好\"\"\""
    return f"not a valid CSV row ({message})"


def read_captions(csv_path: str | os.PathLike, check_images: bool = True, skip_bad_rows: bool = False) -> Collection:
    """Parse ``image_path,caption`` rows as real files arrive (BOM, GBK, stray spaces, blank lines).

    A row is never merged with the next or cut short: an open quote, a wrong number of
    columns, an empty cell or a missing image is a problem naming the file and line. Problems
    are reported together (``InputError``), or with ``skip_bad_rows`` the rows are left out and
    listed in ``source["bad_rows"]``. Repeated identical rows are kept once and counted in
    ``source["duplicate_rows"]``.
    """
    path = Path(csv_path)
    if path.is_dir():
        raise InputError(f"{path}: 是文件夹，不是描述文件 / is a folder, not a captions file; "
                         f"for a folder of images use --images {path}")
    if not path.is_file():
        raise InputError(f"找不到描述文件 / captions file not found: {path}; pass --csv FILE with image_path,caption rows "
                         f"(extract also takes --images DIR, a folder without captions)")
    text, encoding = read_user_text(path, ("描述文件", "captions file"))
    if not text.strip():
        raise InputError(f"{path}: 文件为空 / empty file; expected a header row 'image_path,caption'")
    columns: list[str] = []
    root = path.resolve().parent

    def looks_like_row(line: str) -> bool:
        """Whether a line an open quote would take in is an ``image_path,caption`` row of its own."""
        try:
            cells = next(csv.reader([line.rstrip(" \t")], skipinitialspace=True, strict=True), [])
        except csv.Error:
            return False
        if not columns or len(cells) < len(columns) or not cells[ip].strip():
            return False
        image = cells[ip].strip()
        return Path(image).suffix.lower() in PHOTO_EXTENSIONS or resolve_path(root, image).is_file()

    rows = _csv_lines(text, looks_like_row)
    for line, header, problem in rows:
        if problem:
            raise InputError(f"{path} line {line}: 表头有误 / header: {problem}")
        if any(cell.strip() for cell in header):
            break
    columns[:] = [cell.strip().lower() for cell in header]
    missing = [c for c in ("image_path", "caption") if c not in columns]
    if missing:
        raise InputError(f"{path} line {line}: missing column {', '.join(missing)} "
                         f"(found {', '.join(repr(c) for c in columns)}); "
                         f"表头应为 image_path,caption / the header must be 'image_path,caption'")
    ip, cp = columns.index("image_path"), columns.index("caption")
    coll = Collection(root=root, images=[], source={"csv": str(path), "encoding": encoding})
    index: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    problems: list[tuple[int, str]] = []
    duplicates: list[int] = []
    for line, row, problem in rows:
        if not problem:
            if not any(cell.strip() for cell in row):
                continue
            problem = _row_problem(row, columns, ip, cp)
        if not problem:
            image, caption = row[ip].strip(), row[cp].strip()
            if (image, caption) in seen:
                duplicates.append(line)
                continue
            if image not in index and check_images and not resolve_path(root, image).is_file():
                problem = f"image not found: {resolve_path(root, image)}"
        if problem:
            problems.append((line, problem))
            continue
        seen.add((image, caption))
        if image not in index:
            index[image] = len(coll.images)
            coll.images.append(image)
            coll.image_rows.append(line)
        coll.captions.append(caption)
        coll.caption_image.append(index[image])
        coll.caption_rows.append(line)
    if problems and not skip_bad_rows:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise InputError(f"{path} line {problems[0][0]}: {problems[0][1]}{more}; "
                         f"请修改该行 / fix the row, or extract --skip-bad-rows leaves bad rows out")
    coll.source["bad_rows"] = [{"line": line, "reason": reason} for line, reason in problems]
    coll.source["duplicate_rows"] = {"count": len(duplicates), "lines": duplicates[:100]}
    if not coll.images:
        raise InputError(f"{path}: 没有可用的行 / no usable rows; add lines 'image_path,caption'")
    return coll


def _row_problem(row: list[str], columns: list[str], ip: int, cp: int) -> str:
    """Why a parsed row cannot be used as it stands ('' when it can)."""
    extra = [cell for cell in row[len(columns):] if cell.strip()]
    if len(row) < len(columns) or extra:
        return (f"expected {len(columns)} columns ({','.join(columns)}), got {len(row)}; "
                f"quote captions that contain commas")
    if not row[ip].strip():
        return "empty image_path"
    if not row[cp].strip():
        return f"empty caption for {row[ip].strip()}"
    return ""


# Written into every grid PNG the tool draws, so a later --images over the same folder leaves it out.
TOOL_MARK = "clip_retrieval"
FEATURE_FILES = ("manifest.json", "image_features.pt")   # a folder holding both is a features folder of ours


def is_tool_output(path: Path) -> bool:
    """A picture this tool wrote (a result grid): a PNG whose header carries ``TOOL_MARK`` (one small read)."""
    if path.suffix.lower() != ".png":
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return b"tEXt" + TOOL_MARK.encode() + b"\0" in head


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def scan_images(folder: str | os.PathLike, follow_links: bool = False,
                exclude: tuple[str | os.PathLike, ...] = ()) -> Collection:
    """Index a folder tree with no captions: common image types, hidden entries skipped, link loops survived.

    Policy, as the ``--images`` help says: a symbolic link (to a folder or a file) is followed when
    its target lies inside the collection; one leading outside it (a link to /etc) is left out and
    counted in ``source["outside_links"]`` unless ``follow_links``. Features folders, the folders in
    ``exclude`` (the output folder) and grids the tool drew are left out and counted in
    ``source["excluded"]``, so indexing the current folder never indexes the tool's own files. A
    FIFO, socket or device with an image name is skipped with its reason and never opened.
    """
    root = Path(folder)
    if root.is_file():
        raise InputError(f"{root}: 是文件，--images 需要文件夹 / is a file; --images takes a folder "
                         f"(its parent: --images {root.parent})")
    if not root.is_dir():
        raise InputError(f"找不到图片文件夹 / image folder not found: {root}")
    root = root.resolve()
    excluded_dirs = {Path(p).resolve() for p in exclude}
    seen_dirs: set[tuple[int, int]] = set()
    found: list[str] = []
    skipped: list[tuple[str, str]] = []
    ignored: dict[str, int] = {}   # files of other types, by extension: a HEIC library must not vanish silently
    outside: list[str] = []
    excluded: list[str] = []

    def leads_outside(entry: Path) -> bool:
        if follow_links or not entry.is_symlink():
            return False
        if _inside(entry.resolve(), root):
            return False
        outside.append(f"{entry.relative_to(root)} -> {os.readlink(entry)}")
        return True

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        if here != root and (here.resolve() in excluded_dirs or all((here / f).is_file() for f in FEATURE_FILES)):
            excluded.append(f"{here.relative_to(root)}/")
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not leads_outside(here / d))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            suffix = Path(name).suffix.lower()
            full = here / name
            if full.is_symlink() and not full.exists():   # dead or looping: no file, so no type to count
                if suffix in PHOTO_EXTENSIONS:
                    skipped.append((str(full.relative_to(root)), BROKEN_LINK))
                continue
            if suffix not in PHOTO_EXTENSIONS:
                ignored[suffix or "(none)"] = ignored.get(suffix or "(none)", 0) + 1
                continue
            if leads_outside(full):
                continue
            special = special_file_reason(full)
            if special:
                skipped.append((str(full.relative_to(root)), special))
            elif is_tool_output(full):
                excluded.append(str(full.relative_to(root)))
            elif full.is_file():
                found.append(str(full.relative_to(root)))
    found, beside_jpeg = raw_beside_jpeg(found)
    readable = [(path, type_reason(Path(path).suffix)) for path in found]
    found = [path for path, reason in readable if not reason]
    skipped += [(path, reason) for path, reason in readable if reason]
    if not found:
        others = f"; found only {', '.join(ignored)}: convert those photos to JPEG or PNG" if ignored else ""
        needs = next((f"; {len(skipped)} not readable here, e.g. {p}: {r}" for p, r in skipped if "pip install" in r), "")
        raise InputError(f"{root}: 没有找到图片 / no images found (looked for "
                         f"{', '.join(sorted(PHOTO_EXTENSIONS))}){needs}{others}")
    source: dict = {"images": str(root)}
    if beside_jpeg:
        source["raw_beside_jpeg"] = beside_jpeg
    if ignored:
        source["ignored_types"] = dict(sorted(ignored.items(), key=lambda kv: (-kv[1], kv[0])))
    if outside:
        source["outside_links"] = outside
    if excluded:
        source["excluded"] = excluded
    return Collection(root=root, images=found, image_rows=[0] * len(found), source=source, skipped=skipped)


def raw_beside_jpeg(paths: list[str]) -> tuple[list[str], list[str]]:
    """The listed files without RAW files that have a JPEG (or HEIC) of the same name in the same folder,
    and those RAW files.

    A camera set to RAW+JPEG writes both; the photo is indexed once, as the JPEG: it is the camera's
    own rendering (its white balance and picture style, what the photographer saw and shared), it
    decodes in a fraction of the time, and a RAW's embedded preview is that same picture anyway.
    """
    rendered = {str(Path(p).with_suffix("")).lower() for p in paths
                if Path(p).suffix.lower() in {".jpg", ".jpeg"} | HEIF_EXTENSIONS}
    beside = [p for p in paths if Path(p).suffix.lower() in RAW_EXTENSIONS
              and str(Path(p).with_suffix("")).lower() in rendered]
    dropped = set(beside)
    return [p for p in paths if p not in dropped], beside


@functools.cache
def _heif_opener() -> str:
    """Register a HEIF opener with Pillow once; the library that serves it ('' when none is installed).

    pi-heif (the heic extra: libheif and the libde265 decoder, no encoder) comes first; pillow-heif,
    which a user may have for its encoders, serves as well.
    """
    for module in ("pi_heif", "pillow_heif"):
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).register_heif_opener()
            return module
    return ""


@functools.cache
def _avif_in_pillow() -> bool:
    from PIL import features

    return bool(features.check("avif"))


@functools.cache
def _rawpy_installed() -> bool:
    return importlib.util.find_spec("rawpy") is not None


def type_reason(suffix: str) -> str:
    """'' when files of this type decode here; else why not and the extra that reads them (a skip reason)."""
    suffix = suffix.lower()
    if suffix in HEIF_EXTENSIONS and not _heif_opener():
        return f"HEIC/HEIF 照片需要可选依赖 / HEIC/HEIF photos need the heic extra: {install_hint('heic')}"
    if suffix in AVIF_EXTENSIONS and not _avif_in_pillow():
        return (f"AVIF 需要带 AVIF 的 Pillow (11.3+) / AVIF needs a Pillow built with AVIF (11.3+ wheels): "
                f"{install_hint('heic')}")
    if suffix in RAW_EXTENSIONS and not _rawpy_installed():
        return f"RAW 照片需要可选依赖 / camera RAW files need the raw extra: {install_hint('raw')}"
    return ""


def _open_raw(data: bytes | str | os.PathLike, target_size: int | None, max_pixels: int) -> Image.Image:
    """A camera RAW file as RGB: its embedded preview when that is large enough, else a half-size decode.

    "Large enough": the shorter side at least ``RAW_PREVIEW_MIN_SIDE`` and the model's input size
    (``target_size``), so the model never sees an upscaled thumbnail. The half-size decode
    (LibRaw, camera white balance, 8 bits) is four times cheaper than a full one and still larger
    than any model input. The camera's rotation is applied to both.
    """
    import rawpy

    try:
        with rawpy.imread(io.BytesIO(data) if isinstance(data, bytes) else str(data)) as raw:
            sizes = raw.sizes
            if sizes.width * sizes.height > max_pixels:
                raise TooManyPixels(f"{sizes.width}x{sizes.height}", max_pixels)
            preview = _raw_preview(raw, max(RAW_PREVIEW_MIN_SIDE, target_size or 0), max_pixels)
            if preview is not None:
                return preview
            return Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8))
    except rawpy.LibRawError as exc:
        raise ValueError(f"not a readable RAW file ({type(exc).__name__}: {exc}); copy it again from the "
                         f"camera's card") from exc


_RAW_FLIP = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


def _raw_preview(raw, need: int, max_pixels: int) -> Image.Image | None:
    """The embedded preview, upright, when its shorter side is at least ``need``; else None."""
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        img = Image.open(io.BytesIO(thumb.data))
        if img.size[0] * img.size[1] > max_pixels or min(img.size) < need:
            return None
        img.draft("RGB", (need, need))
        img = img.convert("RGB")
    else:
        img = Image.fromarray(thumb.data).convert("RGB")
        if min(img.size) < need:
            return None
    flip = _RAW_FLIP.get(raw.sizes.flip)
    return img.transpose(flip) if flip is not None else img


def read_query_lines(path: str | os.PathLike) -> list[str]:
    """Text queries for a batch search: one per non-empty line (UTF-8 with or without a BOM, or UTF-16 with one)."""
    text, _ = read_user_text(path, ("查询文件", "queries file"), encodings=("utf-8-sig",))
    return [line.strip() for line in text.splitlines() if line.strip()]


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB the way a person would expect to see it."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").split()[-1])
        return background
    return img.convert("RGB")


def open_image(data: bytes | str | os.PathLike, target_size: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, suffix: str = "") -> Image.Image:
    """Decode to RGB, honouring EXIF orientation; with ``target_size``, JPEGs decode at reduced size via draft mode.

    HEIC/HEIF (the heic extra) and AVIF open through Pillow with the same limits; camera RAW files
    (the raw extra; ``suffix`` names the type of ``data`` given as bytes) through ``_open_raw``.

    Without ``target_size`` every pixel is decoded (what ``extract --exact-decode`` asks for).
    ``max_pixels`` is the one size limit: PIL's own decompression-bomb limit neither skips
    smaller files nor keeps bigger ones out when the user raised the limit.

    Raises ``ValueError`` with a short reason and its fix for files that must be skipped.
    """
    if (len(data) if isinstance(data, bytes) else os.path.getsize(data)) == 0:
        raise ValueError("empty file (0 bytes); copy it again or delete it")
    suffix = (suffix or ("" if isinstance(data, bytes) else Path(data).suffix)).lower()
    _heif_opener()   # a HEIC named .jpg opens too
    if type_reason(suffix):
        raise ValueError(type_reason(suffix))
    if suffix in RAW_EXTENSIONS:
        return _open_raw(data, target_size, max_pixels)
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings(), _pil_pixel_limit(max_pixels):
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # the check below decides
            img = Image.open(source)
            width, height = img.size
            if width * height > max_pixels:
                raise TooManyPixels(f"{width}x{height}", max_pixels)
            if target_size and img.format == "JPEG":
                # draft keeps each side >= the request, so later resizing sees enough detail
                img.draft("RGB", (target_size, target_size))
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ValueError:
        raise
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise TooManyPixels(found.group(1) if found else "more", max_pixels) from exc
    except Image.UnidentifiedImageError as exc:
        if suffix in HEIF_EXTENSIONS | AVIF_EXTENSIONS:   # the extra is there, so the file is damaged or misnamed
            raise ValueError(f"not a readable image: damaged, cut short, or not really a {suffix} file; "
                             f"copy it again from its source") from exc
        raise ValueError("not a readable image: unknown or unsupported format; convert it to JPEG or PNG") from exc
    except (OSError, SyntaxError) as exc:
        reason = "truncated or corrupt" if "truncated" in str(exc) or "broken" in str(exc) else "not a readable image"
        raise ValueError(f"{reason}: {exc}; copy it again from its source") from exc


class TooManyPixels(ValueError):
    """A file over the pixel limit; its fix depends on who gave it (extract's option, or a smaller copy)."""

    def __init__(self, size: str, max_pixels: int, fix: str = "extract --max-pixels N includes it"):
        self.size, self.max_pixels = size, max_pixels
        super().__init__(f"too many pixels ({size} > {max_pixels}); {fix}")


@contextlib.contextmanager
def _pil_pixel_limit(max_pixels: int) -> Iterator[None]:
    """PIL refuses outright above twice its limit; lift that limit while a user-raised ``max_pixels`` is in force.

    Only a limit above PIL's own changes PIL's (process-wide) setting, so the web server,
    which never raises it, never touches it.
    """
    saved = Image.MAX_IMAGE_PIXELS
    if saved is None or max_pixels <= saved:
        yield
        return
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def open_user_image(path: str | os.PathLike, target_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                    what: str = "image", shown_as: str | None = None) -> tuple[Image.Image, bytes]:
    """A file the user named (a query image, an image to classify, an upload), decoded, with its bytes.

    Anything wrong with it is an ``InputError`` naming it (``shown_as``, else its path) and why.
    """
    name = str(path) if shown_as is None else shown_as
    if Path(path).is_dir():
        raise InputError(f"{what} {name}: 是文件夹，请指定一张图片 / is a folder; name one image file in it "
                         f"(a folder's images: extract --images, or search --image-dir)")
    special = special_file_reason(path)
    if special:
        raise InputError(f"无法读取图片 / {what} not readable: {name} ({special}); name an image file")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"无法读取图片 / {what} not readable: {name} ({exc.strerror or exc})") from exc
    try:
        return open_image(data, target_size, max_pixels, suffix=Path(path).suffix), data
    except TooManyPixels as exc:   # no option raises the limit for a query image or an upload
        raise InputError(f"{what} {name}: 图片像素过多 / "
                         f"{TooManyPixels(exc.size, exc.max_pixels, 'use a smaller copy')}") from exc
    except ValueError as exc:
        raise InputError(f"{what} {name}: 无法读取图片 / {exc}") from exc


def thumbnail(path: str | os.PathLike, size: int) -> Image.Image:
    """A picture for display, at most ``size`` on each side; a grey square when the file cannot be shown."""
    try:
        img = open_image(path, size)
    except (ValueError, OSError):
        return Image.new("RGB", (size, size), (210, 210, 210))
    img.thumbnail((size, size))
    return img


class ImageFiles:
    """A map-style torch Dataset: index -> (index, pixels or None, sha256, skip reason).

    It reads each file once, hashes those bytes and decodes them, so workers do all the
    I/O and decoding while the main process runs the model.
    """

    def __init__(self, paths: list[Path], preprocess: Callable, target_size: int | None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, seen: Callable[[int, Image.Image], None] | None = None):
        self.paths = paths
        self.preprocess = preprocess
        self.target_size = target_size
        self.max_pixels = max_pixels
        self.seen = seen      # shown each decoded picture (the OCR probe reuses the decode)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        special = special_file_reason(self.paths[i])   # it may have become one since the folder was listed
        if special:
            return i, None, "", special
        try:
            data = Path(self.paths[i]).read_bytes()
        except OSError as exc:
            return i, None, "", f"unreadable: {exc.strerror or exc}"
        digest = sha256_bytes(data)
        try:
            img = open_image(data, self.target_size, self.max_pixels, Path(self.paths[i]).suffix)
            if self.seen is not None:
                self.seen(i, img)
            pixels = self.preprocess(img)
        except ValueError as exc:
            return i, None, digest, str(exc)
        return i, pixels, digest, ""


def collate_images(items: list) -> tuple:
    """Stack the decodable images of a batch; pass the others on with their reasons."""
    import torch

    good = [(i, px, h) for i, px, h, reason in items if px is not None]
    bad = [(i, h, reason) for i, px, h, reason in items if px is None]
    pixels = torch.stack([px for _, px, _ in good]) if good else None
    return [i for i, _, _ in good], pixels, [h for _, _, h in good], bad
