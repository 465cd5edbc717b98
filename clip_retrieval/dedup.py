"""Near-duplicate images: groups of images whose vectors are at least a threshold alike.

Owns the blocked similarity join over the image features and the union-find that turns
similar pairs into groups. It works on the vectors it is given: it must not load
features, name files or print.
"""

from __future__ import annotations

import torch

from .errors import InputError


def near_duplicate_groups(x: torch.Tensor, threshold: float = 0.95, block: int = 4096) -> list[list[tuple[int, float]]]:
    """Groups (two or more rows of ``x``) linked by cosine similarity >= ``threshold``.

    Each member comes with its similarity to the group's first row; groups are in order of
    their first row. Similarity is transitive here: a~b and b~c puts a, b, c together.
    """
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"--threshold must be in (0, 1], got {threshold}")
    parent = list(range(x.shape[0]))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, x.shape[0], block):
        sims = x[start:start + block] @ x.T
        rows, cols = torch.nonzero(sims >= threshold - 1e-6, as_tuple=True)
        for r, c in zip((rows + start).tolist(), cols.tolist()):
            if r < c:
                parent[find(c)] = find(r)
    groups: dict[int, list[int]] = {}
    for i in range(x.shape[0]):
        groups.setdefault(find(i), []).append(i)
    return [[(i, float(x[i] @ x[members[0]])) for i in members] for members in groups.values() if len(members) > 1]
