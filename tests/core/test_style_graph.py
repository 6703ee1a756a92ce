"""Same-style groups from neighbour rows (lookalike.core.styles), without Spark."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.core.styles import (
    connected_components,
    group_labels,
    group_summaries,
    mutual_edges,
)


def components_by_search(n: int, a, b) -> np.ndarray:
    """The reference: a depth-first search from each node, named by the smallest node."""
    adjacent = [[] for _ in range(n)]
    for u, v in zip(a, b, strict=True):
        adjacent[u].append(v)
        adjacent[v].append(u)
    labels = np.full(n, -1)
    for start in range(n):
        if labels[start] >= 0:
            continue
        stack, labels[start] = [start], start
        while stack:
            for v in adjacent[stack.pop()]:
                if labels[v] < 0:
                    labels[v] = start
                    stack.append(v)
    return labels


@pytest.mark.parametrize("seed", range(6))
def test_components_match_a_graph_search_on_random_graphs(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    m = int(rng.integers(0, 2 * n))
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    np.testing.assert_array_equal(connected_components(n, a, b), components_by_search(n, a, b))


def test_a_long_chain_in_any_order_is_one_component():
    order = np.random.default_rng(1).permutation(999)
    labels = connected_components(1000, order, order + 1)
    assert (labels == 0).all()


def test_mutual_edges_keep_pairs_listed_both_ways_above_the_threshold_once():
    query = np.array([0, 1, 0, 2, 3, 1, 4, 5])
    neighbor = np.array([1, 0, 2, 3, 2, 1, 5, 4])
    score = np.array([0.90, 0.89, 0.95, 0.80, 0.80, 1.0, 0.60, 0.60])
    a, b, s = mutual_edges(query, neighbor, score, min_similarity=0.7)
    # 0-1 both ways (lower score kept); 0->2 one way only; 2-3 both ways; 1->1 itself;
    # 4-5 both ways but below 0.7.
    assert list(zip(a.tolist(), b.tolist(), s.round(2).tolist(), strict=True)) == [
        (0, 1, 0.89),
        (2, 3, 0.8),
    ]


def test_a_listing_without_a_mutual_neighbour_is_in_no_group():
    # 0 and 1 are each other's nearest; 2's nearest is 0, but 0's list does not hold 2.
    query, neighbor, score = [0, 1, 2], [1, 0, 0], [0.9, 0.9, 0.9]
    labels = group_labels(3, query, neighbor, score, min_similarity=0.5)
    assert labels.tolist() == [0, 0, -1]
    assert group_labels(1, [], [], [], min_similarity=0.5).tolist() == [-1]


def test_group_summaries_cohesion_is_the_mean_pair_cosine_and_the_representative_typical():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(9, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = np.array([0, 0, 0, 0, 4, 4, -1, 7, 7])
    summaries = group_summaries(vectors, labels)
    assert sorted(summaries) == [0, 4, 7]
    for label, (representative, size, cohesion) in summaries.items():
        members = np.flatnonzero(labels == label)
        cosines = vectors[members] @ vectors[members].T
        pairs = cosines[np.triu_indices(len(members), 1)]
        assert size == len(members)
        assert cohesion == pytest.approx(pairs.mean(), abs=1e-9)
        # The member with the highest total cosine to the others (and itself); a pair ties.
        assert representative == members[int(np.argmax(cosines.sum(axis=1).round(9)))]
    assert summaries[7][0] == 7


def test_the_shared_neighbour_rule_cuts_a_bridge_between_two_styles():
    # Two styles of six listings, each listing's list holding its own style's other five,
    # and listings 5 and 6 in each other's lists too: mutual, but sharing no neighbour.
    query, neighbor = [], []
    for style in (range(0, 6), range(6, 12)):
        for i in style:
            for j in style:
                if i != j:
                    query.append(i)
                    neighbor.append(j)
    query += [5, 6]
    neighbor += [6, 5]
    score = np.full(len(query), 0.9)
    joined = group_labels(12, query, neighbor, score, min_similarity=0.5)
    assert set(joined.tolist()) == {0}
    cut = group_labels(12, query, neighbor, score, min_similarity=0.5, min_shared=2)
    assert cut.tolist() == [0] * 6 + [6] * 6


def test_short_lists_ask_no_more_shared_neighbours_than_they_hold():
    # A category of two: each is the other's only neighbour, nothing can be shared.
    labels = group_labels(2, [0, 1], [1, 0], [0.9, 0.9], min_similarity=0.5, min_shared=4)
    assert labels.tolist() == [0, 0]
    # Below the similarity they stay apart whatever the lists.
    labels = group_labels(2, [0, 1], [1, 0], [0.4, 0.4], min_similarity=0.5, min_shared=4)
    assert labels.tolist() == [-1, -1]
