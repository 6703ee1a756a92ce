"""Annoy, IVF and exact shards, top-K neighbors and near-duplicate pairs, without Spark.

Shards are real Annoy, faiss and .npy files built by ``build_shard`` in tmp_path from seeded
random vectors; answers are checked against exact cosine similarities computed with numpy.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest

from lookalike.config import IndexSettings
from lookalike.core.ann import (
    ANNOY,
    AUTO,
    EXACT,
    IVF,
    METRIC,
    Shard,
    ShardError,
    build_shard,
    choose_kind,
    ivf_lists,
    recall_of_shard,
    shard_id_for,
)
from lookalike.stages.duplicate_pairs import near_duplicate_pairs_across
from lookalike.stages.neighbors import SIMILAR_ITEMS_SCHEMA, top_k_for_shard

SETTINGS = IndexSettings()  # n_trees 20, search_k 5000, seed 42: the shipped defaults
DEFAULT_SEARCH_K = SETTINGS.search_k
K = 10
RUN_ID = "2026-11-23"
MODEL_ID = "mobilenet_v2-test"


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def clustered_vectors(n: int, dim: int, *, n_clusters: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    centers = _unit(rng.normal(size=(n_clusters, dim)))
    labels = rng.integers(0, n_clusters, n)
    return _unit(centers[labels] + spread * rng.normal(size=(n, dim))).astype(np.float32)


def members_frame(vectors: np.ndarray, sku_ids: list[str], is_active) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sku_id": sku_ids,
            "is_active": np.broadcast_to(np.asarray(is_active, bool), len(sku_ids)).copy(),
            "embedding": list(vectors.astype(np.float32)),
        }
    )


def open_shard(
    members: pd.DataFrame,
    index_dir: Path,
    *,
    category: str = "shoes",
    settings: IndexSettings = SETTINGS,
) -> tuple[Shard, dict]:
    """Build a shard and open it through a manifest row formed as build_category_indexes does."""
    shard_id = shard_id_for(category)
    built = build_shard(members, shard_id=shard_id, index_dir=index_dir, settings=settings)
    row = {
        "run_id": RUN_ID,
        "shard_id": shard_id,
        "category": category,
        "metric": METRIC,
        "n_trees": settings.n_trees,
        "model_id": MODEL_ID,
        **built,
    }
    return Shard.open(row), row


def cosine_matrix(members: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(sku_ids, cosine) in sku_id order, from the float32 vectors the index was given."""
    ordered = members.sort_values("sku_id").reset_index(drop=True)
    vectors = _unit(np.stack(ordered["embedding"].to_numpy()).astype(np.float64))
    return ordered["sku_id"].to_numpy(), vectors @ vectors.T


def exact_top_k(members: pd.DataFrame, k: int) -> dict[str, list[str]]:
    """Brute force: every active SKU's k most similar active SKUs, ties by sku_id."""
    sku_ids, cosine = cosine_matrix(members)
    active = dict(zip(members["sku_id"], members["is_active"], strict=True))
    is_active = np.array([active[s] for s in sku_ids])
    answer = {}
    for i, sku_id in enumerate(sku_ids):
        if not is_active[i]:
            continue
        candidates = [j for j in range(len(sku_ids)) if j != i and is_active[j]]
        candidates.sort(key=lambda j: (-cosine[i, j], sku_ids[j]))
        answer[sku_id] = [sku_ids[j] for j in candidates[:k]]
    return answer


@pytest.fixture(scope="module")
def catalog() -> pd.DataFrame:
    """300 SKUs in 12 clusters, 32-d; every 7th inactive; rows in no particular order."""
    n = 300
    vectors = clustered_vectors(n, 32, n_clusters=12, spread=0.35, seed=7)
    sku_ids = [f"sku-{i:04d}" for i in range(n)]
    members = members_frame(vectors, sku_ids, [i % 7 != 3 for i in range(n)])
    return members.sample(frac=1.0, random_state=3).reset_index(drop=True)


@pytest.fixture(scope="module")
def catalog_shard(catalog, tmp_path_factory) -> Shard:
    shard, _ = open_shard(catalog, tmp_path_factory.mktemp("index"))
    return shard


@pytest.fixture(scope="module")
def similar(catalog_shard) -> pd.DataFrame:
    return top_k_for_shard(catalog_shard, k=K, search_k=DEFAULT_SEARCH_K, run_id=RUN_ID)


# --- top_k_for_shard ---------------------------------------------------------------------


def test_recall_against_brute_force_at_default_search_k(catalog, similar):
    exact = exact_top_k(catalog, K)
    found = similar.groupby("sku_id")["similar_sku_id"].apply(list).to_dict()
    hits = sum(len(set(found.get(sku_id, [])) & set(want)) for sku_id, want in exact.items())
    recall = hits / sum(len(want) for want in exact.values())
    assert recall >= 0.95


def test_tiny_shard_matches_brute_force_exactly(tmp_path):
    # 20 items: with the default search_k Annoy looks at every item, so the answer is exact.
    vectors = clustered_vectors(20, 16, n_clusters=3, spread=0.5, seed=11)
    members = members_frame(vectors, [f"t{i:02d}" for i in range(20)], True)
    shard, _ = open_shard(members, tmp_path)
    k = 5
    similar = top_k_for_shard(shard, k=k, search_k=DEFAULT_SEARCH_K, run_id=RUN_ID)
    found = similar.groupby("sku_id")["similar_sku_id"].apply(list).to_dict()
    assert found == exact_top_k(members, k)


def test_no_self_and_no_inactive_among_similar(catalog, similar):
    inactive = set(catalog.loc[~catalog["is_active"], "sku_id"])
    assert len(inactive) > 0
    assert not (similar["sku_id"] == similar["similar_sku_id"]).any()
    assert not similar["similar_sku_id"].isin(inactive).any()


def test_inactive_skus_get_no_rows_of_their_own(catalog, similar):
    inactive = set(catalog.loc[~catalog["is_active"], "sku_id"])
    assert not similar["sku_id"].isin(inactive).any()


def test_every_active_sku_has_k_rows(catalog, similar):
    active = set(catalog.loc[catalog["is_active"], "sku_id"])
    counts = similar.groupby("sku_id").size()
    assert set(counts.index) == active
    assert (counts == K).all()


def test_ranks_are_1_to_k_and_scores_non_increasing(similar):
    for sku_id, rows in similar.groupby("sku_id", sort=False):
        assert rows["rank"].tolist() == list(range(1, K + 1)), sku_id
        scores = rows["score"].to_numpy()
        assert (np.diff(scores) <= 0).all(), sku_id


def test_scores_are_numpy_cosine(catalog, similar):
    sku_ids, cosine = cosine_matrix(catalog)
    position = {sku_id: i for i, sku_id in enumerate(sku_ids)}
    expected = cosine[
        similar["sku_id"].map(position).to_numpy(), similar["similar_sku_id"].map(position)
    ]
    np.testing.assert_allclose(similar["score"].to_numpy(), expected, atol=1e-4)


def test_output_columns_and_types_match_the_table_schema(similar):
    assert list(similar.columns) == SIMILAR_ITEMS_SCHEMA.fieldNames()
    assert similar["rank"].dtype == np.int32
    assert similar["score"].dtype == np.float32
    assert set(similar["category"]) == {"shoes"}
    assert set(similar["model_id"]) == {MODEL_ID}
    assert set(similar["run_id"]) == {RUN_ID}


def test_active_sku_keeps_k_rows_when_its_nearest_neighbors_are_inactive(tmp_path):
    # An active SKU surrounded by 30 inactive copies of itself: the first answers Annoy gives
    # are all inactive, so the query must widen until k active neighbors remain.
    rng = np.random.default_rng(5)
    center = _unit(rng.normal(size=16))
    near = _unit(center + 0.01 * rng.normal(size=(31, 16)))
    far = clustered_vectors(40, 16, n_clusters=4, spread=0.4, seed=6)
    vectors = np.vstack([near, far])
    sku_ids = ["a-active"] + [f"b-inactive-{i:02d}" for i in range(30)]
    sku_ids += [f"c-{i:02d}" for i in range(40)]
    members = members_frame(vectors, sku_ids, [True] + [False] * 30 + [True] * 40)
    shard, _ = open_shard(members, tmp_path)
    similar = top_k_for_shard(shard, k=K, search_k=DEFAULT_SEARCH_K, run_id=RUN_ID)
    rows = similar[similar["sku_id"] == "a-active"]
    assert rows["similar_sku_id"].tolist() == exact_top_k(members, K)["a-active"]


def test_sku_with_fewer_active_neighbors_than_k_gets_them_all(tmp_path):
    vectors = clustered_vectors(6, 8, n_clusters=2, spread=0.3, seed=2)
    members = members_frame(vectors, list("abcdef"), [True, True, True, False, True, False])
    shard, _ = open_shard(members, tmp_path)
    similar = top_k_for_shard(shard, k=K, search_k=DEFAULT_SEARCH_K, run_id=RUN_ID)
    assert similar.groupby("sku_id").size().to_dict() == {s: 3 for s in "abce"}


def test_exact_duplicate_vectors_tie_and_are_ordered_by_sku_id(tmp_path):
    # Three SKUs with the very same vector, added in reverse sku_id order: for each other
    # SKU they tie, and for each of them the other two tie at the top.
    vectors = clustered_vectors(40, 16, n_clusters=3, spread=0.3, seed=9)
    copies = np.repeat(vectors[:1], 3, axis=0)
    sku_ids = ["dup-c", "dup-a", "dup-b"] + [f"other-{i:02d}" for i in range(39)]
    members = members_frame(np.vstack([copies, vectors[1:]]), sku_ids, True)
    shard, _ = open_shard(members, tmp_path)
    similar = top_k_for_shard(shard, k=K, search_k=DEFAULT_SEARCH_K, run_id=RUN_ID)

    for sku_id, others in [
        ("dup-a", ["dup-b", "dup-c"]),
        ("dup-b", ["dup-a", "dup-c"]),
        ("dup-c", ["dup-a", "dup-b"]),
    ]:
        top = similar[similar["sku_id"] == sku_id].head(2)
        assert top["similar_sku_id"].tolist() == others
        assert top["score"].iloc[0] == top["score"].iloc[1]
        assert top["score"].iloc[0] == pytest.approx(1.0, abs=1e-6)

    # From elsewhere, the three copies appear together, with one score, in sku_id order.
    seen_together = 0
    for _, rows in similar[~similar["sku_id"].str.startswith("dup-")].groupby("sku_id"):
        dup_rows = rows[rows["similar_sku_id"].str.startswith("dup-")]
        if len(dup_rows) == 3:
            seen_together += 1
            assert dup_rows["similar_sku_id"].tolist() == ["dup-a", "dup-b", "dup-c"]
            assert dup_rows["score"].nunique() == 1
            assert np.diff(dup_rows["rank"].to_numpy()).tolist() == [1, 1]
    assert seen_together > 0


def test_equal_published_scores_are_in_sku_id_order_even_when_float64_differs(tmp_path):
    # 30 neighbors at angles 1.5e-8 rad apart around 0.3 rad from the query, named so that
    # sku_id order is the reverse of distance order: float32 scores collapse into a few equal
    # values, float64 scores do not.
    n = 30
    angles = 0.3 + 1.5e-8 * np.arange(n)
    vectors = np.zeros((n + 1, 8))
    vectors[0, 0] = 1.0
    vectors[1:, 0], vectors[1:, 1] = np.cos(angles), np.sin(angles)
    sku_ids = ["q"] + [f"n-{n - 1 - i:02d}" for i in range(n)]
    shard, _ = open_shard(members_frame(vectors, sku_ids, True), tmp_path)
    rows = top_k_for_shard(shard, k=n, search_k=DEFAULT_SEARCH_K, run_id=RUN_ID)
    rows = rows[rows["sku_id"] == "q"]
    scores, names = rows["score"].to_numpy(), rows["similar_sku_id"].to_numpy()
    tied = np.flatnonzero(scores[1:] == scores[:-1])
    assert len(tied) > 0  # the case really has published ties
    assert all(names[i] < names[i + 1] for i in tied)


def test_shard_with_no_active_sku_gives_a_typed_empty_frame(tmp_path):
    vectors = clustered_vectors(5, 8, n_clusters=1, spread=0.3, seed=1)
    shard, _ = open_shard(members_frame(vectors, list("abcde"), False), tmp_path)
    similar = top_k_for_shard(shard, k=K, search_k=DEFAULT_SEARCH_K, run_id=RUN_ID)
    assert len(similar) == 0
    assert list(similar.columns) == SIMILAR_ITEMS_SCHEMA.fieldNames()
    assert similar["rank"].dtype == np.int32
    assert similar["score"].dtype == np.float32
    assert similar["sku_id"].dtype == object
    assert similar["similar_sku_id"].dtype == object


# --- build_shard and Shard.open ----------------------------------------------------------


def test_build_returns_manifest_fields(catalog, tmp_path):
    _, row = open_shard(catalog, tmp_path)
    assert row["n_items"] == len(catalog)
    assert row["n_active"] == int(catalog["is_active"].sum())
    assert row["dim"] == 32
    assert Path(row["path"]) == tmp_path / f"{row['shard_id']}.ann"
    assert Path(row["ids_path"]) == tmp_path / f"{row['shard_id']}.ids.parquet"
    assert re.fullmatch(r"[0-9a-f]{64}", row["checksum"])
    assert not list(tmp_path.glob("*.partial"))


def test_shard_maps_item_ids_in_sku_id_order(catalog, catalog_shard):
    assert catalog_shard.sku_ids.tolist() == sorted(catalog["sku_id"])
    active = dict(zip(catalog["sku_id"], catalog["is_active"], strict=True))
    assert catalog_shard.is_active.tolist() == [active[s] for s in catalog_shard.sku_ids]


def test_two_builds_of_the_same_input_are_byte_identical(catalog, tmp_path):
    _, first = open_shard(catalog, tmp_path / "first")
    # Same rows in another order: items are added in sku_id order, so the file is the same.
    shuffled = catalog.sample(frac=1.0, random_state=99).reset_index(drop=True)
    _, second = open_shard(shuffled, tmp_path / "second")
    assert Path(first["path"]).read_bytes() == Path(second["path"]).read_bytes()
    assert first["checksum"] == second["checksum"]


def test_another_seed_builds_another_file(catalog, tmp_path):
    _, first = open_shard(catalog, tmp_path / "first")
    other = IndexSettings(seed=SETTINGS.seed + 1)
    _, second = open_shard(catalog, tmp_path / "second", settings=other)
    assert first["checksum"] != second["checksum"]


@pytest.fixture()
def built(tmp_path):
    vectors = clustered_vectors(50, 16, n_clusters=3, spread=0.3, seed=4)
    members = members_frame(vectors, [f"s{i:02d}" for i in range(50)], True)
    _, row = open_shard(members, tmp_path, category="Women's Shoes")
    return row


def _assert_names_the_shard(excinfo: pytest.ExceptionInfo[ShardError], row: dict) -> None:
    message = str(excinfo.value)
    assert row["shard_id"] in message
    assert "Women's Shoes" in message


def test_open_rejects_a_truncated_index_file(built):
    path = Path(built["path"])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ShardError) as excinfo:
        Shard.open(built)
    _assert_names_the_shard(excinfo, built)
    assert "checksum" in str(excinfo.value)


def test_open_rejects_a_corrupted_index_file_of_the_same_size(built):
    path = Path(built["path"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError) as excinfo:
        Shard.open(built)
    _assert_names_the_shard(excinfo, built)


def test_open_rejects_a_missing_index_file(built):
    Path(built["path"]).unlink()
    with pytest.raises(ShardError) as excinfo:
        Shard.open(built)
    _assert_names_the_shard(excinfo, built)
    assert built["path"] in str(excinfo.value)


def test_open_rejects_a_missing_ids_file(built):
    Path(built["ids_path"]).unlink()
    with pytest.raises(ShardError) as excinfo:
        Shard.open(built)
    _assert_names_the_shard(excinfo, built)
    assert built["ids_path"] in str(excinfo.value)


def test_open_rejects_a_manifest_with_another_item_count(built):
    with pytest.raises(ShardError) as excinfo:
        Shard.open({**built, "n_items": built["n_items"] + 1})
    _assert_names_the_shard(excinfo, built)


def test_open_accepts_the_row_as_a_pandas_series(built):
    shard = Shard.open(pd.Series(built))
    assert shard.shard_id == built["shard_id"]
    assert shard.category == "Women's Shoes"
    assert shard.index.get_n_items() == 50


# --- shard_id_for ------------------------------------------------------------------------

HOSTILE_CATEGORIES = [
    "../../etc",
    "a/b",
    "..",
    ".",
    "",
    "///",
    "C:\\Windows\\system32",
    "Schuhe & Stiefel — Größe 42",
    "靴",
    "👟👟",
    "shoes\x00.ann",
    "x" * 300,
]


@pytest.mark.parametrize("category", HOSTILE_CATEGORIES)
def test_shard_id_is_a_safe_file_name(category, tmp_path):
    shard_id = shard_id_for(category)
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", shard_id), shard_id
    assert len(f"{shard_id}.ids.parquet.partial") < 255
    # A file named after it lands inside the folder, and nowhere else.
    path = tmp_path / f"{shard_id}.ann"
    path.write_bytes(b"x")
    assert path.resolve().parent == tmp_path.resolve()


def test_shard_id_is_stable():
    assert shard_id_for("Shoes") == shard_id_for("Shoes")


@pytest.mark.parametrize(
    "categories",
    [
        ["Shoes", "shoes", "SHOES", " shoes", "shoes!"],
        ["a/b", "a b", "a-b", "a--b", "A/B"],
        ["", "靴", "👟", "!!!", "///"],
        ["x" * 40 + "a", "x" * 40 + "b"],
    ],
)
def test_shard_ids_differ_for_categories_that_slug_the_same(categories):
    assert len({shard_id_for(c) for c in categories}) == len(categories)


def test_shard_id_keeps_a_readable_slug():
    assert shard_id_for("Women's Shoes").startswith("women-s-shoes-")
    assert shard_id_for("../../etc").startswith("etc-")
    assert shard_id_for("靴").startswith("category-")


# --- near_duplicate_pairs_across -------------------------------------------------------

MIN_SIMILARITY = 0.95


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """60 distinct photos, 10 of them with a near-copy (vector + tiny noise), one with two."""
    rng = np.random.default_rng(21)
    originals = clustered_vectors(60, 32, n_clusters=6, spread=0.5, seed=22)
    sku_ids = [f"p{i:03d}" for i in range(60)]
    copies, copy_ids = [], []
    for i in range(10):
        copies.append(_unit(originals[i * 5] + 0.02 * rng.normal(size=32)))
        copy_ids.append(f"copy-of-p{i * 5:03d}")
    copies.append(_unit(originals[0] + 0.02 * rng.normal(size=32)))
    copy_ids.append("copy2-of-p000")
    vectors = np.vstack([originals, np.array(copies)])
    # Some inactive: duplicates are found among inactive listings too (canonical picks later).
    members = members_frame(vectors, sku_ids + copy_ids, [i % 4 != 0 for i in range(71)])
    shard, _ = open_shard(members, tmp_path_factory.mktemp("dups"), category="mugs")
    pairs = near_duplicate_pairs_across(
        shard, shard, min_similarity=MIN_SIMILARITY, candidates=10, search_k=DEFAULT_SEARCH_K
    )
    return members, pairs


def test_planted_near_copies_are_found_exactly(planted):
    members, pairs = planted
    sku_ids, cosine = cosine_matrix(members)
    expected = {
        (sku_ids[i], sku_ids[j])
        for i in range(len(sku_ids))
        for j in range(i + 1, len(sku_ids))
        if cosine[i, j] >= MIN_SIMILARITY
    }
    # The brute force agrees with the planting: 9 single copies, and 3 pairs among p000's three.
    assert len(expected) == 12
    assert ("copy-of-p000", "copy2-of-p000") in expected
    assert set(zip(pairs["sku_id_a"], pairs["sku_id_b"], strict=True)) == expected


def test_pair_scores_are_numpy_cosine(planted):
    members, pairs = planted
    sku_ids, cosine = cosine_matrix(members)
    position = {sku_id: i for i, sku_id in enumerate(sku_ids)}
    expected = cosine[pairs["sku_id_a"].map(position), pairs["sku_id_b"].map(position)]
    np.testing.assert_allclose(pairs["score"].to_numpy(), expected, atol=1e-4)


def test_pairs_are_ordered_unique_and_above_threshold(planted):
    _, pairs = planted
    assert (pairs["sku_id_a"] < pairs["sku_id_b"]).all()
    assert not pairs.duplicated(["sku_id_a", "sku_id_b"]).any()
    assert (pairs["score"] >= MIN_SIMILARITY).all()
    assert (pairs["score"] <= 1.0).all()
    assert set(pairs["evidence"]) == {"embedding"}


def test_no_pairs_gives_string_typed_empty_frame(tmp_path):
    vectors = _unit(np.random.default_rng(8).normal(size=(30, 16)))  # far apart in 16-d
    shard, _ = open_shard(members_frame(vectors, [f"u{i:02d}" for i in range(30)], True), tmp_path)
    pairs = near_duplicate_pairs_across(
        shard, shard, min_similarity=0.99, candidates=10, search_k=DEFAULT_SEARCH_K
    )
    assert len(pairs) == 0
    assert list(pairs.columns) == ["sku_id_a", "sku_id_b", "score", "evidence"]
    assert pairs["sku_id_a"].dtype == object
    assert pairs["sku_id_b"].dtype == object
    assert pairs["evidence"].dtype == object
    assert pairs["score"].dtype == np.float32


# --- exact shards ------------------------------------------------------------------------


@pytest.fixture()
def built_exact(tmp_path):
    vectors = clustered_vectors(50, 16, n_clusters=3, spread=0.3, seed=4)
    members = members_frame(vectors, [f"s{i:02d}" for i in range(50)], True)
    shard_id = shard_id_for("Women's Shoes")
    built = build_shard(
        members, shard_id=shard_id, index_dir=tmp_path, settings=SETTINGS, kind=EXACT
    )
    return {
        "run_id": RUN_ID,
        "shard_id": shard_id,
        "category": "Women's Shoes",
        "metric": METRIC,
        "model_id": MODEL_ID,
        **built,
    }


def test_exact_shard_is_a_vector_file_answering_like_brute_force(built_exact):
    assert built_exact["kind"] == EXACT and built_exact["n_trees"] == 0
    assert Path(built_exact["path"]).suffix == ".npy"
    shard = Shard.open(built_exact)
    assert shard.index is None and shard.vectors.shape == (50, 16)
    similar = top_k_for_shard(shard, k=5, search_k=DEFAULT_SEARCH_K, run_id=RUN_ID)
    members = pd.DataFrame(
        {"sku_id": shard.sku_ids, "is_active": True, "embedding": list(shard.item_vectors())}
    )
    found = similar.groupby("sku_id")["similar_sku_id"].apply(list).to_dict()
    assert found == exact_top_k(members, 5)


def test_open_rejects_a_corrupted_exact_shard(built_exact):
    path = Path(built_exact["path"])
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError) as excinfo:
        Shard.open(built_exact)
    _assert_names_the_shard(excinfo, built_exact)
    assert "checksum" in str(excinfo.value)


def test_open_rejects_a_missing_exact_shard(built_exact):
    Path(built_exact["path"]).unlink()
    with pytest.raises(ShardError) as excinfo:
        Shard.open(built_exact)
    _assert_names_the_shard(excinfo, built_exact)
    assert built_exact["path"] in str(excinfo.value)


def test_open_rejects_an_unknown_shard_kind(built_exact):
    with pytest.raises(ShardError, match="unknown shard kind 'faiss'") as excinfo:
        Shard.open({**built_exact, "kind": "faiss"})
    _assert_names_the_shard(excinfo, built_exact)


# --- IVF shards (faiss) ------------------------------------------------------------------

IVF_SETTINGS = IndexSettings(kind=IVF)
IVF_CATEGORY = "Women's Shoes"


def ivf_row(members: pd.DataFrame, index_dir: Path, *, settings: IndexSettings = IVF_SETTINGS):
    """A manifest row of an IVF shard built by build_shard, as build_category_indexes forms it."""
    shard_id = shard_id_for(IVF_CATEGORY)
    built = build_shard(
        members, shard_id=shard_id, index_dir=index_dir, settings=settings, kind=IVF
    )
    return {
        "run_id": RUN_ID,
        "shard_id": shard_id,
        "category": IVF_CATEGORY,
        "metric": METRIC,
        "model_id": MODEL_ID,
        **built,
    }


@pytest.fixture(scope="module")
def sofas() -> pd.DataFrame:
    """3,000 SKUs in 60 clusters, 64-d (clustered like product photos); every 7th inactive."""
    n = 3000
    vectors = clustered_vectors(n, 64, n_clusters=60, spread=0.12, seed=21)
    members = members_frame(vectors, [f"sofa-{i:05d}" for i in range(n)], np.arange(n) % 7 != 3)
    return members.sample(frac=1.0, random_state=5).reset_index(drop=True)


@pytest.fixture(scope="module")
def sofas_exact(sofas, tmp_path_factory) -> pd.DataFrame:
    shard_id = shard_id_for(IVF_CATEGORY)
    folder = tmp_path_factory.mktemp("exact")
    built = build_shard(sofas, shard_id=shard_id, index_dir=folder, settings=SETTINGS, kind=EXACT)
    row = {"shard_id": shard_id, "category": IVF_CATEGORY, "metric": METRIC, "model_id": MODEL_ID}
    return top_k_for_shard(Shard.open(row | built), k=K, search_k=-1, run_id=RUN_ID)


@pytest.fixture(scope="module")
def sofas_ivf(sofas, tmp_path_factory) -> dict:
    return ivf_row(sofas, tmp_path_factory.mktemp("ivf"))


def _by_sku(rows: pd.DataFrame) -> dict[str, list[str]]:
    return rows.groupby("sku_id")["similar_sku_id"].apply(list).to_dict()


def test_ivf_shard_is_a_faiss_file_in_the_manifest_row(sofas, sofas_ivf):
    row = sofas_ivf
    assert row["kind"] == IVF and row["n_trees"] == 0 and row["dim"] == 64
    assert row["n_items"] == 3000 and row["n_active"] == int(sofas["is_active"].sum())
    path = Path(row["path"])
    assert path.name == f"{row['shard_id']}.faiss"
    assert not list(path.parent.glob("*.partial"))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == row["checksum"]
    shard = Shard.open(row)
    # nlist about 4 sqrt(n) (219) but at least 39 vectors a list (76); the lists scanned
    # tuned to the target recall (test_an_ivf_shard_scans_the_fewest_lists_...).
    assert shard.index.nlist == ivf_lists(3000) == 76
    assert 1 <= shard.index.nprobe < 76
    # Its stored vectors are the unit vectors it was given, in sku_id order.
    ordered = sofas.sort_values("sku_id")
    assert shard.sku_ids.tolist() == ordered["sku_id"].tolist()
    np.testing.assert_allclose(
        shard.item_vectors(np.array([0, 5, 2999])),
        _unit(np.stack(ordered["embedding"].to_numpy()[[0, 5, 2999]])),
        atol=1e-6,
    )


def test_ivf_answers_match_the_exact_shard_at_high_recall(sofas, sofas_ivf, sofas_exact):
    found = top_k_for_shard(Shard.open(sofas_ivf), k=K, search_k=-1, run_id=RUN_ID)
    want, got = _by_sku(sofas_exact), _by_sku(found)
    assert set(got) == set(want)  # every active SKU, and only those
    hits = sum(len(set(got[s]) & set(w)) for s, w in want.items())
    assert hits / sum(len(w) for w in want.values()) >= 0.99
    # Where IVF found the exact neighbors, it gives them the exact kind's scores, bit for bit
    # (both rescore in float64), in the same order.
    merged = found.merge(sofas_exact, on=["sku_id", "rank"], suffixes=("", "_exact"))
    same = merged["similar_sku_id"] == merged["similar_sku_id_exact"]
    assert same.mean() >= 0.98
    np.testing.assert_array_equal(merged.loc[same, "score"], merged.loc[same, "score_exact"])


def test_ivf_scanning_every_list_is_the_exact_answer(sofas, sofas_exact, tmp_path):
    row = ivf_row(sofas, tmp_path, settings=IndexSettings(kind=IVF, nprobe=10_000))
    found = top_k_for_shard(Shard.open(row), k=K, search_k=-1, run_id=RUN_ID)
    pd.testing.assert_frame_equal(found, sofas_exact)


def test_ivf_leaves_out_inactive_skus_and_self(sofas, sofas_ivf):
    found = top_k_for_shard(Shard.open(sofas_ivf), k=K, search_k=-1, run_id=RUN_ID)
    inactive = set(sofas.loc[~sofas["is_active"], "sku_id"])
    assert not found["similar_sku_id"].isin(inactive).any()
    assert not found["sku_id"].isin(inactive).any()
    assert not (found["sku_id"] == found["similar_sku_id"]).any()
    assert (found.groupby("sku_id").size() == K).all()
    for _, rows in found.groupby("sku_id"):
        assert (np.diff(rows["score"].to_numpy()) <= 0).all()


def test_an_ivf_shard_scans_the_fewest_lists_reaching_the_target_recall(sofas, tmp_path):
    probes, recalls = {}, {}
    for target in (0.5, 0.9, 0.99):
        settings = IndexSettings(kind=IVF, target_recall=target)
        shard = Shard.open(ivf_row(sofas, tmp_path / str(target), settings=settings))
        probes[target] = shard.index.nprobe
        # Measured as the neighbors stage measures it, on other sampled queries.
        got = recall_of_shard(shard, k=K, search_k=-1, queries=300, seed=11)
        recalls[target] = got["hits"] / got["wanted"]
        shard.close()
    assert 1 <= probes[0.5] <= probes[0.9] <= probes[0.99] < 76
    assert probes[0.5] < probes[0.99]
    assert recalls[0.5] < recalls[0.99] and recalls[0.99] >= 0.97
    # The same vectors and target give the same count (it is part of the shard file).
    again = Shard.open(
        ivf_row(sofas, tmp_path / "again", settings=IndexSettings(kind=IVF, target_recall=0.9))
    )
    assert again.index.nprobe == probes[0.9]


def test_ivf_widens_when_the_probed_lists_hold_only_inactive_neighbors(tmp_path):
    # An active SKU among 60 inactive near copies of itself, one list scanned: that list
    # gives too few active items, so the query scans more lists until k remain.
    rng = np.random.default_rng(5)
    center = _unit(rng.normal(size=16))
    near = _unit(center + 0.01 * rng.normal(size=(61, 16)))
    far = clustered_vectors(400, 16, n_clusters=8, spread=0.3, seed=6)
    sku_ids = ["a-active"] + [f"b-inactive-{i:02d}" for i in range(60)]
    sku_ids += [f"c-{i:03d}" for i in range(400)]
    members = members_frame(np.vstack([near, far]), sku_ids, [True] + [False] * 60 + [True] * 400)
    row = ivf_row(members, tmp_path, settings=IndexSettings(kind=IVF, nprobe=1))
    shard = Shard.open(row)
    assert shard.index.nlist > 1 and shard.index.nprobe == 1
    (own_list,) = shard.index.quantizer.search(shard.item_vectors(np.array([0])), 1)[1]
    lists = faiss.extract_index_ivf(shard.index).invlists
    in_list = faiss.rev_swig_ptr(lists.get_ids(int(own_list[0])), lists.list_size(int(own_list[0])))
    assert shard.is_active[in_list].sum() - 1 < K  # its own list alone cannot fill K
    (ids, scores), *_ = shard.search(
        shard.item_vectors(np.array([0])), K, search_k=-1, active_only=True, exclude=np.array([0])
    )
    assert len(ids) == K and shard.is_active[ids].all() and 0 not in ids
    assert (np.diff(scores) <= 0).all()


def test_ivf_exact_duplicates_tie_and_are_ordered_by_sku_id(tmp_path):
    vectors = clustered_vectors(40, 16, n_clusters=3, spread=0.3, seed=9)
    copies = np.repeat(vectors[:1], 3, axis=0)
    sku_ids = ["dup-c", "dup-a", "dup-b"] + [f"other-{i:02d}" for i in range(39)]
    members = members_frame(np.vstack([copies, vectors[1:]]), sku_ids, True)
    similar = top_k_for_shard(Shard.open(ivf_row(members, tmp_path)), k=K, search_k=-1, run_id="r")
    for sku_id, others in [("dup-a", ["dup-b", "dup-c"]), ("dup-c", ["dup-a", "dup-b"])]:
        top = similar[similar["sku_id"] == sku_id].head(2)
        assert top["similar_sku_id"].tolist() == others
        assert top["score"].iloc[0] == top["score"].iloc[1] == pytest.approx(1.0, abs=1e-6)
    for _, rows in similar[~similar["sku_id"].str.startswith("dup-")].groupby("sku_id"):
        dups = rows[rows["similar_sku_id"].str.startswith("dup-")]
        # All three, or those the cut at K leaves, always in sku_id order at one score.
        names = dups["similar_sku_id"].tolist()
        assert names == ["dup-a", "dup-b", "dup-c"][: len(names)]
        assert dups["score"].nunique() <= 1


def test_ivf_shard_with_no_active_sku_answers_nothing(tmp_path):
    vectors = clustered_vectors(100, 8, n_clusters=2, spread=0.3, seed=1)
    members = members_frame(vectors, [f"x{i:03d}" for i in range(100)], False)
    similar = top_k_for_shard(Shard.open(ivf_row(members, tmp_path)), k=K, search_k=-1, run_id="r")
    assert len(similar) == 0 and list(similar.columns) == SIMILAR_ITEMS_SCHEMA.fieldNames()


def test_two_ivf_builds_of_the_same_input_are_byte_identical(sofas, sofas_ivf, tmp_path):
    # Same rows in another order and another number of faiss threads: the training sample
    # and k-means are seeded, items are added in sku_id order, so the file is the same byte
    # for byte (and so are its answers).
    shuffled = sofas.sample(frac=1.0, random_state=99).reset_index(drop=True)
    built = {}
    for threads in ("1", "2"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("OMP_NUM_THREADS", threads)
            built[threads] = ivf_row(shuffled, tmp_path / threads)
    for row in built.values():
        assert Path(row["path"]).read_bytes() == Path(sofas_ivf["path"]).read_bytes()
        assert row["checksum"] == sofas_ivf["checksum"]


def test_another_seed_trains_another_ivf_file(sofas, sofas_ivf, tmp_path):
    other = ivf_row(sofas, tmp_path, settings=IndexSettings(kind=IVF, seed=SETTINGS.seed + 1))
    assert other["checksum"] != sofas_ivf["checksum"]


@pytest.fixture()
def built_ivf(tmp_path) -> dict:
    vectors = clustered_vectors(400, 16, n_clusters=5, spread=0.3, seed=4)
    return ivf_row(members_frame(vectors, [f"s{i:03d}" for i in range(400)], True), tmp_path)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_open_rejects_a_damaged_ivf_shard(built_ivf, damage):
    path = Path(built_ivf["path"])
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError) as excinfo:
        Shard.open(built_ivf)
    _assert_names_the_shard(excinfo, built_ivf)
    assert "checksum" in str(excinfo.value)


def test_open_rejects_a_file_that_is_not_a_faiss_index(built_ivf):
    # A file matching its (rewritten) checksum that faiss cannot read is refused by name.
    path = Path(built_ivf["path"])
    path.write_bytes(b"not an index")
    row = {**built_ivf, "checksum": hashlib.sha256(b"not an index").hexdigest()}
    with pytest.raises(ShardError, match="is not a faiss index") as excinfo:
        Shard.open(row)
    _assert_names_the_shard(excinfo, row)


def test_recall_is_sampled_on_ivf_shards(sofas_ivf):
    shard = Shard.open(sofas_ivf)
    got = recall_of_shard(shard, k=K, search_k=-1, queries=200, seed=3)
    assert got["kind"] == IVF and got["queries"] == 200 and got["wanted"] == 200 * K
    assert got["hits"] / got["wanted"] >= 0.99
    shard.index.nprobe = 1
    assert recall_of_shard(shard, k=K, search_k=-1, queries=200, seed=3)["hits"] < got["hits"]


# --- index.kind ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "small", "large"),
    [
        ("auto", EXACT, IVF),
        ("ivf", EXACT, IVF),
        ("annoy", EXACT, ANNOY),
        ("exact", EXACT, EXACT),
    ],
)
def test_kind_chooses_exact_up_to_exact_max_size_then_the_configured_index(kind, small, large):
    settings = IndexSettings(kind=kind, exact_max_size=1000)
    assert choose_kind(0, settings) == small
    assert choose_kind(1000, settings) == small
    assert choose_kind(1001, settings) == large
    assert choose_kind(10_000_000, settings) == large


def test_auto_is_the_default_keeps_small_shards_exact_and_tries_ivf_below_exact_max_size():
    assert SETTINGS.kind == AUTO
    assert choose_kind(SETTINGS.auto_ivf_min_size - 1, SETTINGS) == EXACT
    # From auto_ivf_min_size to exact_max_size: built as IVF, kept only where it pays.
    assert choose_kind(SETTINGS.auto_ivf_min_size, SETTINGS) == AUTO
    assert choose_kind(SETTINGS.exact_max_size, SETTINGS) == AUTO
    assert choose_kind(SETTINGS.exact_max_size + 1, SETTINGS) == IVF
    for kind in (IVF, ANNOY, EXACT):  # only auto tries
        assert choose_kind(SETTINGS.exact_max_size, IndexSettings(kind=kind)) == EXACT


def test_an_auto_shard_stays_ivf_where_its_scan_is_small_and_is_saved_exact_where_not(tmp_path):
    settings = IndexSettings(auto_ivf_min_size=1000, exact_max_size=10_000)
    clustered = clustered_vectors(3000, 32, n_clusters=60, spread=0.02, seed=5)
    uniform = _unit(np.random.default_rng(5).normal(size=(3000, 32))).astype(np.float32)
    ids = [f"SKU-{i:05d}" for i in range(3000)]
    assert choose_kind(3000, settings) == AUTO
    for name, vectors, kind, suffix in (
        ("clustered", clustered, IVF, ".faiss"),
        ("uniform", uniform, EXACT, ".npy"),  # every query must scan most lists: exact wins
    ):
        members = members_frame(vectors, ids, True)
        folder = tmp_path / name
        built = build_shard(members, shard_id=name, index_dir=folder, settings=settings, kind=AUTO)
        assert built["kind"] == kind, name
        assert {p.name for p in folder.iterdir()} == {name + suffix, name + ".ids.parquet"}
        row = {**built, "shard_id": name, "category": name, "metric": METRIC, "model_id": MODEL_ID}
        shard = Shard.open(row)
        assert shard.kind == kind
        if kind == IVF:  # kept because it is cheap, still at the target recall
            got = recall_of_shard(shard, k=K, search_k=-1, queries=200, seed=3)
            assert got["hits"] / got["wanted"] >= settings.target_recall


def test_annoy_is_still_selectable_and_builds_an_annoy_file(catalog, tmp_path):
    settings = IndexSettings(kind=ANNOY, exact_max_size=10)
    kind = choose_kind(len(catalog), settings)
    built = build_shard(catalog, shard_id="a", index_dir=tmp_path, settings=settings, kind=kind)
    assert built["kind"] == ANNOY and Path(built["path"]).suffix == ".ann"
    assert built["n_trees"] == settings.n_trees
