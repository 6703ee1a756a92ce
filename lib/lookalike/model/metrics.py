"""Retrieval metrics on ranked answers, and the exact and approximate answers they score.

Definitions (binary relevance) are in ``lookalike.model.evaluate``'s docstring. The exact
answers come from ``lookalike.core.ann.top_k``, the approximate ones from Annoy forests built
by ``lookalike.core.ann.build_annoy`` with the index stage's parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from lookalike.core.ann import build_annoy, padded, top_k, unit_rows

# --- metrics on ranked relevance ------------------------------------------------------------------


def _check_k(relevant: np.ndarray, k: int) -> np.ndarray:
    relevant = np.asarray(relevant, dtype=bool)
    if relevant.ndim != 2:
        raise ValueError(f"relevance must be (queries, ranks), got shape {relevant.shape}")
    if not 1 <= k <= relevant.shape[1]:
        raise ValueError(f"k={k} outside 1..{relevant.shape[1]} ranked answers")
    return relevant[:, :k]


def recall_at_k(relevant: np.ndarray, k: int) -> float:
    """Share of queries with a relevant answer in their first k; ``relevant[q, r]`` says
    whether query q's answer at rank r+1 is relevant."""
    return float(_check_k(relevant, k).any(axis=1).mean())


def precision_at_k(relevant: np.ndarray, k: int) -> float:
    return float(_check_k(relevant, k).mean(axis=1).mean())


def average_precision_at_k(relevant: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """AP@k of every query; ``n_relevant[q]`` is how many relevant items its gallery holds."""
    hits = _check_k(relevant, k).astype(np.float64)
    n_relevant = np.asarray(n_relevant)
    if (n_relevant < 1).any():
        raise ValueError("every query needs at least one relevant item")
    precision_at_i = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    return (precision_at_i * hits).sum(axis=1) / np.minimum(n_relevant, k)


def map_at_k(relevant: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    return float(average_precision_at_k(relevant, n_relevant, k).mean())


def ndcg_at_k(relevant: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    hits = _check_k(relevant, k).astype(np.float64)
    n_relevant = np.asarray(n_relevant)
    if (n_relevant < 1).any():
        raise ValueError("every query needs at least one relevant item")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * discounts).sum(axis=1)
    ideal = np.cumsum(discounts)[np.minimum(n_relevant, k) - 1]
    return float((dcg / ideal).mean())


def ann_recall(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Share of the exact top-K ids found in the approximate top-K, over all queries.

    Both are (queries, K) arrays of ids; -1 pads rows that have fewer than K answers (a
    padded exact slot counts for nothing, a padded approximate slot finds nothing).
    """
    approx_ids, exact_ids = np.asarray(approx_ids), np.asarray(exact_ids)
    if approx_ids.shape[0] != exact_ids.shape[0]:
        raise ValueError(
            f"{approx_ids.shape[0]} approximate answers but {exact_ids.shape[0]} exact ones"
        )
    found = total = 0
    for approx, exact in zip(approx_ids, exact_ids, strict=True):
        wanted = set(exact[exact >= 0].tolist())
        found += len(wanted & set(approx[approx >= 0].tolist()))
        total += len(wanted)
    if total == 0:
        raise ValueError("the exact answers are empty")
    return found / total


# --- exact search ---------------------------------------------------------------------------------


def exact_top_k(
    queries: np.ndarray,
    gallery: np.ndarray | None = None,
    k: int = 10,
    *,
    block: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) of every query's k most cosine-similar gallery vectors, best first.

    Vectors are L2-normalised here. Without a gallery the queries are their own gallery and
    each query leaves itself out (leave-one-out). Equal scores are ordered by gallery index.
    Rows with fewer than k candidates are padded with id -1 and score -inf.
    """
    queries = unit_rows(queries)
    self_search = gallery is None
    gallery = queries if self_search else unit_rows(gallery)
    exclude = np.arange(len(queries)) if self_search else None
    return padded(top_k(gallery, queries, k, exclude=exclude, block=block), k)


# --- the approximate index's answer --------------------------------------------------------------


def _within_groups(groups: Sequence | None, n: int) -> list[np.ndarray]:
    if groups is None:
        return [np.arange(n)]
    groups = pd.Series(np.asarray(groups, dtype=object)).fillna("")
    return [np.asarray(members) for members in groups.groupby(groups, sort=True).indices.values()]


def exact_top_k_within(vectors: np.ndarray, k: int, groups: Sequence | None = None) -> np.ndarray:
    """Leave-one-out exact top-k ids (into ``vectors``), searching each group separately, as
    the neighbors stage searches each category's shard; -1 pads short groups."""
    ids = np.full((len(vectors), k), -1, dtype=np.int64)
    for members in _within_groups(groups, len(vectors)):
        local, _ = exact_top_k(vectors[members], None, k)
        ids[members] = np.where(local >= 0, members[np.maximum(local, 0)], -1)
    return ids


def annoy_top_k(
    vectors: np.ndarray,
    k: int,
    groups: Sequence | None = None,
    *,
    n_trees: int = 20,
    search_k: int = -1,
    seed: int = 42,
) -> np.ndarray:
    """Leave-one-out top-k ids from Annoy indexes (angular, one per group), built with the
    index stage's parameters (``index.n_trees``, ``index.search_k``, ``index.seed``)."""
    vectors = unit_rows(vectors)
    ids = np.full((len(vectors), k), -1, dtype=np.int64)
    for members in _within_groups(groups, len(vectors)):
        index = build_annoy(vectors[members], n_trees=n_trees, seed=seed)
        for local in range(len(members)):
            found = index.get_nns_by_item(local, k + 1, search_k=search_k)
            found = [f for f in found if f != local][:k]
            ids[members[local], : len(found)] = members[found]
    return ids


def ann_recall_within(
    vectors: np.ndarray,
    k: int,
    groups: Sequence | None = None,
    *,
    n_trees: int = 20,
    search_k: int = -1,
    seed: int = 42,
) -> float:
    """ANN recall@k of per-group Annoy indexes against exact search on the same vectors."""
    approx = annoy_top_k(vectors, k, groups, n_trees=n_trees, search_k=search_k, seed=seed)
    return ann_recall(approx, exact_top_k_within(vectors, k, groups))
