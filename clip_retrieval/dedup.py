"""Near-duplicate images: groups of images whose vectors are at least a threshold alike.

Owns the similarity join over the image features and the union-find that turns similar
pairs into groups. It works on the vectors it is given: it must not load features, name
files or print.

Memory is bounded at any size: the exact join scores at most ``MAX_SCORES`` similarities
at a time (it used to hold 4096 x N floats, 16 GB at a million images). Above
``IVF_FROM`` images, when faiss is installed, an inverted-file range search compares each
image only with those in its nearest cells, so a million images take seconds instead of
the N² products of the exact join; near-duplicates sit in the same or a neighbouring cell.
"""

from __future__ import annotations

import numpy as np

from .core.errors import InputError

MAX_SCORES = 1 << 25          # similarities held at once by the exact join (128 MB of float32)
IVF_FROM = 50_000             # images from which the inverted-file search is used (when faiss is there)
IVF_LIST_SIZE = 256           # about this many images per cell
IVF_PROBE = 4                 # cells searched per image
QUERY_CHUNK = 20_000          # images whose neighbours are gathered at once


def exact_block_rows(n: int, block: int = 4096) -> int:
    """Rows per block so that one block of scores (rows x n) stays within ``MAX_SCORES``."""
    return max(1, min(block, MAX_SCORES // max(1, n)))


def _exact_pairs(x: np.ndarray, threshold: float, block: int):
    n = x.shape[0]
    rows_per_block = exact_block_rows(n, block)
    for start in range(0, n, rows_per_block):
        sims = np.matmul(x[start:start + rows_per_block], x.T)
        rows, cols = np.nonzero(sims >= threshold - 1e-6)
        yield rows + start, cols


def _ivf_pairs(x: np.ndarray, threshold: float, seed: int = 0):
    import faiss

    n, d = x.shape
    nlist = max(1, n // IVF_LIST_SIZE)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(n, size=min(n, nlist * 40), replace=False)]
    index.cp.niter = 10
    index.train(sample)
    index.add(x)
    index.nprobe = min(nlist, IVF_PROBE)
    for start in range(0, n, QUERY_CHUNK):
        lims, _, ids = index.range_search(x[start:start + QUERY_CHUNK], threshold - 1e-6)
        rows = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims.astype(np.int64)))
        yield rows, ids


def near_duplicate_groups(x: np.ndarray, threshold: float = 0.95, block: int = 4096,
                          method: str = "auto") -> list[list[tuple[int, float]]]:
    """Groups (two or more rows of ``x``) linked by cosine similarity >= ``threshold``.

    Each member comes with its similarity to the group's first row; groups are in order of
    their first row. Similarity is transitive here: a~b and b~c puts a, b, c together.
    ``method``: ``exact`` (blocked join), ``ivf`` (faiss range search), or ``auto`` (ivf from
    ``IVF_FROM`` images when faiss is installed).
    """
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"--threshold 须在 (0, 1] 之间 / --threshold must be in (0, 1], got {threshold}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    if method == "auto":
        method = "ivf" if n >= IVF_FROM and _has_faiss() else "exact"
    if method == "ivf":
        pairs = _ivf_pairs(x, threshold)
    else:
        pairs = _exact_pairs(x, threshold, block)
    parent = list(range(n))

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    for rows, cols in pairs:
        keep = rows < cols
        for r, c in zip(rows[keep].tolist(), cols[keep].tolist()):
            a, b = find(r), find(c)
            if a != b:
                parent[max(a, b)] = min(a, b)   # a group's root is its first row
    roots = np.fromiter((find(i) for i in range(n)), dtype=np.int64, count=n)
    grouped = np.flatnonzero(np.bincount(roots, minlength=n)[roots] > 1)
    order = grouped[np.argsort(roots[grouped], kind="stable")]
    cuts = np.flatnonzero(np.diff(roots[order])) + 1
    return [[(i, float(x[i] @ x[members[0]])) for i in members] for members in
            (m.tolist() for m in np.split(order, cuts)) if len(members) > 1]


def _has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True
