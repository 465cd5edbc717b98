"""Relevance: whether each hit of a search is relevant, and its band (high / medium / low).

Owns the calibration a features folder's own contents give (``fit``): what a matching pair scores
under this model in this collection, read from its captions (each caption against its own image)
and from its images (each image against its nearest other image), and the verdict on a query's
hits (``judge``). A fixed cosine does not survive a change of model (the demo model's matching
captions score about 0.87, demo-en's about 0.76), so the cutoff is a low quantile of the
collection's own matching pairs; a model whose matching pairs score no higher than random pairs
(random or wrong weights) marks nothing relevant and says so. Without captions or a bank, text queries
are judged by how far the hit stands above the query's scores over the whole collection (a robust
z-score), or, better, against the best scores the rules table's phrasings reach in it (a query bank).
It must not search, print or write files: the searcher hands it vectors and scores.
docs/relevance.md explains the method.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

BANDS = {"high": "高", "medium": "中", "low": "低"}
# matching pairs scoring below this share of them are called not relevant: captions describe their
# image only in part, so a tenth of them score lower than a query naming a subject should; an image's
# nearest other image is the lenient bound for image queries (the lowest of them)
CUTOFF_QUANTILE = {"captions": 0.1, "images": 0.0}
HIGH_QUANTILE = 0.5        # at or above a typical matching pair: high
MIN_SEPARATION = 0.75      # below this AUC the model does not tell matching pairs from random ones
MIN_SPREAD = 0.02          # images whose random pairs all score within this of each other: an uninformative model
Z_CUTOFF, Z_HIGH = 2.5, 4.0    # no captions: robust z-scores over the collection for medium and high
SAMPLE = 4096              # rows a calibration reads at most (a fixed, seeded sample of larger collections)
NEGATIVES_PER_PAIR = 4


@dataclass(frozen=True)
class Reference:
    """What a relevant hit scores for one kind of search: its cutoff and the start of the high band.

    ``kind`` is ``cosine`` (cutoffs on the score itself) or ``z`` (on the robust z-score of the
    score among the query's scores over the collection). ``informative`` is false when the model's
    matching pairs score like random pairs: then nothing is relevant.
    """

    kind: str
    cutoff: float
    high: float
    source: str            # captions, images, collection
    pairs: int
    separation: float      # AUC of matching against random pairs (1.0 perfect, 0.5 chance)
    informative: bool = True

    def to_json(self) -> dict:
        return {"kind": self.kind, "cutoff": round(self.cutoff, 4), "high": round(self.high, 4),
                "source": self.source, "pairs": self.pairs, "separation": round(self.separation, 4),
                "informative": self.informative}


@dataclass(frozen=True)
class Calibration:
    """The collection's references: text against images (None without captions) and image against image."""

    text: Reference | None
    image: Reference

    def reference(self, mode: str, to: str = "image") -> Reference:
        """The reference for a search mode: text (and fusion, and image-to-text) read the caption pairs,
        image-to-image and image plus text the image pairs (``judge_image_text`` adds the words' part)."""
        text = self.text if self.text is not None else replace(_z_reference(), informative=self.image.informative)
        if mode == "text" or to == "text":
            return text
        return self.image


@dataclass(frozen=True)
class Verdict:
    """One hit's relevance."""

    relevant: bool
    band: str

    @property
    def band_zh(self) -> str:
        return BANDS[self.band]


def _z_reference() -> Reference:
    return Reference("z", Z_CUTOFF, Z_HIGH, "collection", 0, float("nan"))


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a matching pair outscores a random pair), ties half: the Mann-Whitney statistic."""
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    both = np.concatenate([pos, neg])
    order = both.argsort(kind="stable")
    ranks = np.empty(both.size)
    ranks[order] = np.arange(1, both.size + 1)
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]           # mean rank for ties
    return float((ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def sample_rows(n: int, seed: int = 0) -> np.ndarray:
    """The rows a calibration (or a query's collection-wide scores) reads: all, or a fixed seeded sample."""
    return np.arange(n) if n <= SAMPLE else np.sort(np.random.default_rng(seed).choice(n, SAMPLE, replace=False))


def _reference(pos: np.ndarray, neg: np.ndarray, source: str) -> Reference:
    separation = _auc(pos, neg)
    spread = float(np.subtract(*np.quantile(neg, [0.75, 0.25]))) if neg.size else 0.0
    informative = bool(pos.size) and separation >= MIN_SEPARATION and spread >= MIN_SPREAD
    cutoff = float(np.quantile(pos, CUTOFF_QUANTILE[source])) if pos.size else float("inf")
    high = float(np.quantile(pos, HIGH_QUANTILE)) if pos.size else float("inf")
    return Reference("cosine", cutoff, max(high, cutoff), source, int(pos.size), separation, informative)


BANK_CUTOFF_QUANTILE, BANK_HIGH_QUANTILE = 0.75, 0.95


def bank_reference(images: np.ndarray, bank: np.ndarray, image_ref: Reference, seed: int = 0) -> Reference:
    """Without captions: a query bank (the expansion table's phrasings, encoded for this model anyway).

    Each phrase's best score over the collection is what "the closest picture" reaches for words the
    collection mostly does not show (a table names far more things than one collection holds), so a
    hit must beat most of them (QB-Norm's idea of a probe query bank, used for a cutoff rather than a
    re-ranking).
    """
    rows = sample_rows(images.shape[0], seed)
    tops = (np.asarray(bank, dtype=np.float32) @ np.asarray(images, dtype=np.float32)[rows].T).max(axis=1)
    return Reference("cosine", float(np.quantile(tops, BANK_CUTOFF_QUANTILE)),
                     float(np.quantile(tops, BANK_HIGH_QUANTILE)), "query bank", int(tops.size),
                     image_ref.separation, image_ref.informative)


def fit(images: np.ndarray, captions: np.ndarray | None = None, caption_images: np.ndarray | None = None,
        seed: int = 0, bank: np.ndarray | None = None) -> Calibration:
    """Fit the references from a features folder's own vectors (unit rows; a seeded sample of large ones).

    ``captions``/``caption_images``: caption vectors and the image row each describes. The image
    reference pairs each image with its nearest other image; random pairs are its negatives.
    ``bank``: phrase vectors for a collection without captions (``bank_reference``); with neither,
    text queries are judged by their robust z-score over the collection.
    """
    rng = np.random.default_rng(seed)
    images = np.asarray(images, dtype=np.float32)
    n = images.shape[0]
    rows = sample_rows(n, seed)
    sub = images[rows]
    if n >= 2:
        gram = sub @ sub.T
        np.fill_diagonal(gram, -np.inf)
        nearest = gram.max(axis=1)
        i, j = rng.integers(0, len(rows), (2, len(rows) * NEGATIVES_PER_PAIR))
        keep = i != j
        image_ref = _reference(nearest, gram[i[keep], j[keep]], "images")
    else:
        image_ref = Reference("cosine", float("inf"), float("inf"), "images", 0, float("nan"), False)
    text_ref = None
    if captions is not None and len(captions):
        captions = np.asarray(captions, dtype=np.float32)
        owners = np.asarray(caption_images)
        picked = sample_rows(captions.shape[0], seed + 1)
        caps, own = captions[picked], owners[picked]
        pos = np.einsum("ij,ij->i", caps, images[own])
        others = rng.integers(0, n, (len(picked), NEGATIVES_PER_PAIR))
        neg = np.einsum("ij,ikj->ik", caps, images[others])[others != own[:, None]]
        text_ref = _reference(pos, neg, "captions")
    elif bank is not None and len(bank) and n:
        text_ref = bank_reference(images, bank, image_ref, seed)
    return Calibration(text_ref, image_ref)


def robust_z(scores: np.ndarray, collection: np.ndarray) -> np.ndarray:
    """How far each score stands above the query's scores over the collection, in robust standard deviations."""
    med = float(np.median(collection))
    mad = 1.4826 * float(np.median(np.abs(collection - med)))
    return (np.asarray(scores, dtype=np.float64) - med) / max(mad, 1e-6)


def judge(scores: np.ndarray, reference: Reference, collection: np.ndarray | None = None) -> list[Verdict]:
    """Each hit's verdict: low below the cutoff (not relevant), high from a typical matching pair's score.

    ``collection``: the query's scores over the collection (or a sample), needed by a ``z`` reference.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not reference.informative:
        return [Verdict(False, "low") for _ in scores]
    values = robust_z(scores, collection) if reference.kind == "z" and collection is not None else scores
    return [Verdict(bool(v >= reference.cutoff), "high" if v >= reference.high else
                    "medium" if v >= reference.cutoff else "low") for v in values.tolist()]


CLOSEST_SHOWN = 3   # when nothing passes the cutoff, the closest few are still shown, marked


def shown(hits: list, reference: dict | None, show_all: bool = False) -> tuple[list, list[str]]:
    """The hits a person sees by default (the relevant ones; ``show_all``: every one) and the lines saying
    what was held back, for the CLI and the page alike. ``reference``: the result's ``relevance``."""
    if show_all or reference is None:
        return hits, []
    relevant = [h for h in hits if h.relevant]
    if not reference.get("informative", True):
        sep = reference.get("separation", float("nan"))
        return [], [f"没有相关结果：此模型在这个图库上分不开匹配的与随机的图文（区分度 {sep:.2f}，权重随机或不对？）/ "
                    f"nothing relevant: this model does not tell matching pairs from random ones in this "
                    f"collection (separation {sep:.2f}; random or wrong weights?); --all shows the top {len(hits)}"]
    if not relevant:
        closest = hits[:CLOSEST_SHOWN]
        return closest, [f"没有相关结果，最接近的 {len(closest)} 张低于阈值（低）/ nothing relevant: the closest "
                         f"{len(closest)} shown are below the cutoff; --all shows all {len(hits)}"]
    rest = len(hits) - len(relevant)
    return relevant, ([f"另有 {rest} 张相关度较低 / {rest} more below the cutoff: --all"] if rest else [])


TEXT_AGREES_Z = 1.0   # image plus text: the words must favour the hit this much over the typical picture


def judge_image_text(image_scores: np.ndarray, text_scores: np.ndarray, text_collection: np.ndarray,
                     reference: Reference) -> list[Verdict]:
    """Image plus text ("this picture, but ..."): the picture decides against the image reference, and
    the words must agree, standing ``TEXT_AGREES_Z`` robust deviations above their collection median.

    The words are a modifier ("in the snow"), which no caption-calibrated cutoff expects to match alone.
    """
    verdicts = judge(image_scores, reference)
    agrees = robust_z(text_scores, text_collection) >= TEXT_AGREES_Z
    return [v if ok else Verdict(False, "low") for v, ok in zip(verdicts, agrees.tolist())]


def fixed_verdicts(scores: np.ndarray, threshold: float) -> list[bool]:
    """A fixed cosine threshold (what the benchmark compares the adaptive cutoff with)."""
    return [bool(s >= threshold) for s in np.asarray(scores).tolist()]
