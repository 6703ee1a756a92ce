"""Published runs of made-up rows, for the service's tests and ``benchmarks/serve_latency.py``.

``synthetic_tables`` makes the four tables a snapshot reads, with the publish stage's columns;
``publish_tables`` writes them as the publish stage does: Parquet files of the run's working
folder, each table replaced by them in one Delta commit (``lookalike.tables.publish_files``),
then the run's ``runs`` record naming every version. A million SKUs with ten similar items each
take about half a minute on two cores.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lookalike import tables
from lookalike.layout import RunLayout, TableLayout

MODEL_ID = "mobilenet_v2-synthetic"


def sku_ids(n: int) -> pa.Array:
    width = len(str(max(n - 1, 0)))
    return pa.array([f"SKU-{i:0{width}d}" for i in range(n)], pa.string())


def synthetic_tables(
    n_skus: int,
    k: int,
    run_id: str,
    *,
    seed: int = 0,
    n_categories: int = 20,
    n_clusters: int = 10,
    n_mismatches: int = 10,
    n_styles: int = 10,
) -> dict[str, pa.Table]:
    """similar_items, duplicate_clusters, category_mismatches, style_groups and catalog of
    one run.

    SKU ``i`` is in category ``i % n_categories``; its similar items are other SKUs of that
    category with falling scores; cluster ``c`` is SKUs ``c`` and ``c + n_categories`` (one
    category); the first ``n_mismatches`` SKUs after the clusters are flagged; style group
    ``g`` is SKUs ``3n + g``, ``4n + g`` and ``5n + g`` for n categories (the last the
    representative).
    """
    if n_skus % n_categories or n_skus < 3 * n_categories:
        raise ValueError(f"n_skus must be a multiple of n_categories ({n_categories}), >= 3x it")
    rng = np.random.default_rng(seed)
    ids = sku_ids(n_skus)
    names = pa.array([f"category-{c:03d}" for c in range(n_categories)])
    sku = np.arange(n_skus, dtype=np.int64)
    category = sku % n_categories
    per_category = n_skus // n_categories
    k = min(k, per_category - 1)
    # The j-th similar item of SKU i: i + j * n_categories steps on, wrapping in its category.
    steps = np.arange(1, k + 1, dtype=np.int64)
    slot = (sku // n_categories)[:, None] + steps[None, :]
    other = (slot % per_category) * n_categories + category[:, None]
    score = np.sort(rng.uniform(0.55, 0.99, size=(n_skus, k)).astype(np.float32), axis=1)[:, ::-1]
    rows = n_skus * k
    similar = pa.table(
        {
            "sku_id": ids.take(pa.array(np.repeat(sku, k))),
            "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), n_skus)),
            "similar_sku_id": ids.take(pa.array(other.reshape(-1))),
            "score": pa.array(score.reshape(-1)),
            "category": names.take(pa.array(np.repeat(category, k))),
            "model_id": pa.array(np.full(rows, MODEL_ID, dtype=object), pa.string()),
            "run_id": pa.array(np.full(rows, run_id, dtype=object), pa.string()),
            "source": pa.array(np.full(rows, "index", dtype=object), pa.string()),
        }
    )
    catalog = pa.table(
        {
            "sku_id": ids,
            "category": names.take(pa.array(category)),
            "image_uri": pc.binary_join_element_wise("/nonexistent/photos/", ids, ".jpg", ""),
            "title": pc.binary_join_element_wise("Product ", ids, ""),
            "is_active": pa.array(np.ones(n_skus, dtype=bool)),
            "updated_at": pa.array(
                np.full(n_skus, datetime(2026, 1, 1, tzinfo=UTC)), pa.timestamp("us", tz="UTC")
            ),
            "category_path": names.take(pa.array(category)),
        }
    )
    return {
        "similar_items": similar,
        "duplicate_clusters": _clusters(ids, names, n_categories, n_clusters, run_id),
        "category_mismatches": _mismatches(
            ids, names, n_categories, n_clusters, n_mismatches, run_id
        ),
        "style_groups": _styles(ids, names, n_categories, n_styles, run_id),
        "catalog": catalog,
    }


def _styles(ids, names, n_categories: int, n_styles: int, run_id: str) -> pa.Table:
    rows = []
    for g in range(n_styles):
        members = [(3 + j) * n_categories + g for j in range(3)]
        for j, sku in enumerate(members):
            rows.append(
                {
                    "group_id": f"style-{g:016d}",
                    "category": names[g % n_categories].as_py(),
                    "sku_id": ids[sku].as_py(),
                    "is_representative": j == 2,
                    "representative_sku_id": ids[members[2]].as_py(),
                    "group_size": 3,
                    "cohesion": 0.9 - 0.01 * g,
                    "similarity": 0.99 if j == 2 else 0.95 - 0.01 * j,
                    "model_id": MODEL_ID,
                    "run_id": run_id,
                }
            )
    return pa.Table.from_pylist(rows, schema=STYLES_SCHEMA)


def _clusters(ids, names, n_categories: int, n_clusters: int, run_id: str) -> pa.Table:
    rows = []
    for c in range(n_clusters):
        canonical, other = c, c + n_categories  # the same category
        cluster_id = f"dup-{c:012d}"
        for sku, is_canonical in ((canonical, True), (other, False)):
            rows.append(
                {
                    "cluster_id": cluster_id,
                    "sku_id": ids[sku].as_py(),
                    "canonical_sku_id": ids[canonical].as_py(),
                    "is_canonical": is_canonical,
                    "category": names[c % n_categories].as_py(),
                    "evidence": "content_hash" if c % 2 == 0 else "embedding",
                    "score": 1.0 if is_canonical else 0.97 - 0.01 * c,
                    "phash_distance": 0,
                    "min_score": 0.97 - 0.01 * c,
                    "run_id": run_id,
                }
            )
    return pa.Table.from_pylist(rows, schema=CLUSTERS_SCHEMA)


def _mismatches(ids, names, n_categories, n_clusters, n_mismatches, run_id) -> pa.Table:
    first = 2 * n_categories + n_clusters
    rows = []
    for i in range(first, min(first + n_mismatches, len(ids))):
        category = i % n_categories
        suggested = (category + 1) % n_categories
        rows.append(
            {
                "sku_id": ids[i].as_py(),
                "category": names[category].as_py(),
                "suggested_category": names[suggested].as_py(),
                "suggested_share": 0.9,
                "own_share": 0.0,
                "suggested_score": 0.8,
                "own_best_score": 0.5,
                "neighbour_sku_ids": [
                    ids[suggested].as_py(),
                    ids[suggested + n_categories].as_py(),
                ],
                "neighbour_categories": [names[suggested].as_py()] * 2,
                "model_id": MODEL_ID,
                "run_id": run_id,
            }
        )
    return pa.Table.from_pylist(rows, schema=MISMATCHES_SCHEMA)


CLUSTERS_SCHEMA = pa.schema(
    [
        ("cluster_id", pa.string()),
        ("sku_id", pa.string()),
        ("canonical_sku_id", pa.string()),
        ("is_canonical", pa.bool_()),
        ("category", pa.string()),
        ("evidence", pa.string()),
        ("score", pa.float32()),
        ("phash_distance", pa.int32()),
        ("min_score", pa.float32()),
        ("run_id", pa.string()),
    ]
)
STYLES_SCHEMA = pa.schema(
    [
        ("group_id", pa.string()),
        ("category", pa.string()),
        ("sku_id", pa.string()),
        ("is_representative", pa.bool_()),
        ("representative_sku_id", pa.string()),
        ("group_size", pa.int32()),
        ("cohesion", pa.float32()),
        ("similarity", pa.float32()),
        ("model_id", pa.string()),
        ("run_id", pa.string()),
    ]
)
MISMATCHES_SCHEMA = pa.schema(
    [
        ("sku_id", pa.string()),
        ("category", pa.string()),
        ("suggested_category", pa.string()),
        ("suggested_share", pa.float32()),
        ("own_share", pa.float32()),
        ("suggested_score", pa.float32()),
        ("own_best_score", pa.float32()),
        ("neighbour_sku_ids", pa.list_(pa.string())),
        ("neighbour_categories", pa.list_(pa.string())),
        ("model_id", pa.string()),
        ("run_id", pa.string()),
    ]
)


def publish_tables(root, run_id: str, data: dict[str, pa.Table]) -> dict[str, int]:
    """Publish ``data`` under ``root`` as run ``run_id``; returns the table versions."""
    run, published = RunLayout(root, run_id), TableLayout(root)
    versions = {}
    for name, table in data.items():
        folder = run.work / name
        folder.mkdir()
        filesystem, path = (folder / "part-00000.parquet").arrow()
        pq.write_table(table, path, filesystem=filesystem, row_group_size=1_000_000)
        versions[name] = tables.publish_files(published.table(name), [folder])
    record = {
        "run_id": run_id,
        "run_date": date.today(),
        "model_id": MODEL_ID,
        "status": "published",
        "finished_at": datetime.now(UTC),
        "counts": json.dumps({name: t.num_rows for name, t in data.items()}),
        "stage_seconds": "{}",
        "gate_results": "[]",
        "table_versions": json.dumps(versions, sort_keys=True),
    }
    tables.write_table(
        published.table("runs"),
        pa.Table.from_pylist([record], schema=tables.RUNS_SCHEMA),
        replace_where=f"run_id = '{run_id}'",
    )
    return versions
