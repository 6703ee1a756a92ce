"""The duplicate descriptor's layout, shared by the embedder (torch) and the duplicates stage
(Spark): which views it holds end to end, and which of two descriptors' views are compared.
How the views are computed and why: ``lookalike.core.rmac.duplicate_descriptors``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DESCRIPTOR_VIEWS = ("whole", "trimmed", "zoomed")

# Which views of two descriptors are compared, by how many views they hold (the similarity is
# the best of those cosines): the zoomed centre against the other's whole frame, both ways,
# because either listing may be the crop of the other. One view: an embedding's plain cosine;
# two: descriptors of recipe 4 (whole, trimmed), as stored by earlier runs.
VIEW_PAIRS: dict[int, tuple[tuple[int, int], ...]] = {
    1: ((0, 0),),
    2: ((0, 0), (1, 1)),
    3: ((0, 0), (1, 1), (0, 2), (2, 0)),
}

# The zoomed view keeps this share of each side around the centre: sellers' crops keep 80-90%
# (benchmarks/duplicates_quality.py; chosen with clothing seed 7, as the thresholds).
ZOOM_KEEP = 0.85


def similarities(a: Sequence[np.ndarray | None], b: Sequence[np.ndarray | None]) -> np.ndarray:
    """The similarity of duplicate descriptors row by row: the best cosine over the pairs of
    their unit-length views that ``VIEW_PAIRS`` names. A descriptor's squared length is its
    number of views, so an embedding (one view) gets its plain cosine and a descriptor of an
    earlier recipe (two views) its own comparisons. NaN where either row is missing.

    Rows are grouped by (length, views) and each group compared in one array operation."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} descriptors against {len(b)}")
    out = np.full(len(a), np.nan, dtype=np.float32)
    keys: dict[tuple[int, int], list[int]] = {}
    for row, (x, y) in enumerate(zip(a, b, strict=True)):
        if x is None or y is None:
            continue
        if len(x) != len(y):
            raise ValueError(
                f"row {row}: descriptors of {len(x)} and {len(y)} values cannot be compared"
            )
        views = max(1, round(float(np.dot(x, x))))
        keys.setdefault((len(x), views), []).append(row)
    for (length, views), rows in keys.items():
        if views not in VIEW_PAIRS or length % views:
            raise ValueError(f"a descriptor of {length} values and {views} views is unknown")
        x = np.stack([a[i] for i in rows]).astype(np.float32).reshape(len(rows), views, -1)
        y = np.stack([b[i] for i in rows]).astype(np.float32).reshape(len(rows), views, -1)
        cosines = [np.einsum("nd,nd->n", x[:, i], y[:, j]) for i, j in VIEW_PAIRS[views]]
        out[rows] = np.max(cosines, axis=0)
    return out
