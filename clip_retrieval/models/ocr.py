"""Reading the text in a picture: PaddleOCR's PP-OCRv4 Chinese models through RapidOCR on ONNX Runtime.

Owns opening the OCR engine (the optional ``ocr`` extra: ``rapidocr-onnxruntime``, whose
wheel carries the detection and recognition models, so nothing downloads), the identity of
those models recorded beside the features, and the policy that keeps photos cheap: a
detection pass on a small copy first (a JPEG decodes straight to that size in draft mode),
and only where it finds text a second detection at a size that keeps small screenshot text
readable, then recognition of the detected lines only, cut from a larger copy still. It
must not know how the text is stored (``features.ocrtext``) or matched (``query.textmatch``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.extras import require
from ..core.hashing import fingerprint, sha256_file

log = logging.getLogger(__name__)

ENGINE_NAME = "rapidocr-onnxruntime PP-OCRv4 (ch)"
PROBE_SIDE = 640        # the first detection pass: photos without text stop here
DETECT_SIDE = 1280      # the second pass, where text was found: 12 px screenshot text stays detectable
READ_SIDE = 2000        # lines are cut from a copy this large for the recogniser (48 px high input)
MIN_CONFIDENCE = 0.5    # RapidOCR's own text_score: lines below it are mostly noise
# A probe box counts as a line of text only when it is a line's shape: longer than high (or, written
# vertically, higher than long) and not a large part of the picture. The detector also outlines
# big smooth shapes in photos (a pet, a car), which recognition would then read for nothing.
LINE_ASPECT = 1.5
LINE_MAX_THICKNESS = 0.25  # of the picture's long side


@dataclass(frozen=True)
class TextLine:
    """One recognised line: its text, the recogniser's confidence, and its corners in the image's pixels."""

    text: str
    confidence: float
    box: tuple[tuple[int, int], ...]   # four (x, y) corners, clockwise from the top left

    def to_json(self) -> dict:
        return {"text": self.text, "confidence": round(self.confidence, 4), "box": [list(p) for p in self.box]}


def _shrunk(img: Image.Image, side: int) -> tuple[Image.Image, float]:
    """``img`` with its long side at most ``side``, and the factor from its pixels back to ``img``'s."""
    scale = side / max(img.size)
    if scale >= 1.0:
        return img, 1.0
    small = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    return small, img.width / small.width


def _line_shaped(box: np.ndarray, long_side: int) -> bool:
    """Whether a detected quadrilateral has the shape of a line of text (see ``LINE_ASPECT``)."""
    corners = np.asarray(box, dtype=np.float32)
    width = float(np.linalg.norm(corners[1] - corners[0]))
    height = float(np.linalg.norm(corners[3] - corners[0]))
    long, thick = max(width, height), max(1.0, min(width, height))
    return long / thick >= LINE_ASPECT and thick <= LINE_MAX_THICKNESS * long_side


def _bgr(img: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1])


class OcrEngine:
    """The opened models; ``read`` one picture. Open with ``open_ocr``."""

    def __init__(self, threads: int | None = None):
        rapidocr = require("rapidocr_onnxruntime")
        options = {"print_verbose": False}
        if threads:
            options.update(intra_op_num_threads=threads, inter_op_num_threads=1)
        options.update(det_limit_type="max")   # never enlarge: the sizes below are chosen here
        self._engine = rapidocr.RapidOCR(**options)
        self.identity = engine_identity()

    def _detect(self, img: Image.Image) -> list[np.ndarray]:
        boxes, _ = self._engine.text_det(_bgr(img))
        if boxes is None or len(boxes) == 0:
            return []
        return list(self._engine.sorted_boxes(boxes))

    def has_text(self, probe: Image.Image) -> bool:
        """The cheap first pass on a small copy: does anything look like a line of text?"""
        small = _shrunk(probe, PROBE_SIDE)[0]
        return any(_line_shaped(box, max(small.size)) for box in self._detect(small))

    def read(self, img: Image.Image, probe: Image.Image | None = None) -> list[TextLine]:
        """The lines of text in ``img`` (boxes in ``img``'s pixels), top to bottom; [] when there are none.

        ``probe`` is a small copy for the first pass (a JPEG decoded in draft mode, far cheaper than
        ``img``); without one ``img`` is shrunk.
        """
        if not self.has_text(probe if probe is not None else img):
            return []
        return self.read_found(img)

    def read_found(self, img: Image.Image) -> list[TextLine]:
        """The second pass and recognition, for a picture whose probe found text."""
        detect, to_img = _shrunk(img, DETECT_SIDE)
        boxes = self._detect(detect)
        if not boxes:
            return []
        source, source_to_img = _shrunk(img, READ_SIDE)
        to_source = to_img / source_to_img
        scaled = [np.asarray(b, dtype=np.float32) * to_source for b in boxes]
        crops = self._engine.get_crop_img_list(_bgr(source), scaled)
        results, _ = self._engine.text_rec(crops, False)
        lines = []
        for box, result in zip(scaled, results):
            text, score = str(result[0]).strip(), float(result[1])
            if text and score >= MIN_CONFIDENCE:
                corners = tuple((int(round(x * source_to_img)), int(round(y * source_to_img))) for x, y in box)
                lines.append(TextLine(text, score, corners))
        return lines


@functools.lru_cache(maxsize=1)
def engine_identity() -> dict:
    """What the sidecar records about the engine (its models' fingerprint, this module's sizes), without
    opening a session: text read by another engine or with other settings is read again by ``--update``."""
    from importlib.metadata import PackageNotFoundError, version

    rapidocr = require("rapidocr_onnxruntime")
    models = sorted((Path(rapidocr.__file__).resolve().parent / "models").glob("*.onnx"))
    try:
        installed = version("rapidocr-onnxruntime")
    except PackageNotFoundError:
        installed = "?"
    return {"name": ENGINE_NAME, "version": installed,
            "fingerprint": fingerprint("".join(sha256_file(p) for p in models)),
            "models": [p.name for p in models], "probe_side": PROBE_SIDE, "detect_side": DETECT_SIDE,
            "read_side": READ_SIDE, "min_confidence": MIN_CONFIDENCE,
            "line_aspect": LINE_ASPECT, "line_max_thickness": LINE_MAX_THICKNESS}


def open_ocr(threads: int | None = None) -> OcrEngine:
    """The OCR engine, or ``MissingExtraError`` with ``pip install 'clipsou[ocr]'`` when the extra is absent."""
    return OcrEngine(threads)
