"""Matching a query against the text read in images (OCR), the way Chinese text has to be matched.

Chinese is written without spaces, so whitespace words find nothing: a query and each
recognised line are normalised alike (``expansion.normalize_query``: full-width forms to
half-width, lower case, Traditional to Simplified; then punctuation and spaces dropped) and
compared by two measures, the better of which counts: the share of the query's words
(jieba's segmentation, given as ``segment``) the text holds, weighted by length, and the
share of its character bigrams it holds, weighted by how rare each bigram is among the
images (so one misread character costs part of a match, not all of it). A line is matched
alone, and the image's lines together count at a small discount (a phrase split over two
lines). Owns that normalisation, the bigram index and the score. It must not rank pictures,
fuse rankings (``search``) or read files (``features.ocrtext``).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

from .normalisation import normalize_query

MIN_MATCH = 0.6          # below this share of the query a text is not a match
JOINED_DISCOUNT = 0.9    # a query matched only across lines counts a little less than within one
_NOT_WORD = re.compile(r"[\W_]+")


def normalize_text(text: str) -> str:
    """The form queries and OCR lines are compared in: half-width, lower case, Simplified, no spaces or punctuation."""
    return _NOT_WORD.sub("", normalize_query(text))


def bigrams(text: str) -> list[str]:
    """Character bigrams of normalised text; a single character stands for itself."""
    return [text] if len(text) == 1 else [text[i:i + 2] for i in range(len(text) - 1)]


@dataclass(frozen=True)
class TextMatch:
    """An image whose text matches: its row, the score (0..1, 1 = the whole query verbatim), the line shown."""

    image: int
    score: float
    line: str


class TextMatcher:
    """The recognised lines of every image, indexed by character bigram; ``match`` ranks them for a query."""

    def __init__(self, lines: Sequence[Sequence[str]], segment: Callable[[str], list[str]] | None = None):
        self.lines = [list(image) for image in lines]
        self.segment = segment
        self._norm = [[normalize_text(line) for line in image] for image in self.lines]
        self._joined = ["".join(image) for image in self._norm]
        self._index: dict[str, set[int]] = defaultdict(set)
        for i, text in enumerate(self._joined):
            for gram in set(bigrams(text)) if text else ():
                self._index[gram].add(i)
        self._images = max(1, sum(1 for text in self._joined if text))

    def __len__(self) -> int:
        """How many images have any text."""
        return sum(1 for text in self._joined if text)

    def _idf(self, gram: str) -> float:
        return math.log(1.0 + self._images / (1 + len(self._index.get(gram, ()))))

    def _words(self, query: str, raw: str) -> list[str]:
        """The query's words, normalised (jieba's cut of the query as typed when a segmenter is given)."""
        if self.segment is None:
            return [query]
        words = [normalize_text(w) for w in self.segment(normalize_query(raw))]
        return [w for w in words if w] or [query]

    def _score(self, text: str, query: str, grams: list[str], weights: list[float], words: list[str]) -> float:
        if not text:
            return 0.0
        if query in text:
            return 1.0
        held = sum(w for g, w in zip(grams, weights) if g in text) / sum(weights)
        said = sum(len(w) for w in words if w in text) / sum(len(w) for w in words)
        return max(held, said) * 0.99     # verbatim ranks above any partial match

    def match(self, raw_query: str, limit: int | None = None, keep: Callable[[int], bool] | None = None
              ) -> list[TextMatch]:
        """Images whose text holds the query, best first (ties: earlier row); [] when none reaches ``MIN_MATCH``."""
        query = normalize_text(raw_query)
        if not query:
            return []
        grams = list(dict.fromkeys(bigrams(query)))
        weights = [self._idf(g) for g in grams]
        words = self._words(query, raw_query)
        candidates = set().union(*(self._index.get(g, set()) for g in grams))
        found = []
        for i in candidates:
            if keep is not None and not keep(i):
                continue
            best, line = 0.0, ""
            for raw, text in zip(self.lines[i], self._norm[i]):
                score = self._score(text, query, grams, weights, words)
                if score > best:
                    best, line = score, raw
            joined = self._score(self._joined[i], query, grams, weights, words) * JOINED_DISCOUNT
            if joined > best:
                parts = [raw for raw, text in zip(self.lines[i], self._norm[i]) if any(g in text for g in grams)]
                best, line = joined, " / ".join(parts)
            if best >= MIN_MATCH:
                found.append(TextMatch(i, round(best, 6), line))
        found.sort(key=lambda m: (-m.score, m.image))
        return found[:limit] if limit is not None else found
