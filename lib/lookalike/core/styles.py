"""Same-style groups: listings whose vectors are mutually close, found from top-K neighbours.

A style group is looser than a duplicate (another photo of the same design: the same dress in
another colour, the same sneaker from another seller) and tighter than "similar". Groups are
the connected components of one category's *mutual* neighbour graph: an edge joins two
listings when each is among the other's ``k`` nearest and their cosine is at least
``min_similarity``. Asking for both directions keeps a hub (a photo near everything) from
gluing styles together, and only the top-K lists the job already computes are read: never
all pairs. The defaults are chosen on real photos by ``benchmarks/style_groups.py``.

Everything here is numpy on one category's rows, so the styles stage can run it per shard
inside a pandas UDF and tests can run it on their own.
"""

from __future__ import annotations

import numpy as np


def mutual_edges(
    query: np.ndarray, neighbor: np.ndarray, score: np.ndarray, *, min_similarity: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, score) with a < b for every pair found in both directions of the neighbour rows
    (query -> neighbor, node indices) at a cosine of at least min_similarity; each pair once,
    with the lower of its two scores (they differ only by float rounding)."""
    query, neighbor = np.asarray(query, np.int64), np.asarray(neighbor, np.int64)
    score = np.asarray(score, np.float64)
    keep = (query != neighbor) & (score >= min_similarity)
    query, neighbor, score = query[keep], neighbor[keep], score[keep]
    if len(query) == 0:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.float64)
    n = int(max(query.max(), neighbor.max())) + 1
    forward = query * n + neighbor
    order = np.argsort(forward, kind="stable")
    forward, score = forward[order], score[order]
    query, neighbor = query[order], neighbor[order]
    forward, first = np.unique(forward, return_index=True)  # a row listed twice counts once
    query, neighbor, score = query[first], neighbor[first], score[first]
    backward = neighbor * n + query
    at = np.searchsorted(forward, backward)
    found = (at < len(forward)) & (forward[np.minimum(at, len(forward) - 1)] == backward)
    mine = found & (query < neighbor)
    low = np.minimum(score[mine], score[at[mine]])
    return query[mine], neighbor[mine], low


def shared_neighbours(
    a: np.ndarray, b: np.ndarray, query: np.ndarray, neighbor: np.ndarray, n: int
) -> np.ndarray:
    """For each pair a-b, how many listings are in both of their neighbour lists (the rows
    query -> neighbor; the pair's own two ends never count)."""
    if len(a) == 0:
        return np.empty(0, np.int64)
    query, neighbor = np.asarray(query, np.int64), np.asarray(neighbor, np.int64)
    keys = np.unique(query * n + neighbor)  # sorted (query, neighbor) keys, once each
    width = int(np.bincount(keys // n, minlength=n).max())
    lists = np.full((n, width), -1, np.int64)  # each node's neighbours, -1 padded
    owner, item = keys // n, keys % n
    lists[owner, np.arange(len(keys)) - np.searchsorted(owner, owner)] = item
    counts = np.empty(len(a), np.int64)
    step = max(1, 2_000_000 // (width * width))  # bounded memory: step x width^2 booleans
    for start in range(0, len(a), step):
        left, right = lists[a[start : start + step]], lists[b[start : start + step]]
        same = (left[:, :, None] == right[:, None, :]) & (left[:, :, None] >= 0)
        counts[start : start + step] = same.sum(axis=(1, 2))
    return counts


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The component of each of n nodes under edges a-b, named by its smallest node.

    Vectorised union by hooking the larger root under the smaller, then path halving until
    every edge's ends agree: a few passes over the edges, however they are ordered."""
    labels = np.arange(n, dtype=np.int64)
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    while True:
        la, lb = labels[a], labels[b]
        differ = la != lb
        if not differ.any():
            return labels
        high, low = np.maximum(la[differ], lb[differ]), np.minimum(la[differ], lb[differ])
        np.minimum.at(labels, high, low)
        while True:  # every node straight to its root
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped


def style_edges(
    n: int,
    query: np.ndarray,
    neighbor: np.ndarray,
    score: np.ndarray,
    *,
    min_similarity: float,
    min_shared: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) pairs of n nodes that join one style: in each other's neighbour rows at a
    cosine of at least min_similarity and, with ``min_shared``, with that many neighbours
    common to both lists (Jarvis and Patrick's shared-neighbour rule: two listings in a dense
    region of one style, not a bridge between two). The lists are the neighbours at that
    cosine or more, and a pair never needs more shared than the shorter list holds beside
    it: three colours of one design in a category of others share one close neighbour."""
    query, neighbor = np.asarray(query, np.int64), np.asarray(neighbor, np.int64)
    close = np.asarray(score, np.float64) >= min_similarity
    query, neighbor, score = query[close], neighbor[close], np.asarray(score)[close]
    a, b, _ = mutual_edges(query, neighbor, score, min_similarity=min_similarity)
    if min_shared and len(a):
        lengths = np.bincount(np.asarray(query, np.int64), minlength=n)
        wanted = np.minimum(min_shared, np.minimum(lengths[a], lengths[b]) - 1)
        dense = shared_neighbours(a, b, query, neighbor, n) >= wanted
        a, b = a[dense], b[dense]
    return a, b


def group_labels(
    n: int,
    query: np.ndarray,
    neighbor: np.ndarray,
    score: np.ndarray,
    *,
    min_similarity: float,
    min_shared: int = 0,
    min_size: int = 2,
    links: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Each node's group (its smallest member's index) under ``style_edges``, or -1 where
    its component has fewer than min_size members: a listing without a mutual neighbour is
    in no group. ``links`` (a, b) join nodes whatever their neighbours (the catalog's item
    groups)."""
    a, b = style_edges(
        n, query, neighbor, score, min_similarity=min_similarity, min_shared=min_shared
    )
    if links is not None:
        a = np.concatenate([a, np.asarray(links[0], np.int64)])
        b = np.concatenate([b, np.asarray(links[1], np.int64)])
    labels = connected_components(n, a, b)
    sizes = np.bincount(labels, minlength=n)
    return np.where(sizes[labels] >= min_size, labels, -1)


def group_summaries(vectors: np.ndarray, labels: np.ndarray) -> dict[int, tuple[int, int, float]]:
    """Per group label: (representative node, size, cohesion) from the members' unit vectors.

    Cohesion is the mean cosine over the group's pairs, ``(|sum v|^2 - m) / (m (m - 1))``
    for m unit vectors (no pair is formed); the representative is the member closest to the
    group's sum (the most typical photo), the smallest node on a tie."""
    out: dict[int, tuple[int, int, float]] = {}
    grouped = np.flatnonzero(labels >= 0)
    if len(grouped) == 0:
        return out
    order = grouped[np.argsort(labels[grouped], kind="stable")]
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        members = np.sort(members)
        v = np.asarray(vectors[members], np.float64)
        total = v.sum(axis=0)
        m = len(members)
        cohesion = (float(total @ total) - m) / (m * (m - 1))
        # Rounded so that a tie in exact arithmetic (any pair) stays a tie: the first wins.
        closeness = np.round(v @ total, 9)
        representative = int(members[int(np.argmax(closeness))])
        out[int(labels[members[0]])] = (representative, m, cohesion)
    return out


def member_similarities(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row's cosine to the direction of its group's summed unit vectors (labels >= 0);
    one pass over the rows, whatever the number of groups."""
    vectors = np.asarray(vectors, np.float64)
    _, group = np.unique(labels, return_inverse=True)
    totals = np.zeros((group.max() + 1 if len(group) else 0, vectors.shape[1]))
    np.add.at(totals, group, vectors)
    directions = totals / np.linalg.norm(totals, axis=1, keepdims=True)
    return np.einsum("ij,ij->i", vectors, directions[group])
