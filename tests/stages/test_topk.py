"""Top-K at scale: sub-shards, exact shards, merged answers, measured recall, PCA, on Spark.

Real Annoy, faiss IVF and .npy shard files built by ``build_category_indexes`` on Spark local[2] in
tmp_path, queried through the neighbors and duplicates stages' own functions; every answer is
checked against a brute-force cosine top-K computed with numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from chispa import assert_df_equality
from pyspark.sql import types as T

from lookalike.config import IndexSettings
from lookalike.core.ann import ANNOY, EXACT, IVF, top_k
from lookalike.core.projection import Projection
from lookalike.stages.duplicate_pairs import embedding_pairs
from lookalike.stages.index import build_category_indexes, fit_projection, measure_recall
from lookalike.stages.neighbors import similar_items, without_own_duplicates

K = 5
RUN_ID = "2026-11-23"
# Enough nodes that Annoy inspects every item of these small shards: its answers are exact.
EXHAUSTIVE = 1_000_000

EMBEDDINGS_SCHEMA = T.StructType(
    [
        T.StructField("sku_id", T.StringType(), False),
        T.StructField("category", T.StringType(), False),
        T.StructField("is_active", T.BooleanType(), False),
        T.StructField("model_id", T.StringType(), False),
        T.StructField("embedding", T.ArrayType(T.FloatType()), False),
    ]
)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def synthetic_catalog(seed: int = 3) -> pd.DataFrame:
    """Three categories (240, 90, 30 SKUs) of clustered 16-d vectors, every 6th inactive, and
    exact copies: two SKUs sharing one vector (a planted duplicate pair) per category."""
    rng = np.random.default_rng(seed)
    rows = []
    for category, n in (("shoes", 240), ("bags", 90), ("hats", 30)):
        centres = _unit(rng.normal(size=(6, 16)))
        vectors = _unit(centres[rng.integers(0, 6, n)] + 0.4 * rng.normal(size=(n, 16)))
        vectors[1] = vectors[0]  # a duplicate listing: the very same photo
        for i, vector in enumerate(vectors):
            rows.append((f"{category}-{i:03d}", category, i % 6 != 5, "m1", vector))
    return pd.DataFrame(rows, columns=["sku_id", "category", "is_active", "model_id", "embedding"])


def brute_force_top_k(catalog: pd.DataFrame, k: int, exclude: set[tuple[str, str]] = frozenset()):
    """{sku_id: [similar sku_ids]}: active SKUs of the same category, self and ``exclude``
    pairs left out, best float32 cosine first, ties by sku_id."""
    answer = {}
    for _, members in catalog.groupby("category"):
        members = members.sort_values("sku_id").reset_index(drop=True)
        vectors = np.stack(members["embedding"]).astype(np.float32)
        scores = np.clip(vectors.astype(np.float64) @ vectors.T.astype(np.float64), -1, 1)
        scores = scores.astype(np.float32)
        sku_ids, active = members["sku_id"].to_numpy(), members["is_active"].to_numpy()
        for i in np.flatnonzero(active):
            others = [
                j
                for j in np.flatnonzero(active)
                if j != i and (sku_ids[i], sku_ids[j]) not in exclude
            ]
            others.sort(key=lambda j: (-scores[i, j], sku_ids[j]))
            answer[sku_ids[i]] = [sku_ids[j] for j in others[:k]]
    return answer


@pytest.fixture(scope="module")
def catalog() -> pd.DataFrame:
    return synthetic_catalog()


@pytest.fixture(scope="module")
def embeddings_df(spark, catalog):
    rows = [
        (r.sku_id, r.category, bool(r.is_active), r.model_id, [float(x) for x in r.embedding])
        for r in catalog.itertuples()
    ]
    return spark.createDataFrame(rows, EMBEDDINGS_SCHEMA)


@pytest.fixture(scope="module")
def mixed(embeddings_df, tmp_path_factory) -> pd.DataFrame:
    """Sub-shards of 70 at most; those of at most 60 exact, the others Annoy (read only)."""
    return build(
        embeddings_df,
        tmp_path_factory.mktemp("mixed"),
        max_shard_size=70,
        exact_max_size=60,
        kind=ANNOY,
    )


def build(embeddings_df, folder: Path, **settings) -> pd.DataFrame:
    """The manifest (pandas) of an index built on Spark with these settings."""
    manifest_df = build_category_indexes(
        embeddings_df, index_dir=folder, settings=IndexSettings(**settings), run_id=RUN_ID
    )
    return manifest_df.toPandas().sort_values("shard_id").reset_index(drop=True)


def answers(spark, manifest: pd.DataFrame, k: int = K, search_k: int = EXHAUSTIVE, clusters=()):
    """{sku_id: [similar sku_ids]} through the neighbors stage's functions."""
    manifest_df = spark.createDataFrame(manifest)
    clusters_df = spark.createDataFrame(list(clusters), "cluster_id string, sku_id string")
    similar_df = similar_items(manifest_df, k=k, search_k=search_k, run_id=RUN_ID)
    rows = without_own_duplicates(similar_df, clusters_df, k).toPandas()
    rows = rows.sort_values(["sku_id", "rank"])
    assert (
        rows.groupby("sku_id")["rank"].apply(list)
        == rows.groupby("sku_id")["rank"].apply(lambda r: list(range(1, len(r) + 1)))
    ).all()
    return rows, rows.groupby("sku_id")["similar_sku_id"].apply(list).to_dict()


# --- exact_search --------------------------------------------------------------------------


def test_exact_search_matches_a_full_sort_with_ties_masks_and_exclusions():
    rng = np.random.default_rng(0)
    items = _unit(rng.normal(size=(300, 8))).astype(np.float32)
    items[10:20] = items[5]  # eleven items with one vector: ties at every cut
    queries = np.vstack([items[:40], _unit(rng.normal(size=(10, 8)))]).astype(np.float32)
    allowed = rng.random(300) > 0.2
    exclude = np.concatenate([np.arange(40), np.full(10, -1)])
    got = top_k(items, queries, 7, allowed=allowed, exclude=exclude, block=16)
    for q, (ids, scores) in enumerate(got):
        row = np.clip(items.astype(np.float64) @ queries[q].astype(np.float64), -1, 1)
        row = row.astype(np.float32)
        candidates = [j for j in range(300) if allowed[j] and j != exclude[q]]
        candidates.sort(key=lambda j: (-row[j], j))
        assert ids.tolist() == candidates[:7], q
        np.testing.assert_array_equal(scores, row[candidates[:7]])


def test_exact_search_returns_fewer_when_fewer_are_allowed():
    items = _unit(np.random.default_rng(1).normal(size=(6, 4))).astype(np.float32)
    allowed = np.array([True, False, True, False, False, False])
    ((ids, scores),) = top_k(items, items[:1], 5, allowed=allowed, exclude=np.array([0]))
    assert ids.tolist() == [2]
    assert scores.dtype == np.float32


# --- sub-shards, exact shards and Annoy shards agree with brute force ----------------------


@pytest.mark.parametrize(
    ("layout", "settings"),
    [
        ("one Annoy shard per category", {"exact_max_size": 0, "kind": ANNOY}),
        ("one exact shard per category", {"exact_max_size": 10_000}),
        ("Annoy sub-shards", {"max_shard_size": 70, "exact_max_size": 0, "kind": ANNOY}),
        ("exact sub-shards", {"max_shard_size": 70, "exact_max_size": 10_000}),
        ("mixed", {"max_shard_size": 100, "exact_max_size": 60, "kind": ANNOY}),
        # IVF: nprobe 1,000 scans every list of these shards, so it is exact too.
        ("one IVF shard per category", {"exact_max_size": 0, "kind": IVF, "nprobe": 1000}),
        ("IVF sub-shards (auto)", {"max_shard_size": 70, "exact_max_size": 0, "nprobe": 1000}),
        (
            "mixed IVF and exact (auto)",
            {"max_shard_size": 100, "exact_max_size": 60, "nprobe": 1000},
        ),
        ("every shard exact", {"exact_max_size": 0, "kind": EXACT}),
    ],
)
def test_answers_equal_the_brute_force_top_k(
    spark, embeddings_df, catalog, tmp_path, layout, settings
):
    manifest = build(embeddings_df, tmp_path, **settings)
    _, found = answers(spark, manifest)
    assert found == brute_force_top_k(catalog, K), layout


def test_sub_shards_split_large_categories_into_equal_parts(mixed):
    manifest = mixed
    by_category = manifest.groupby("category")
    assert by_category["n_parts"].first().to_dict() == {"bags": 2, "hats": 1, "shoes": 4}
    assert by_category["n_items"].sum().to_dict() == {"bags": 90, "hats": 30, "shoes": 240}
    for _, parts in by_category:
        assert sorted(parts["part"]) == list(range(parts["n_parts"].iloc[0]))
        assert parts["shard_id"].is_unique
    shoes = manifest[manifest["category"] == "shoes"]
    assert shoes["n_items"].between(40, 80).all()  # a hash split: near 240 / 4 each
    assert set(manifest["kind"]) == {ANNOY, EXACT}
    assert (manifest.loc[manifest["kind"] == EXACT, "n_items"] <= 60).all()
    assert (manifest.loc[manifest["kind"] == EXACT, "n_trees"] == 0).all()
    assert (manifest.loc[manifest["kind"] == ANNOY, "n_trees"] == 20).all()
    for row in manifest.itertuples():
        assert Path(row.path).suffix == (".npy" if row.kind == EXACT else ".ann")
        assert row.projection == "none"


def test_no_self_inactive_other_category_or_own_duplicate_in_any_answer(spark, catalog, mixed):
    manifest = mixed
    clusters = [("dup-shoes", "shoes-000"), ("dup-shoes", "shoes-001")]
    clusters += [("dup-bags", "bags-000"), ("dup-bags", "bags-001")]
    rows, found = answers(spark, manifest, search_k=-1, clusters=clusters)
    category = dict(zip(catalog["sku_id"], catalog["category"], strict=True))
    active = dict(zip(catalog["sku_id"], catalog["is_active"], strict=True))
    assert not (rows["sku_id"] == rows["similar_sku_id"]).any()
    assert rows["similar_sku_id"].map(active).all()
    assert rows["sku_id"].map(active).all()
    assert (rows["sku_id"].map(category) == rows["similar_sku_id"].map(category)).all()
    assert (rows["category"] == rows["sku_id"].map(category)).all()
    for a, b in (("shoes-000", "shoes-001"), ("bags-000", "bags-001")):
        assert b not in found[a] and a not in found[b]
    # Every active SKU still gets K, its duplicate notwithstanding.
    assert set(found) == {s for s, is_active in active.items() if is_active}
    assert all(len(v) == K for v in found.values())


def test_own_duplicates_removed_and_the_rest_equal_brute_force(
    spark, embeddings_df, catalog, tmp_path
):
    manifest = build(embeddings_df, tmp_path, max_shard_size=70, exact_max_size=0, kind=ANNOY)
    clusters = [("dup-hats", "hats-000"), ("dup-hats", "hats-001")]
    # Asked for one more than K, as the stage does for clusters of two, then cut to K.
    manifest_df = spark.createDataFrame(manifest)
    clusters_df = spark.createDataFrame(clusters, "cluster_id string, sku_id string")
    similar_df = similar_items(manifest_df, k=K + 1, search_k=EXHAUSTIVE, run_id=RUN_ID)
    rows = without_own_duplicates(similar_df, clusters_df, K).toPandas()
    found = rows.sort_values(["sku_id", "rank"]).groupby("sku_id")["similar_sku_id"].apply(list)
    excluded = {("hats-000", "hats-001"), ("hats-001", "hats-000")}
    assert found.to_dict() == brute_force_top_k(catalog, K, exclude=excluded)


def test_scores_are_cosine_and_equal_scores_read_in_sku_id_order(spark, catalog, mixed):
    manifest = mixed
    rows, _ = answers(spark, manifest)
    vectors = dict(zip(catalog["sku_id"], catalog["embedding"], strict=True))
    expected = [
        float(np.dot(vectors[a], vectors[b]))
        for a, b in zip(rows["sku_id"], rows["similar_sku_id"], strict=True)
    ]
    np.testing.assert_allclose(rows["score"], expected, atol=1e-5)
    # shoes-000 and shoes-001 share one vector: for every other SKU that gets both they
    # tie, and are listed 000 before 001, whichever sub-shards hold them.
    both = rows[rows["similar_sku_id"].isin(["shoes-000", "shoes-001"])]
    seen = 0
    for _, pair in both.groupby("sku_id"):
        if len(pair) == 2:
            seen += 1
            assert pair.sort_values("rank")["similar_sku_id"].tolist() == ["shoes-000", "shoes-001"]
            assert pair["score"].nunique() == 1
    assert seen > 0


# --- duplicates across sub-shards ------------------------------------------------------------


def test_near_duplicate_pairs_are_found_across_sub_shards(spark, catalog, mixed):
    manifest = mixed
    part_of = {}
    for row in manifest.itertuples():
        for sku_id in pd.read_parquet(row.ids_path)["sku_id"]:
            part_of[sku_id] = row.shard_id
    pairs_df = embedding_pairs(
        spark.createDataFrame(manifest), min_similarity=0.999, candidates=5, search_k=-1
    )
    planted = {(f"{c}-000", f"{c}-001") for c in ("shoes", "bags", "hats")}
    # A pair split over two sub-shards may be found from either side: each pair once.
    assert_df_equality(
        pairs_df.select("sku_id_a", "sku_id_b", "evidence").distinct(),
        spark.createDataFrame(
            [(a, b, "embedding") for a, b in sorted(planted)],
            "sku_id_a string, sku_id_b string, evidence string",
        ),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    # The planted pairs include one split over two sub-shards (by the sku_id hash).
    assert any(part_of[a] != part_of[b] for a, b in planted)


# --- determinism and broken files ------------------------------------------------------------


@pytest.mark.parametrize("kind", [ANNOY, IVF])
def test_two_builds_give_byte_identical_files(embeddings_df, tmp_path, kind):
    settings = {"max_shard_size": 70, "exact_max_size": 60, "kind": kind}
    first = build(embeddings_df, tmp_path / "a", **settings)
    second = build(embeddings_df.orderBy("embedding"), tmp_path / "b", **settings)
    assert first["checksum"].tolist() == second["checksum"].tolist()
    for a, b in zip(first.itertuples(), second.itertuples(), strict=True):
        assert Path(a.path).read_bytes() == Path(b.path).read_bytes()
        assert Path(a.ids_path).read_bytes() == Path(b.ids_path).read_bytes()


# Every kind x damage is tested on Shard.open in test_index.py; here through Spark, as the
# stage meets it.
@pytest.mark.parametrize(
    ("kind_settings", "damage"),
    [
        ({"exact_max_size": 0, "kind": ANNOY}, "corrupt"),
        ({"exact_max_size": 0, "kind": IVF}, "corrupt"),
        ({"exact_max_size": 10_000}, "missing"),
    ],
)
def test_a_broken_shard_file_fails_the_query_naming_the_shard(
    spark, embeddings_df, tmp_path, kind_settings, damage
):
    manifest = build(embeddings_df, tmp_path, max_shard_size=70, **kind_settings)
    victim = manifest.iloc[1]
    path = Path(victim["path"])
    if damage == "missing":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    with pytest.raises(Exception) as excinfo:
        similar_items(spark.createDataFrame(manifest), k=K, search_k=-1, run_id=RUN_ID).collect()
    message = str(excinfo.value)
    assert victim["shard_id"] in message
    assert str(path) in message
    assert ("missing" if damage == "missing" else "checksum") in message


# --- measured recall -------------------------------------------------------------------------


def test_recall_is_measured_per_annoy_shard_and_falls_with_a_tiny_search_k(spark, tmp_path):
    rng = np.random.default_rng(4)
    vectors = _unit(rng.normal(size=(2000, 32))).astype(np.float32)  # no structure: hard
    rows = [(f"s{i:04d}", "c", True, "m1", v.tolist()) for i, v in enumerate(vectors)]
    manifest = build(
        spark.createDataFrame(rows, EMBEDDINGS_SCHEMA),
        tmp_path,
        exact_max_size=0,
        n_trees=2,
        kind=ANNOY,
    )
    manifest_df = spark.createDataFrame(manifest)

    def recall(search_k):
        (row,) = measure_recall(manifest_df, k=10, search_k=search_k, queries=50, seed=1).collect()
        assert row["queries"] == 50 and row["wanted"] == 500
        return row["hits"] / row["wanted"]

    assert recall(EXHAUSTIVE) == 1.0
    assert recall(10) < 0.9


def test_recall_is_measured_per_ivf_shard_and_falls_with_one_list_scanned(spark, tmp_path):
    # The ivf path through the stage: index.kind ivf above a tiny exact_max_size, the
    # recall sampling of measure_recall, and nprobe (stored in the file) deciding it.
    rng = np.random.default_rng(4)
    vectors = _unit(rng.normal(size=(2000, 32))).astype(np.float32)  # no structure: hard
    rows = [(f"s{i:04d}", "c", True, "m1", v.tolist()) for i, v in enumerate(vectors)]
    embeddings_df = spark.createDataFrame(rows, EMBEDDINGS_SCHEMA)

    def recall(nprobe):
        manifest = build(
            embeddings_df, tmp_path / str(nprobe), exact_max_size=10, kind=IVF, nprobe=nprobe
        )
        assert manifest["kind"].tolist() == [IVF] and manifest["n_trees"].tolist() == [0]
        assert Path(manifest["path"].iloc[0]).suffix == ".faiss"
        manifest_df = spark.createDataFrame(manifest)
        (row,) = measure_recall(manifest_df, k=10, search_k=-1, queries=50, seed=1).collect()
        assert row["kind"] == IVF and row["queries"] == 50 and row["wanted"] == 500
        return row["hits"] / row["wanted"]

    assert recall(1_000) == 1.0  # every one of its 51 lists
    assert recall(1) < 0.9


def test_exact_shards_are_not_sampled(spark, embeddings_df, tmp_path):
    manifest = build(embeddings_df, tmp_path, exact_max_size=10_000)
    rows = measure_recall(
        spark.createDataFrame(manifest), k=K, search_k=-1, queries=20, seed=0
    ).collect()
    assert {r["kind"] for r in rows} == {EXACT}
    assert all(r["queries"] == 0 for r in rows)


# --- PCA -------------------------------------------------------------------------------------


def test_pca_projection_is_fitted_on_spark_saved_and_recorded(spark, catalog, tmp_path):
    # 64-d vectors that vary along 8 directions only, plus a little noise.
    rng = np.random.default_rng(9)
    basis = _unit(rng.normal(size=(8, 64)))
    vectors = _unit(rng.normal(size=(500, 8)) @ basis + 0.01 * rng.normal(size=(500, 64)))
    rows = [
        (f"s{i:03d}", "c" if i % 2 else "d", True, "m1", v.tolist()) for i, v in enumerate(vectors)
    ]
    embeddings_df = spark.createDataFrame(rows, EMBEDDINGS_SCHEMA)
    projection = fit_projection(embeddings_df, dim=8, whiten=False, sample=10_000, seed=0)
    again = fit_projection(embeddings_df.repartition(3), dim=8, whiten=False, sample=10_000, seed=0)
    np.testing.assert_allclose(projection.components, again.components, atol=1e-5)
    assert projection.model_id == "m1"
    # Eight axes keep nearly all of it: the cosines of the centred vectors barely move.
    projected = projection.apply(vectors)
    assert projected.shape == (500, 8)
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), 1.0, atol=1e-5)
    centred = _unit(vectors - vectors.mean(axis=0))
    np.testing.assert_allclose(
        projected[:50] @ projected[:50].T, centred[:50] @ centred[:50].T, atol=0.02
    )

    path = projection.save(tmp_path)
    assert Projection.load(path).fingerprint == projection.fingerprint
    manifest_df = build_category_indexes(
        embeddings_df,
        index_dir=tmp_path,
        settings=IndexSettings(exact_max_size=0),
        run_id=RUN_ID,
        projection=projection,
    )
    manifest = manifest_df.toPandas()
    assert (manifest["dim"] == 8).all()
    assert (manifest["projection"] == projection.fingerprint).all()
    assert path.name == f"projection-{projection.fingerprint}.npz"


def test_pca_whitening_gives_unit_variance_axes(spark):
    rng = np.random.default_rng(2)
    vectors = _unit(rng.normal(size=(400, 16)) * np.linspace(0.1, 3, 16))
    rows = [(f"s{i:03d}", "c", True, "m1", v.tolist()) for i, v in enumerate(vectors)]
    projection = fit_projection(
        spark.createDataFrame(rows, EMBEDDINGS_SCHEMA), dim=4, whiten=True, sample=10_000, seed=0
    )
    raw = (vectors - projection.mean) @ projection.components.T * projection.scale
    np.testing.assert_allclose(raw.var(axis=0), 1.0, rtol=0.05)


def test_pca_dim_above_the_vectors_dimension_is_refused(spark, embeddings_df):
    with pytest.raises(ValueError, match="pca_dim"):
        fit_projection(embeddings_df, dim=32, whiten=True, sample=100, seed=0)
