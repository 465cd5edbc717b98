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

from .collection.dataset import open_user_image
from .core.errors import InputError
from .query.dictionary import Dictionary
from .query.expansion import Expansion, Phrase, RuleTable, format_grouped, script_of
from .core.hashing import sha256_bytes
from .index.base import RowMask, VectorIndex, Where
from .index.exact import ExactIndex, exact_topk
from .models import OnDemand, is_exported
from .features.store import FeatureStore

if TYPE_CHECKING:
    from .models import Encoder

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 200
RRF_K = 60          # the constant of reciprocal-rank fusion (Cormack et al.)
RRF_DEPTH = 200     # how deep each ranking is read before fusing


@dataclass
class Hit:
    rank: int
    score: float
    image_path: str
    caption: str
    index: int
    caption_row: int | None = None           # image-to-text: the caption's row in the captions file


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

    @property
    def notice(self) -> str | None:
        return self.expansion.notice if self.expansion is not None else None

    def expansion_lines(self) -> list[str]:
        """The expansions grouped by language and source, as the CLI and the page show them."""
        return format_grouped(self.expansion.grouped()) if self.expansion is not None else []
    where: Where | None = None               # the filters results had to pass
    excluded: list[str] = field(default_factory=list)   # image->image: indexed files that are the query itself

    def to_json(self) -> dict:
        """The ``--json`` object: query, expansions (flat, and grouped by language with sources), model, results."""
        out = {
            "query": self.query,
            "expansions": [p.text for p in (self.expansion.pooled_expansions if self.expansion else self.expansions)],
            "model": self.model,
            "results": [{"rank": h.rank, "score": round(h.score, 6), "image_path": h.image_path,
                         "caption": h.caption} for h in self.results],
        }
        if self.expansion is not None:
            out["normalized_query"] = self.expansion.normalized or self.query
            out["expansions_by_language"] = self.expansion.grouped()
            out["untranslated"] = self.expansion.untranslated
            out["notice"] = self.expansion.notice
        if self.excluded:
            out["excluded"] = self.excluded
        return out


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
        """A result row for an indexed image, shown with its first caption."""
        captions = self.store.captions_of(image)
        return Hit(rank, float(score), self.store.image_path(image), captions[0] if captions else "", image)

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
                    where: Where | None = None) -> SearchResult:
        """Expand, encode, pool, renormalise, scan: the whole text-to-image path.

        ``fuse`` ranks the images by their own vectors and by their captions' vectors and
        merges the two rankings by reciprocal-rank fusion. ``where`` keeps only images passing it.
        """
        _check_k(k)
        text, truncated = clean_query(query)
        if text not in self._cache_rows:
            self._prefetch_text_tower()
        expansion = self.expand(text, expand)
        vector = self.query_vector(expansion)
        hits = self.fused(vector, k, where) if fuse else self.search_vector(vector, k, where)
        return SearchResult(query=text, expansions=expansion.expansions, results=hits,
                            model=self.store.model, k=k, expand=expand, truncated=truncated,
                            fuse=fuse, expansion=expansion, raw_query=query, where=where)

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
        expansion, truncated, clean = None, False, None
        if text:
            clean, truncated = clean_query(text)
            expansion = self.expand(clean, expand)
            vector = pool(np.stack([vector, self.query_vector(expansion)]), [1.0 - text_weight, text_weight])
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
        return SearchResult(query=clean or str(path), expansions=expansion.expansions if expansion else [], results=hits,
                            model=self.store.model, k=k, expand=expand and bool(text), truncated=truncated,
                            mode="image+text" if text else "image",
                            to=to, image=str(path), image_sha256=digest, text_weight=text_weight if text else None,
                            expansion=expansion, raw_query=text,
                            where=where, excluded=[self.store.image_path(i) for i in sorted(same)])


def _check_k(k: int) -> None:
    if k < 1:
        raise InputError(f"--top-k 至少为 1 / --top-k must be at least 1, got {k}")
