"""The text read in the images, beside their features: ``ocr_text.json``, versioned like the manifest.

Owns the sidecar's format: one entry per indexed image (the manifest's rows, in order, with
the image's sha256 so ``--update`` can keep the lines of unchanged files), each recognised
line with its confidence and box, the OCR engine's identity (text read by other models or
settings is read again), the images OCR failed on, and the features generation it was
written with (``store.save`` writes it in the same atomic set, so a sidecar from another
extraction is detected, never matched against the wrong rows). It must not run OCR
(``models.ocr``) or match queries (``query.textmatch``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from .. import __version__
from ..core.errors import FeatureStoreError, NewerFormatError
from ..core.hashing import fingerprint, sha256_bytes

log = logging.getLogger(__name__)

OCR_FILE = "ocr_text.json"
OCR_FORMAT_VERSION = 1


class OcrLine(TypedDict):
    """A recognised line: the text, the recogniser's confidence (0..1), four (x, y) corners in the image's pixels."""

    text: str
    confidence: float
    box: list[list[int]]


class OcrImage(TypedDict):
    """The lines read in one indexed image (the manifest's row of the same position)."""

    sha256: str
    lines: list[OcrLine]


class OcrFailure(TypedDict):
    """An image whose picture features were kept but whose text could not be read."""

    path: str
    reason: str


@dataclass
class OcrText:
    """The typed ``ocr_text.json``: ``images[i]`` is the text of the manifest's image ``i``."""

    engine: dict
    images: list[OcrImage]
    failed: list[OcrFailure] = field(default_factory=list)
    generation: str = ""
    format_version: int = OCR_FORMAT_VERSION
    tool_version: str = __version__

    @property
    def with_text(self) -> int:
        """How many images have at least one line."""
        return sum(1 for entry in self.images if entry["lines"])

    @property
    def fingerprint(self) -> str:
        """The recognised text's identity (lines, boxes, confidences), for the search log: a replay names
        changed OCR text as the cause of a changed ranking."""
        return fingerprint(sha256_bytes(json.dumps(self.images, ensure_ascii=False, sort_keys=True).encode("utf-8")))

    def lines_of(self, i: int) -> list[OcrLine]:
        return self.images[i]["lines"] if 0 <= i < len(self.images) else []

    def text_of(self, i: int) -> str:
        """The image's lines joined with spaces, as a person reads them."""
        return " ".join(line["text"] for line in self.lines_of(i))

    def to_text(self, generation: str) -> str:
        """The file's JSON for the features ``generation`` it is saved with."""
        return json.dumps({"format_version": self.format_version, "tool_version": __version__,
                           "generation": generation, "engine": self.engine,
                           "counts": {"images": len(self.images), "with_text": self.with_text,
                                      "failed": len(self.failed)},
                           "images": self.images, "failed": self.failed}, ensure_ascii=False)


def read_ocr(folder: str | Path, generation: str) -> OcrText | None:
    """The sidecar of a features folder, or None when it has none.

    A sidecar written with other features (another ``generation``) is refused with the
    command that reads the text again; a newer format asks for an update.
    """
    path = Path(folder) / OCR_FILE
    if not path.is_file():
        return None
    fix = f"clipsou extract --update --ocr --out {folder}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data["format_version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FeatureStoreError(f"{path}: 文字识别结果无法读取 / OCR text is not readable ({exc}); "
                                f"read it again: {fix}") from exc
    if not isinstance(version, int) or version > OCR_FORMAT_VERSION:
        raise NewerFormatError(f"{path}: 由更新版本写入（格式 {version}）/ written by a newer clipsou "
                               f"(OCR format {version}, this one reads {OCR_FORMAT_VERSION}); "
                               f"update: pip install -U clipsou")
    if data.get("generation") != generation:
        raise FeatureStoreError(f"{path}: 与特征不匹配 / belongs to other features than {Path(folder) / 'manifest.json'} "
                                f"(an interrupted write?); read the text again: {fix}")
    return OcrText(engine=data.get("engine", {}), images=data.get("images", []), failed=data.get("failed", []),
                   generation=data["generation"], format_version=version,
                   tool_version=data.get("tool_version", ""))


def reusable_lines(previous: OcrText | None, engine: dict) -> dict[str, list[OcrLine]]:
    """sha256 -> lines read before by the same engine and settings (what ``--update`` need not read again)."""
    if previous is None or previous.engine != engine:
        return {}
    return {entry["sha256"]: entry["lines"] for entry in previous.images if entry.get("sha256")}
