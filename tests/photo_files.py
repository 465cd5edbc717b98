"""Real HEIC, AVIF and DNG files for the decode tests, made in the test (nothing downloaded, no fixture to license).

HEIC: pillow-heif's own x265 encoder (a dev-only dependency; the heic extra ships pi-heif, which
has no encoder). AVIF: Pillow's own encoder. DNG: tifffile writes a minimal DNG 1.4 by hand: IFD0
a preview picture (NewSubFileType 1) and one SubIFD with a 16-bit RGGB Bayer mosaic (NewSubFileType
0), with the tags LibRaw needs (DNGVersion, CFA pattern, black and white levels, a colour matrix).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

ORIENTATION = 0x0112


def halves(width: int, height: int, left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    """A picture whose left half is one colour and right half another: a rotation is easy to see."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = left
    arr[:, width // 2:] = right
    return Image.fromarray(arr)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()


def write_heic(path: Path, picture: Image.Image, orientation: int = 1) -> Path:
    import pillow_heif

    buf = io.BytesIO()
    pillow_heif.from_pillow(picture).save(buf, format="HEIF", quality=95, exif=_exif(orientation))
    path.write_bytes(buf.getvalue())
    return path


def write_avif(path: Path, picture: Image.Image, orientation: int = 1) -> Path:
    picture.save(path, format="AVIF", quality=95, exif=_exif(orientation))
    return path


def _rationals(values) -> tuple:
    out: list[int] = []
    for v in values:
        out += [int(round(v * 10000)), 10000]
    return tuple(out)


def write_dng(path: Path, scene: Image.Image, preview: Image.Image | None, orientation: int = 1) -> Path:
    """A DNG whose raw mosaic shows ``scene`` (RGB, even sides) and whose embedded preview is ``preview``."""
    import tifffile

    rgb = np.asarray(scene.convert("RGB"), np.float64) / 255.0 * 3800 + 100   # 12-bit values above black
    height, width = rgb.shape[:2]
    cfa = np.zeros((height, width), np.uint16)
    cfa[0::2, 0::2] = rgb[0::2, 0::2, 0]   # R G
    cfa[0::2, 1::2] = rgb[0::2, 1::2, 1]   # G B
    cfa[1::2, 0::2] = rgb[1::2, 0::2, 1]
    cfa[1::2, 1::2] = rgb[1::2, 1::2, 2]
    ifd0 = [
        (50706, "B", 4, (1, 4, 0, 0), True),                      # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),                      # DNGBackwardVersion
        (50708, "s", 0, "clipsou test camera", True),             # UniqueCameraModel
        (50721, "2i", 9, _rationals([1, 0, 0, 0, 1, 0, 0, 0, 1]), True),   # ColorMatrix1
        (50728, "2I", 3, _rationals([1, 1, 1]), True),            # AsShotNeutral
        (50778, "H", 1, 21, True),                                # CalibrationIlluminant1: D65
        (271, "s", 0, "clipsou", True), (272, "s", 0, "test", True),
        (274, "H", 1, orientation, True),
    ]
    mosaic = [
        (33421, "H", 2, (2, 2), True),                            # CFARepeatPatternDim
        (33422, "B", 4, (0, 1, 1, 2), True),                      # CFAPattern: RGGB
        (50714, "H", 1, 100, True),                               # BlackLevel
        (50717, "H", 1, 3900, True),                              # WhiteLevel
    ]
    small = np.asarray((preview or scene.resize((16, 16))).convert("RGB"))
    with tifffile.TiffWriter(path) as tw:
        tw.write(small, photometric="rgb", subfiletype=1, subifds=1, extratags=ifd0)
        tw.write(cfa, photometric=32803, subfiletype=0, extratags=mosaic)
    return path
