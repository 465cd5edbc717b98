"""Search: pool a query's phrasings into one vector and find the nearest images or captions.

Owns weighted pooling (``pool``/``pool_each``, also used for zero-shot labels), the exact
top-k scan, reciprocal-rank fusion, and the ``Searcher`` that ties an encoder, a feature
store and a rules table together and serves every search mode (text to image, image to
image, image to text, image plus text). It must not print or write logs. Vectors are
float32 numpy arrays, so a search imports no torch (a torch encoder's outputs are
converted on the way in).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from . import relevance
from .collection.dataset import open_user_image
from .core.errors import InputError
from .query.dictionary import Dictionary
from .query.expansion import Expansion, Phrase, RuleTable, format_grouped, script_of
from .core.hashing import sha256_bytes
from .index.base import RowMask, VectorIndex, Where
from .index.exact import ExactIndex, exact_topk
from .models import OnDemand, is_exported
from .features.store import FeatureStore
from .features.ocrtext import OcrText, read_ocr
from .query.textmatch import TextMatch, TextMatcher

if TYPE_CHECKING:
    from .models import Encoder

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 200
RRF_K = 60          # the constant of reciprocal-rank fusion (Cormack et al.)
RRF_DEPTH = 200     # how deep each ranking is read before fusing
OCR_MODES = ("fuse", "off", "only")   # the text read in images: fused with the picture ranking, ignored, alone
OCR_TEXT_SHOWN = 200                  # characters of an image's recognised text a hit carries
# Only text matches this close to the best one join the fusion: RRF sees ranks, not scores, so a
# partial match (another shop of the same trade, 记花店 of 邓记花店) would otherwise count as much as
# the verbatim one and let the picture ranking, which cannot read, decide between them.
TEXT_TIER = 0.1
# The text ranking counts twice in the fusion: an image whose text holds the query verbatim is rarely
# an accident, while the picture ranking is read 200 deep and always has a first place, so with equal
# weights a text match the picture ranking left out would only tie the picture's first (and "发票"
# would interleave invoices with whatever photo looked closest). A query no text matches ranks by
# the picture alone, unchanged.
TEXT_WEIGHT = 2.0


@dataclass
class Hit:
    rank: int
    score: float
    image_path: str
    caption: str
    index: int
    caption_row: int | None = None           # image-to-text: the caption's row in the captions file
    relevant: bool | None = None             # above the query's relevance cutoff (``relevance.judge``)
    band: str | None = None                  # high, medium, low (``relevance.BANDS``)
    matched_by: str | None = None            # features with OCR text: "picture", "text" or "both"
    ocr_line: str | None = None              # the recognised line the query matched
    ocr_text: str | None = None              # the image's recognised text (its start)

    def ocr_json(self) -> dict:
        """The OCR keys of this hit's ``--json`` row (none when the features have no text)."""
        out = {"matched_by": self.matched_by, "ocr_line": self.ocr_line, "ocr_text": self.ocr_text}
        return {k: v for k, v in out.items() if v is not None}


@dataclass
class SearchResult:
    query: str
    expansions: list[Phrase]
    results: list[Hit]
    model: str
    k: int
    expand: bool
    truncated: bool = False
    mode: str = "text"                       # text, image, image+text
    to: str = "image"                        # what the results are: images or captions
    image: str | None = None                 # the query image, for image modes
    image_sha256: str | None = None
    text_weight: float | None = None         # image+text: the text's share of the fused vector
    fuse: bool = False                       # text: image and caption rankings merged by RRF
    expansion: Expansion | None = None       # the whole expansion: normalised query, groups, notice
    raw_query: str | None = None             # exactly as typed, before cleaning and normalising
    ocr: str | None = None                   # text mode over features with OCR text: "fuse", "off" or "only"

    @property
    def notice(self) -> str | None:
        return self.expansion.notice if self.expansion is not None else None

    def expansion_lines(self) -> list[str]:
        """The expansions grouped by language and source, as the CLI and the page show them."""
        return format_grouped(self.expansion.grouped()) if self.expansion is not None else []
    where: Where | None = None               # the filters results had to pass
    excluded: list[str] = field(default_factory=list)   # image->image: indexed files that are the query itself
    relevance: dict | None = None            # the reference the hits were judged by (``Reference.to_json``)

    @property
    def relevant_hits(self) -> list[Hit]:
        """The hits above the cutoff, what the CLI and the page show by default."""
        return [h for h in self.results if h.relevant]

    def to_json(self) -> dict:
        """The ``--json`` object: query, expansions (flat, and grouped by language with sources), model, results."""
        out = {
            "query": self.query,
            "expansions": [p.text for p in (self.expansion.pooled_expansions if self.expansion else self.expansions)],
            "model": self.model,
            "results": [{"rank": h.rank, "score": round(h.score, 6), "image_path": h.image_path,
                         "caption": h.caption, **_relevance_json(h)} for h in self.results],
        }
        if self.relevance is not None:
            out["relevance"] = self.relevance
        if self.expansion is not None:
            out["normalized_query"] = self.expansion.normalized or self.query
            out["expansions_by_language"] = self.expansion.grouped()
            out["untranslated"] = self.expansion.untranslated
            out["notice"] = self.expansion.notice
        if self.excluded:
            out["excluded"] = self.excluded
        if self.ocr is not None:
            out["ocr"] = self.ocr
        for row, hit in zip(out["results"], self.results):
            row.update(hit.ocr_json())
        return out


def _relevance_json(hit: Hit) -> dict:
    return {} if hit.band is None else {"relevant": hit.relevant, "band": hit.band, "band_zh": relevance.BANDS[hit.band]}


def pool(embeddings, weights) -> np.ndarray:
    """Weighted mean of unit vectors, renormalised to unit length."""
    vectors = np.asarray(embeddings, dtype=np.float32)
    w = np.asarray(weights, dtype=np.float32).reshape(-1, 1)
    pooled = (vectors * w).sum(axis=0) / w.sum()
    return pooled / max(float(np.linalg.norm(pooled)), 1e-12)


def pool_each(embeddings, weights: list[list[float]]) -> np.ndarray:
    """One pooled vector per group: ``embeddings`` holds the groups' rows one group after another,
    ``weights`` each group's weights (a query's phrasings, a label's prompts)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    out, start = [], 0
    for group in weights:
        out.append(pool(embeddings[start:start + len(group)], group))
        start += len(group)
    return np.stack(out) if out else np.empty((0, embeddings.shape[-1]), dtype=np.float32)


def clean_query(query: str) -> tuple[str, bool]:
    """Strip, refuse empty queries, truncate over-long ones (with a warning)."""
    text = " ".join((query or "").split())
    if not text:
        raise InputError("查询为空 / empty query: type some words, e.g. 金毛")
    if len(text) > MAX_QUERY_CHARS:
        log.warning("query truncated to %d characters / 查询过长，已截断", MAX_QUERY_CHARS)
        return text[:MAX_QUERY_CHARS], True
    return text, False


def build_expansion_cache(encoder: Encoder, rules: RuleTable) -> tuple[list[str], np.ndarray]:
    """Every key, alias and phrasing in the table, encoded once (queries that match whole need no encoding)."""
    texts = list(dict.fromkeys(
        [t for r in rules.rules for t in [r.key, *r.aliases]] +
        [p.text for r in rules.rules for p in r.expansions if p.lang in encoder.languages]))
    return texts, np.asarray(encoder.encode_texts(texts), dtype=np.float32)


class Searcher:
    """Every search mode over one feature store, with one encoder and rules table.

    Text to image (``search_text``, optionally fused with the captions), image to image,
    image to text and image plus text (``search_image``). The encoder may be given as a
    function that loads it: a query whose phrasings are all in the expansion cache is
    answered without loading the model at all. Searching without expansion is
    ``expand=False`` on the same searcher (same index, same cache), not another searcher.
    """

    def __init__(self, store: FeatureStore, encoder: Encoder | Callable[[], Encoder], rules: RuleTable | None,
                 cache: tuple[list[str], np.ndarray] | None = None, index: VectorIndex | None = None,
                 dictionary: Dictionary | None = None,
                 checkpoint: str | None = None):
        self.store = store
        self.checkpoint = checkpoint     # local weights the user asked for (named in a mismatch message)
        self.rules = rules
        self.dictionary = dictionary
        self._model = OnDemand(encoder, self._accept)
        self.languages = frozenset(store.manifest.model.languages or self.encoder.languages)
        self._cache_rows: dict[str, int] = {}
        self._cache_vectors = np.empty((0, 0), dtype=np.float32)
        if cache is not None:
            self.use_cache(*cache)
        self._matrix = store.image_matrix()
        self._scores = np.empty(self._matrix.shape[0], dtype=np.float32)
        self._mask = RowMask(store)
        if index is None:
            index = ExactIndex(store, self._matrix)
        self.index = index
        self._caption_rows: list[tuple[str, int, int]] | None = None
        self._caption_matrix: np.ndarray | None = None
        self._calibration: relevance.Calibration | None = None
        self._ocr_text: OcrText | None | bool = False      # False: not read yet
        self._text_matcher: TextMatcher | None = None

    def _accept(self, encoder: Encoder) -> None:
        self.store.check_model(encoder.name, encoder.fingerprint, self.checkpoint)

    @property
    def encoder(self) -> Encoder:
        """The model, loaded on first need."""
        return self._model.get()

    @property
    def model_fingerprint(self) -> str:
        loaded = self._model.loaded
        return loaded.fingerprint if loaded is not None else self.store.model_fingerprint

    def use_cache(self, texts: list[str], vectors: np.ndarray) -> None:
        self._cache_rows = {t: i for i, t in enumerate(texts)}
        self._cache_vectors = np.asarray(vectors, dtype=np.float32)

    def expand(self, query: str, expand: bool = True) -> Expansion:
        """Whole-language renderings in the languages the model reads (``expand=False``: the query alone)."""
        if expand and self.rules is not None:
            return self.rules.expand(query, self.languages, dictionary=self.dictionary)
        return Expansion(query=query, phrases=[Phrase(query, script_of(query), 1.0, source="query")])

    def phrase_vectors(self, texts: list[str]) -> np.ndarray:
        """Cached embeddings where there are some; the rest encoded together in one batch."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache_rows))
        fresh = dict(zip(missing, np.asarray(self.encoder.encode_texts(missing), dtype=np.float32))) if missing else {}
        return np.stack([self._cache_vectors[self._cache_rows[t]] if t in self._cache_rows else fresh[t]
                            for t in texts])

    def query_vector(self, expansion: Expansion) -> np.ndarray:
        """All phrasings in one batch, then the weighted mean."""
        return self.pooled([expansion])[0]

    def query_vectors(self, queries: list[str], expand: bool = True) -> np.ndarray:
        """Pooled vectors for many queries, every phrasing of every query encoded in one pass."""
        return self.pooled([self.expand(clean_query(q)[0], expand) for q in queries])

    def pooled(self, expansions: list[Expansion]) -> np.ndarray:
        """One vector per expansion: the weighted mean of the phrasings the model reads (``Expansion.pooled``)."""
        if not expansions:
            return np.empty((0, self.store.image_features.shape[1]), dtype=np.float32)
        embeddings = self.phrase_vectors([p.text for e in expansions for p in e.pooled])
        return pool_each(embeddings, [[p.weight for p in e.pooled] for e in expansions])

    def nearest(self, vector: np.ndarray, k: int, where: Where | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(indices, scores) best first, from the index backend serving these features (exact by default)."""
        ids, scores = self.index.search(np.asarray(vector, dtype=np.float32)[None, :], k, where)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def _hit(self, rank: int, image: int, score: float) -> Hit:
        """A result row for an indexed image, shown with its first caption (and its recognised text, if any)."""
        captions = self.store.captions_of(image)
        hit = Hit(rank, float(score), self.store.image_path(image), captions[0] if captions else "", image)
        hit.ocr_text = self.recognised_text(image)
        return hit

    @property
    def ocr_text(self) -> OcrText | None:
        """The text read in the images (``extract --ocr``), read on first need; None when there is none."""
        if self._ocr_text is False:
            self._ocr_text = read_ocr(self.store.folder, self.store.manifest.generation)
        return self._ocr_text

    def recognised_text(self, image: int) -> str | None:
        """The start of an image's recognised text, or None (no text, or features without OCR)."""
        if self.ocr_text is None:
            return None
        text = self.ocr_text.text_of(image)
        return text[:OCR_TEXT_SHOWN] if text else None

    def text_matcher(self) -> TextMatcher:
        """The OCR lines indexed for matching, built once; the rules table's segmentation cuts queries."""
        if self._text_matcher is None:
            text = self.ocr_text
            if text is None:
                raise InputError(f"{self.store.folder}: 没有识别的文字 / has no OCR text; read it first: "
                                 f"clipsou extract --update --ocr --out {self.store.folder}")
            lines = [[line["text"] for line in text.lines_of(i)] for i in range(len(self.store.manifest.images))]
            self._text_matcher = TextMatcher(lines, self.rules.segment if self.rules is not None else None)
        return self._text_matcher

    def text_matches(self, query: str, where: Where | None = None) -> list[TextMatch]:
        """Images whose recognised text holds the query, best first, passing ``where``."""
        keep = self._mask(where) if where is not None else None
        return self.text_matcher().match(query, keep=(lambda i: bool(keep[i])) if keep is not None else None)

    def with_text(self, vector: np.ndarray, query: str, k: int, where: Where | None, fuse: bool,
                  ocr: str) -> list[Hit]:
        """The picture ranking (with captions when ``fuse``) and the OCR text ranking merged by RRF,
        or the text ranking alone (``ocr="only"``); each hit says what matched it and which line."""
        matches = self.text_matches(query, where)
        if ocr == "only":
            line = {m.image: m.line for m in matches}
            return [self._matched(r, m.image, m.score, False, line) for r, m in enumerate(matches[:k], start=1)]
        matches = [m for m in matches if m.score >= matches[0].score - TEXT_TIER]
        line = {m.image: m.line for m in matches}
        depth = max(RRF_DEPTH, k)
        if fuse:
            scores = self.fused_scores(vector, depth)
            if where is not None:
                scores[~self._mask(where)] = 0.0
        else:
            ids, _ = self.nearest(vector, min(depth, self._matrix.shape[0]), where)
            scores = np.zeros(self._matrix.shape[0], dtype=np.float64)
            scores[ids] += 1.0 / (RRF_K + np.arange(1, len(ids) + 1))
        by_picture = set(sorted(np.flatnonzero(scores).tolist(), key=lambda i: (-scores[i], i))[:k])
        for rank, m in enumerate(matches, start=1):
            scores[m.image] += TEXT_WEIGHT / (RRF_K + rank)
        best = sorted(np.flatnonzero(scores).tolist(), key=lambda i: (-scores[i], i))[:k]
        return [self._matched(r, i, scores[i], i in by_picture, line) for r, i in enumerate(best, start=1)]

    def _matched(self, rank: int, image: int, score: float, by_picture: bool, line: dict[int, str]) -> Hit:
        hit = self._hit(rank, image, score)
        by_text = image in line
        hit.matched_by = "both" if by_picture and by_text else "text" if by_text else "picture"
        hit.ocr_line = line.get(image)
        return hit

    def search_vector(self, vector: np.ndarray, k: int, where: Where | None = None) -> list[Hit]:
        idx, scores = self.nearest(vector, k, where)
        return [self._hit(rank, i, sc) for rank, (i, sc) in enumerate(zip(idx.tolist(), scores.tolist()), start=1)]

    def _prefetch_text_tower(self) -> None:
        """Open the ONNX text tower in the background while the query is expanded (segmentation and
        the dictionary take as long as the session does); torch encoders are left to load on need."""
        if self._model.loaded is None and not is_exported(self.store.model_fingerprint):
            return
        self.encoder.prefetch("text")     # the exported model: cheap to open, its sessions open on first use

    def search_text(self, query: str, k: int = 5, expand: bool = True, fuse: bool = False,
                    where: Where | None = None, ocr: str = "fuse") -> SearchResult:
        """Expand, encode, pool, renormalise, scan: the whole text-to-image path.

        ``fuse`` ranks the images by their own vectors and by their captions' vectors and
        merges the two rankings by reciprocal-rank fusion. ``where`` keeps only images passing it.
        On features with OCR text (``extract --ocr``), ``ocr="fuse"`` (the default) merges the
        text the images hold into the ranking the same way, ``"only"`` ranks by that text alone
        (no model loads), ``"off"`` ignores it.
        """
        _check_k(k)
        if ocr not in OCR_MODES:
            raise InputError(f"ocr 只能是 {'/'.join(OCR_MODES)} / ocr must be one of {', '.join(OCR_MODES)}, got {ocr!r}")
        text, truncated = clean_query(query)
        if ocr == "only":
            self.text_matcher()     # features without OCR text are refused before anything else
            expansion = Expansion(query=text, phrases=[Phrase(text, script_of(text), 1.0, source="query")])
            return SearchResult(query=text, expansions=[], results=self.with_text(None, text, k, where, False, ocr),
                                model=self.store.model, k=k, expand=False, truncated=truncated,
                                expansion=expansion, raw_query=query, where=where, ocr=ocr)
        if text not in self._cache_rows:
            self._prefetch_text_tower()
        expansion = self.expand(text, expand)
        vector = self.query_vector(expansion)
        has_text = ocr == "fuse" and self.ocr_text is not None
        if has_text:
            hits = self.with_text(vector, text, k, where, fuse, ocr)
        else:
            hits = self.fused(vector, k, where) if fuse else self.search_vector(vector, k, where)
        result = SearchResult(query=text, expansions=expansion.expansions, results=hits,
                              model=self.store.model, k=k, expand=expand, truncated=truncated,
                              fuse=fuse, expansion=expansion, raw_query=query, where=where,
                              ocr=ocr if self.ocr_text is not None else None)
        return self.judge(result, vector)

    def _captions(self) -> tuple[list[tuple[str, int, int]], np.ndarray]:
        """Distinct (caption, image, captions-file row) triples and their vectors, for image-to-text and fusion."""
        if self._caption_rows is None:
            feats = self.store.caption_features()
            rows, seen = [], set()
            for row, entry in enumerate(self.store.manifest.captions):
                key = (entry["text"], entry["image"])
                if key not in seen:
                    seen.add(key)
                    rows.append((row, *key))
            captions = self.store.manifest.captions
            self._caption_rows = [(text, img, captions[row].get("row", row)) for row, text, img in rows]
            self._caption_matrix = np.ascontiguousarray(feats[[r for r, _, _ in rows]], dtype=np.float32)
        if not self._caption_rows:
            raise InputError(f"{self.store.folder}: 没有文本描述 / has no captions (built from --images); "
                             f"use a captions file for image-to-text search or --fuse")
        return self._caption_rows, self._caption_matrix

    def fused_scores(self, vector: np.ndarray, depth: int = RRF_DEPTH) -> np.ndarray:
        """Reciprocal-rank fusion of the image ranking and the caption ranking (best caption per image).

        Each ranking is read ``depth`` deep; an image in neither scores 0.
        """
        rows, matrix = self._captions()
        n = self._matrix.shape[0]
        img_ids, _ = exact_topk(self._matrix, np.asarray(vector, dtype=np.float32), min(n, depth), self._scores)
        cap_ids, _ = exact_topk(matrix, np.asarray(vector, dtype=np.float32), len(rows))
        fused = np.zeros(n, dtype=np.float64)
        fused[img_ids] += 1.0 / (RRF_K + np.arange(1, len(img_ids) + 1))
        caption_rank: dict[int, int] = {}
        for c in cap_ids.tolist():
            if len(caption_rank) >= depth:
                break
            caption_rank.setdefault(rows[c][1], len(caption_rank) + 1)
        for i, rank in caption_rank.items():
            fused[i] += 1.0 / (RRF_K + rank)
        return fused

    def fused(self, vector: np.ndarray, k: int, where: Where | None = None) -> list[Hit]:
        scores = self.fused_scores(vector, max(RRF_DEPTH, k))
        if where is not None:
            scores[~self._mask(where)] = 0.0
        best = sorted(np.flatnonzero(scores).tolist(), key=lambda i: (-scores[i], i))[:k]
        return [self._hit(r, i, scores[i]) for r, i in enumerate(best, start=1)]

    def image_vector(self, path: str | os.PathLike) -> tuple[np.ndarray, str]:
        """The encoded query image and its content hash, decoded the way the collection's images were."""
        draft = None if self.store.manifest.image_decode == "exact" else self.encoder.image_size
        img, data = open_user_image(path, draft, what="query image")
        vector = np.asarray(self.encoder.encode_images(self.encoder.preprocess(img)[None])[0], dtype=np.float32)
        return vector, sha256_bytes(data)

    def search_image(self, path: str | os.PathLike, k: int = 5, to: str = "image", text: str | None = None,
                     text_weight: float = 0.5, expand: bool = True, where: Where | None = None) -> SearchResult:
        """Image-to-image (the query itself excluded, by path and by content) or image-to-text.

        With ``text`` the query is "this picture, but ...": the image and text vectors are
        mixed with ``text_weight`` and renormalised.
        """
        _check_k(k)
        if to not in ("image", "text"):
            raise InputError(f"--to 只能是 image 或 text / --to must be image or text, got {to!r}")
        if not 0.0 <= text_weight <= 1.0:
            raise InputError(f"--text-weight 须在 0 到 1 之间 / --text-weight must be between 0 and 1, got {text_weight}")
        vector, digest = self.image_vector(path)
        expansion, truncated, clean, parts = None, False, None, None
        if text:
            clean, truncated = clean_query(text)
            expansion = self.expand(clean, expand)
            parts = np.stack([vector, self.query_vector(expansion)])
            vector = pool(parts, [1.0 - text_weight, text_weight])
        same: set[int] = set()
        if to == "text":
            rows, matrix = self._captions()
            keep = self._mask(where)[[row[1] for row in rows]] if where is not None else None
            ids, scores = exact_topk(matrix, np.asarray(vector, dtype=np.float32), k, mask=keep)
            hits = [Hit(r, float(sc), self.store.image_path(rows[c][1]), rows[c][0], rows[c][1], rows[c][2])
                    for r, (c, sc) in enumerate(zip(ids.tolist(), scores.tolist()), start=1)]
        else:
            same = self.store.same_image(path, digest)
            ids, scores = self.nearest(vector, k + len(same), where)
            keep = [(i, sc) for i, sc in zip(ids.tolist(), scores.tolist()) if i not in same][:k]
            hits = [self._hit(r, i, sc) for r, (i, sc) in enumerate(keep, start=1)]
        result = SearchResult(query=clean or str(path), expansions=expansion.expansions if expansion else [],
                              results=hits, model=self.store.model, k=k, expand=expand and bool(text),
                              truncated=truncated, mode="image+text" if text else "image",
                              to=to, image=str(path), image_sha256=digest, text_weight=text_weight if text else None,
                              expansion=expansion, raw_query=text,
                              where=where, excluded=[self.store.image_path(i) for i in sorted(same)])
        return self.judge(result, vector, parts)

    @property
    def calibration(self) -> relevance.Calibration:
        """What matching pairs score in this collection under this model, fitted once from its own vectors."""
        if self._calibration is None:
            captions = self.store.manifest.captions
            feats = self.store.caption_features() if captions else None
            owners = np.asarray([c["image"] for c in captions], dtype=np.int64) if captions else None
            bank = self.bank_vectors() if self.bank_vectors().size else None
            self._calibration = relevance.fit(self._matrix, feats, owners, bank=bank)
        return self._calibration

    def bank_vectors(self) -> np.ndarray:
        """The rules table's phrasings as encoded in the expansion cache (the query bank of a calibration)."""
        return self._cache_vectors

    def use_calibration(self, calibration: relevance.Calibration) -> None:
        """Judge later searches by this calibration instead of the one fitted from these features."""
        self._calibration = calibration

    def judge(self, result: SearchResult, vector: np.ndarray, parts: np.ndarray | None = None) -> SearchResult:
        """Mark each hit relevant or not, with its band, against this collection's calibration.

        Fused hits are judged by their image's cosine with the query (a rank-fusion score is no cosine), and
        a hit whose OCR text matched the query is relevant whatever its picture scores;
        image plus text (``parts``: the image and text vectors) by each part (``relevance.judge_image_text``).
        """
        reference = self.calibration.reference(result.mode, result.to)
        vector = np.asarray(vector, dtype=np.float32)
        rows = self._matrix[[h.index for h in result.results]] if result.results else self._matrix[:0]
        def collection(v: np.ndarray) -> np.ndarray:   # the query's scores over the (sampled) collection
            n = self._matrix.shape[0]
            return (self._matrix if n <= relevance.SAMPLE else self._matrix[relevance.sample_rows(n)]) @ v

        if parts is not None:
            verdicts = relevance.judge_image_text(rows @ parts[0], rows @ parts[1], collection(parts[1]), reference)
        else:
            ranked = result.fuse or any(h.matched_by for h in result.results)   # rank-fusion scores, no cosines
            scores = rows @ vector if ranked else np.asarray([h.score for h in result.results])
            verdicts = relevance.judge(scores, reference, collection(vector) if reference.kind == "z" else None)
        for hit, verdict in zip(result.results, verdicts):
            hit.relevant, hit.band = verdict.relevant, verdict.band
            if hit.matched_by in ("text", "both"):   # the query's words are written in the picture: relevant
                hit.relevant, hit.band = True, verdict.band if verdict.band == "high" else "medium"
        result.relevance = reference.to_json()
        return result


def _check_k(k: int) -> None:
    if k < 1:
        raise InputError(f"--top-k 至少为 1 / --top-k must be at least 1, got {k}")
