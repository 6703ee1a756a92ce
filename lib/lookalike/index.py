"""Index: one Annoy index per category shard, built on the executors and saved as files.

Each shard is two files, ``<shard_id>.ann`` (Annoy, memory-mapped by readers) and
``<shard_id>.ids.parquet`` (dense Annoy item id -> sku_id, is_active), plus one row of the
manifest that names them with their checksum. Items are added in sku_id order with a fixed
seed and one build thread, so a rebuild of the same vectors gives the same file.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from annoy import AnnoyIndex
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from lookalike import faults
from lookalike.config import IndexSettings
from lookalike.files import file_sha256

METRIC = "angular"  # on L2-normalised vectors: cosine = 1 - distance**2 / 2

MANIFEST_SCHEMA = T.StructType(
    [
        T.StructField("run_id", T.StringType(), False),
        T.StructField("shard_id", T.StringType(), False),
        T.StructField("category", T.StringType(), False),
        T.StructField("n_items", T.LongType(), False),
        T.StructField("n_active", T.LongType(), False),
        T.StructField("dim", T.IntegerType(), False),
        T.StructField("metric", T.StringType(), False),
        T.StructField("n_trees", T.IntegerType(), False),
        T.StructField("model_id", T.StringType(), False),
        T.StructField("path", T.StringType(), False),
        T.StructField("ids_path", T.StringType(), False),
        T.StructField("checksum", T.StringType(), False),
    ]
)


class ShardError(RuntimeError):
    """A shard's files are missing or do not match the manifest."""


def shard_id_for(category: str) -> str:
    """A file-name-safe, collision-free id: categories come from sellers (``../x`` too)."""
    slug = re.sub(r"[^a-z0-9]+", "-", category.lower()).strip("-")[:40] or "category"
    return f"{slug}-{hashlib.sha1(category.encode()).hexdigest()[:8]}"


def cosine_from_angular(distance: np.ndarray | float) -> np.ndarray | float:
    return 1.0 - np.square(distance) / 2.0


def build_shard(
    members: pd.DataFrame, *, shard_id: str, index_dir: Path, settings: IndexSettings
) -> dict:
    """Build and save one shard's index from rows (sku_id, is_active, embedding)."""
    members = members.sort_values("sku_id", kind="stable").reset_index(drop=True)
    vectors = np.stack(members["embedding"].to_numpy()).astype(np.float32)
    dim = vectors.shape[1]
    index = AnnoyIndex(dim, METRIC)
    index.set_seed(settings.seed)
    for item_id, vector in enumerate(vectors):
        index.add_item(item_id, vector)
    # One build thread: Annoy's seeded builds are reproducible only for a fixed n_jobs.
    index.build(settings.n_trees, n_jobs=1)

    index_dir.mkdir(parents=True, exist_ok=True)
    ann_path = index_dir / f"{shard_id}.ann"
    ids_path = index_dir / f"{shard_id}.ids.parquet"
    # Written beside, then renamed: a reader never maps a half-written file.
    index.save(str(ann_path) + ".partial")
    faults.point("index.shard_saved")
    index.unload()
    os.replace(str(ann_path) + ".partial", ann_path)
    ids = pa.table(
        {
            "item_id": pa.array(np.arange(len(members)), pa.int64()),
            "sku_id": pa.array(members["sku_id"], pa.string()),
            "is_active": pa.array(members["is_active"], pa.bool_()),
        }
    )
    pq.write_table(ids, str(ids_path) + ".partial")
    os.replace(str(ids_path) + ".partial", ids_path)
    return {
        "n_items": len(members),
        "n_active": int(members["is_active"].sum()),
        "dim": dim,
        "path": str(ann_path),
        "ids_path": str(ids_path),
        "checksum": file_sha256(ann_path),
    }


def build_category_indexes(
    embeddings_df: DataFrame, *, index_dir: Path, settings: IndexSettings, run_id: str
) -> DataFrame:
    """One shard per category, built in parallel on the executors; returns the manifest."""

    def build(members: pd.DataFrame) -> pd.DataFrame:
        category = members["category"].iloc[0]
        shard_id = shard_id_for(category)
        built = build_shard(members, shard_id=shard_id, index_dir=index_dir, settings=settings)
        return pd.DataFrame(
            [
                {
                    "run_id": run_id,
                    "shard_id": shard_id,
                    "category": category,
                    "metric": METRIC,
                    "n_trees": settings.n_trees,
                    "model_id": members["model_id"].iloc[0],
                    **built,
                }
            ]
        )[MANIFEST_SCHEMA.fieldNames()]

    return (
        embeddings_df.select("category", "sku_id", "is_active", "model_id", "embedding")
        .groupBy("category")
        .applyInPandas(build, schema=MANIFEST_SCHEMA)
    )


@dataclass
class Shard:
    """A shard opened for queries: the memory-mapped index and its id map."""

    shard_id: str
    category: str
    model_id: str
    index: AnnoyIndex
    sku_ids: np.ndarray
    is_active: np.ndarray

    @classmethod
    def open(cls, row: pd.Series | dict) -> Shard:
        path, ids_path = Path(row["path"]), Path(row["ids_path"])
        for p in (path, ids_path):
            if not p.exists():
                raise ShardError(f"shard {row['shard_id']} ({row['category']!r}): missing {p}")
        if file_sha256(path) != row["checksum"]:
            raise ShardError(
                f"shard {row['shard_id']} ({row['category']!r}): {path} does not match the "
                "manifest checksum (corrupt or overwritten)"
            )
        index = AnnoyIndex(int(row["dim"]), row["metric"])
        index.load(str(path))  # memory-mapped, shared by every reader on the machine
        ids = pq.read_table(ids_path).to_pandas()
        if len(ids) != index.get_n_items() or len(ids) != row["n_items"]:
            raise ShardError(
                f"shard {row['shard_id']} ({row['category']!r}): {len(ids)} ids, "
                f"{index.get_n_items()} index items, manifest says {row['n_items']}"
            )
        return cls(
            shard_id=row["shard_id"],
            category=row["category"],
            model_id=row["model_id"],
            index=index,
            sku_ids=ids["sku_id"].to_numpy(),
            is_active=ids["is_active"].to_numpy(),
        )

    def neighbours(self, item_id: int, n: int, search_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to n nearest items of an item (itself included) and their cosine similarities."""
        ids, distances = self.index.get_nns_by_item(
            item_id, n, search_k=search_k, include_distances=True
        )
        return np.asarray(ids, dtype=np.int64), cosine_from_angular(np.asarray(distances))


def map_shards(manifest_df: DataFrame, query, schema: T.StructType) -> DataFrame:
    """Run ``query(shard) -> pd.DataFrame`` once per shard, spread over the executors."""

    def run(manifests: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for manifest in manifests:
            for _, row in manifest.iterrows():
                shard = Shard.open(row)
                try:
                    yield query(shard)
                finally:
                    shard.index.unload()

    n = max(1, manifest_df.sparkSession.sparkContext.defaultParallelism)
    return manifest_df.repartition(n).mapInPandas(run, schema=schema)
