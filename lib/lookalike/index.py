"""Index: category shards of the run's vectors, built on the executors and saved as files.

A category is one shard, or ``n_parts`` sub-shards when it holds more than
``index.max_shard_size`` vectors (a SKU's sub-shard is a hash of its sku_id, so it does not
move when other SKUs come and go). A shard of at most ``index.exact_max_size`` vectors is
searched exactly (blocked matrix products, ``kind = exact``): below that size the products
are cheaper than building and querying trees. Larger ones get an Annoy index
(``kind = annoy``).

Each shard is two files plus one manifest row naming them with their checksum:
``<shard_id>.ann`` (Annoy) or ``<shard_id>.npy`` (float32 unit vectors), both memory-mapped by
readers, and ``<shard_id>.ids.parquet`` (dense item id -> sku_id, is_active). Items are added
in sku_id order, Annoy with a fixed seed and one build thread, so a rebuild of the same
vectors gives the same files.

Queries pair shards: every SKU asks every (sub-)shard of its category (``pair_shards``), the
answers of the sub-shards are merged by score in Spark, so no task holds a whole category and
nothing reaches the driver but manifest rows.

An optional PCA projection (``index.pca_dim``, fitted on a sample of the run's vectors with
partial sums computed on the executors) is applied before indexing and stored beside the
shards as ``projection-<fingerprint>.npz`` with the model id it was fitted for.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from annoy import AnnoyIndex
from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lookalike import faults
from lookalike.config import IndexSettings
from lookalike.core.storage import ChecksumMismatch, Location

METRIC = "angular"  # on L2-normalised vectors: cosine = 1 - distance**2 / 2
ANNOY, EXACT = "annoy", "exact"
NO_PROJECTION = "none"

MANIFEST_SCHEMA = T.StructType(
    [
        T.StructField("run_id", T.StringType(), False),
        T.StructField("shard_id", T.StringType(), False),
        T.StructField("category", T.StringType(), False),
        # Sub-shard number (0-based) of the category, and how many it has.
        T.StructField("part", T.IntegerType(), False),
        T.StructField("n_parts", T.IntegerType(), False),
        T.StructField("kind", T.StringType(), False),  # annoy | exact
        T.StructField("n_items", T.LongType(), False),
        T.StructField("n_active", T.LongType(), False),
        T.StructField("dim", T.IntegerType(), False),
        T.StructField("metric", T.StringType(), False),
        T.StructField("n_trees", T.IntegerType(), False),  # 0 for exact shards
        T.StructField("model_id", T.StringType(), False),
        # The PCA projection's fingerprint ("none" without one); its file beside the shards.
        T.StructField("projection", T.StringType(), False),
        T.StructField("path", T.StringType(), False),
        T.StructField("ids_path", T.StringType(), False),
        T.StructField("checksum", T.StringType(), False),
    ]
)

# Query vectors per block of exact search: 512 x 100k float32 scores = 200 MB at most.
EXACT_BLOCK = 512
# float32 products are within about 1e-6 of the float64 ones for unit vectors: candidates this
# close to the cut are rescored too, so a near-tie is decided in float64.
TIE_MARGIN = 1e-5


class ShardError(RuntimeError):
    """A shard's files are missing or do not match the manifest."""


def shard_id_for(category: str, part: int = 0, n_parts: int = 1) -> str:
    """A file-name-safe, collision-free id: categories come from sellers (``../x`` too)."""
    slug = re.sub(r"[^a-z0-9]+", "-", category.lower()).strip("-")[:40] or "category"
    base = f"{slug}-{hashlib.sha1(category.encode()).hexdigest()[:8]}"
    return base if n_parts == 1 else f"{base}-p{part:03d}of{n_parts:03d}"


def cosine_from_angular(distance: np.ndarray | float) -> np.ndarray | float:
    return 1.0 - np.square(distance) / 2.0


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


# --- PCA projection --------------------------------------------------------------------------


@dataclass(frozen=True)
class Projection:
    """Centre, rotate onto the top principal axes, optionally whiten; then unit length."""

    mean: np.ndarray  # (d,)
    components: np.ndarray  # (dim, d)
    scale: np.ndarray  # (dim,): 1/sqrt(eigenvalue) when whitening, ones otherwise
    model_id: str

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        projected = (np.asarray(vectors, np.float32) - self.mean) @ self.components.T
        return _unit_rows(projected * self.scale)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            mean=self.mean,
            components=self.components,
            scale=self.scale,
            model_id=np.array(self.model_id),
        )
        return buffer.getvalue()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]

    def save(self, folder: Path | Location) -> Location:
        path = Location.of(folder) / f"projection-{self.fingerprint}.npz"
        path.write_bytes(self.to_bytes())
        return path

    @classmethod
    def load(cls, path: Path | Location) -> Projection:
        with np.load(io.BytesIO(Location.of(path).read_bytes()), allow_pickle=False) as data:
            return cls(data["mean"], data["components"], data["scale"], str(data["model_id"]))


def fit_projection(
    embeddings_df: DataFrame, *, dim: int, whiten: bool, sample: int, seed: int
) -> Projection:
    """PCA on a sample of about ``sample`` vectors; the sums are taken on the executors and
    only one (d x d) matrix per partition reaches the driver."""
    n_total, model_ids = embeddings_df.agg(
        F.count(F.lit(1)), F.array_sort(F.collect_set("model_id"))
    ).first()
    if n_total == 0:
        raise ValueError("index.pca_dim: no vectors to fit the projection on")
    sample_df = embeddings_df.select("embedding")
    if n_total > sample:
        sample_df = sample_df.sample(fraction=sample / n_total, seed=seed)

    def partial_sums(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        count, total, outer = 0, None, None
        for batch in batches:
            if batch.empty:
                continue
            x = np.stack(batch["embedding"].to_numpy()).astype(np.float64)
            if total is None:
                total, outer = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
            count, total, outer = count + len(x), total + x.sum(0), outer + x.T @ x
        if count:
            yield pd.DataFrame(
                {"n": [count], "total": [total.tobytes()], "outer": [outer.tobytes()]}
            )

    schema = "n long, total binary, outer binary"
    parts = sample_df.mapInPandas(partial_sums, schema=schema).collect()
    n = sum(p["n"] for p in parts)
    d = len(parts[0]["total"]) // 8
    if dim > d:
        raise ValueError(f"index.pca_dim: {dim} is more than the vectors' {d} dimensions")
    total = sum(np.frombuffer(p["total"], np.float64) for p in parts)
    outer = sum(np.frombuffer(p["outer"], np.float64).reshape(d, d) for p in parts)
    mean = total / n
    covariance = outer / n - np.outer(mean, mean)
    values, vectors = np.linalg.eigh(covariance)
    top = np.argsort(values)[::-1][:dim]
    components = vectors[:, top].T
    # A fixed sign per axis (largest coordinate positive): eigh may flip it between runs.
    signs = np.sign(components[np.arange(dim), np.abs(components).argmax(1)])
    components = components * signs[:, None]
    scale = 1.0 / np.sqrt(np.maximum(values[top], 1e-12)) if whiten else np.ones(dim)
    return Projection(
        mean.astype(np.float32),
        components.astype(np.float32),
        scale.astype(np.float32),
        ",".join(model_ids),
    )


# --- building --------------------------------------------------------------------------------


def build_shard(
    members: pd.DataFrame,
    *,
    shard_id: str,
    index_dir: Path | Location,
    settings: IndexSettings,
    kind: str = ANNOY,
    projection: Projection | None = None,
) -> dict:
    """Build and save one shard from rows (sku_id, is_active, embedding).

    The files are built on local disk (Annoy writes and maps only local files): in
    ``index_dir`` itself when it is a local folder, else in a scratch folder and then
    uploaded to object storage.
    """
    members = members.sort_values("sku_id", kind="stable").reset_index(drop=True)
    vectors = np.stack(members["embedding"].to_numpy()).astype(np.float32)
    vectors = projection.apply(vectors) if projection is not None else _unit_rows(vectors)
    index_dir = Location.of(index_dir)
    scratch = None if index_dir.is_local else Path(tempfile.mkdtemp(prefix="lookalike-shard-"))
    try:
        built = _save_shard(members, vectors, scratch or index_dir.path, shard_id, settings, kind)
        path, ids_path = index_dir / built.pop("file"), index_dir / built.pop("ids_file")
        if scratch is not None:
            # The id map first: a shard file is never in place without its ids.
            ids_path.upload(scratch / ids_path.name)
            path.upload(scratch / path.name)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return built | {
        "projection": projection.fingerprint if projection is not None else NO_PROJECTION,
        "path": str(path),
        "ids_path": str(ids_path),
    }


def _save_shard(
    members: pd.DataFrame,
    vectors: np.ndarray,
    folder: Path,
    shard_id: str,
    settings: IndexSettings,
    kind: str,
) -> dict:
    """Write a shard's two files into a local folder; each is written beside and renamed, so
    a reader never maps a half-written file."""
    folder.mkdir(parents=True, exist_ok=True)
    dim = vectors.shape[1]
    if kind == EXACT:
        path = folder / f"{shard_id}.npy"
        with open(str(path) + ".partial", "wb") as out:
            np.save(out, np.ascontiguousarray(vectors))
        faults.point("index.shard_saved")
    else:
        index = AnnoyIndex(dim, METRIC)
        index.set_seed(settings.seed)
        for item_id, vector in enumerate(vectors):
            index.add_item(item_id, vector)
        # One build thread: Annoy's seeded builds are reproducible only for a fixed n_jobs.
        index.build(settings.n_trees, n_jobs=1)
        path = folder / f"{shard_id}.ann"
        index.save(str(path) + ".partial")
        faults.point("index.shard_saved")
        index.unload()
    os.replace(str(path) + ".partial", path)
    ids_path = folder / f"{shard_id}.ids.parquet"
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
        "kind": kind,
        "n_items": len(members),
        "n_active": int(members["is_active"].sum()),
        "dim": dim,
        "n_trees": settings.n_trees if kind == ANNOY else 0,
        "file": path.name,
        "ids_file": ids_path.name,
        "checksum": Location.of(path).sha256(),
    }


def with_parts(embeddings_df: DataFrame, max_shard_size: int) -> DataFrame:
    """Adds ``part`` and ``n_parts``: a category above max_shard_size is split by a hash of
    the sku_id into equal-sized sub-shards (a SKU keeps its part while others change)."""
    sizes_df = embeddings_df.groupBy("category").agg(
        F.greatest(F.lit(1), F.ceil(F.count(F.lit(1)) / F.lit(max_shard_size)))
        .cast("int")
        .alias("n_parts")
    )
    return embeddings_df.join(F.broadcast(sizes_df), "category").withColumn(
        "part", F.pmod(F.xxhash64("sku_id"), F.col("n_parts")).cast("int")
    )


def build_category_indexes(
    embeddings_df: DataFrame,
    *,
    index_dir: Location,
    settings: IndexSettings,
    run_id: str,
    projection: Projection | None = None,
) -> DataFrame:
    """One shard per category (or sub-shard), built in parallel on the executors; returns
    the manifest."""

    def build(members: pd.DataFrame) -> pd.DataFrame:
        category = members["category"].iloc[0]
        part, n_parts = int(members["part"].iloc[0]), int(members["n_parts"].iloc[0])
        shard_id = shard_id_for(category, part, n_parts)
        kind = EXACT if len(members) <= settings.exact_max_size else ANNOY
        built = build_shard(
            members,
            shard_id=shard_id,
            index_dir=index_dir,
            settings=settings,
            kind=kind,
            projection=projection,
        )
        return pd.DataFrame(
            [
                {
                    "run_id": run_id,
                    "shard_id": shard_id,
                    "category": category,
                    "part": part,
                    "n_parts": n_parts,
                    "metric": METRIC,
                    "model_id": members["model_id"].iloc[0],
                    **built,
                }
            ]
        )[MANIFEST_SCHEMA.fieldNames()]

    return (
        embeddings_df.select("category", "sku_id", "is_active", "model_id", "embedding")
        .transform(lambda df: with_parts(df, settings.max_shard_size))
        .groupBy("category", "part")
        .applyInPandas(build, schema=MANIFEST_SCHEMA)
    )


# --- querying --------------------------------------------------------------------------------


@dataclass
class Shard:
    """A shard opened for queries: the memory-mapped index (or vectors) and its id map."""

    shard_id: str
    category: str
    model_id: str
    kind: str
    index: AnnoyIndex | None
    vectors: np.ndarray | None  # exact shards: (n, dim) float32, memory-mapped
    sku_ids: np.ndarray
    is_active: np.ndarray

    @classmethod
    def open(cls, row: pd.Series | dict) -> Shard:
        def fail(problem: str) -> ShardError:
            return ShardError(f"shard {row['shard_id']} ({row['category']!r}): {problem}")

        kind = row.get("kind", ANNOY)
        path, ids_path = Location.of(row["path"]), Location.of(row["ids_path"])
        for p in (path, ids_path):
            if not p.exists():
                raise fail(f"missing {p}")
        corrupt = f"{path} does not match the manifest checksum (corrupt or overwritten)"
        if path.is_local and path.sha256() != row["checksum"]:
            raise fail(corrupt)
        try:
            # Object storage: fetched once per machine (checked against the checksum) and
            # memory-mapped from local disk like a local shard.
            local = path.local_copy(row["checksum"])
        except ChecksumMismatch:
            raise fail(corrupt) from None
        index, vectors = None, None
        if kind == EXACT:
            try:
                vectors = np.load(local, mmap_mode="r", allow_pickle=False)
            except ValueError as err:
                raise fail(f"{path} is not a vector file: {err}") from None
            n_items = len(vectors)
            if vectors.ndim != 2 or vectors.shape[1] != int(row["dim"]):
                raise fail(f"{path} holds vectors of shape {vectors.shape}, dim {row['dim']}")
        elif kind == ANNOY:
            index = AnnoyIndex(int(row["dim"]), row["metric"])
            index.load(str(local))  # memory-mapped, shared by every reader on the machine
            n_items = index.get_n_items()
        else:
            raise fail(f"unknown shard kind {kind!r}")
        try:
            ids_fs, ids_file = ids_path.arrow()
            ids = pq.read_table(ids_file, filesystem=ids_fs).to_pandas()
        except (pa.ArrowException, OSError) as err:
            raise fail(f"{ids_path} is unreadable: {err}") from None
        if len(ids) != n_items or len(ids) != row["n_items"]:
            raise fail(f"{len(ids)} ids, {n_items} index items, manifest says {row['n_items']}")
        return cls(
            shard_id=row["shard_id"],
            category=row["category"],
            model_id=row["model_id"],
            kind=kind,
            index=index,
            vectors=vectors,
            sku_ids=ids["sku_id"].to_numpy(),
            is_active=ids["is_active"].to_numpy(),
        )

    def close(self) -> None:
        if self.index is not None:
            self.index.unload()

    def __len__(self) -> int:
        return len(self.sku_ids)

    def item_vectors(self, item_ids: np.ndarray | None = None) -> np.ndarray:
        """Stored (unit) vectors of some items, or of all, as a float32 array."""
        if self.vectors is not None:
            chosen = self.vectors if item_ids is None else self.vectors[item_ids]
            return np.asarray(chosen, dtype=np.float32)
        ids = range(len(self)) if item_ids is None else item_ids
        return np.array([self.index.get_item_vector(int(i)) for i in ids], dtype=np.float32)

    def search(
        self,
        queries: np.ndarray,
        n: int,
        *,
        search_k: int,
        active_only: bool = False,
        exclude: np.ndarray | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each query vector, up to n (item ids, cosines) best first, ties by item id
        (= sku_id order); ``exclude[i]`` is an item id query i must not get (itself), -1 none;
        ``active_only`` leaves out inactive items and still returns n when there are n."""
        exclude = np.full(len(queries), -1) if exclude is None else exclude
        if self.kind == EXACT:
            return exact_search(
                self.item_vectors(), queries, n,
                allowed=self.is_active if active_only else None, exclude=exclude,
            )  # fmt: skip
        return [
            self._annoy_search(vector, n, search_k, active_only, int(excluded))
            for vector, excluded in zip(queries, exclude, strict=True)
        ]

    def _search_k(self, search_k: int, n: int) -> int:
        """The configured nodes per query, but never fewer than Annoy's own default for n
        (n_trees * n): asking for more neighbours (own duplicates, inactive SKUs) must not
        lower the recall."""
        return search_k if search_k < 0 else max(search_k, self.index.get_n_trees() * n)

    def _annoy_search(
        self, vector: np.ndarray, n: int, search_k: int, active_only: bool, excluded: int
    ) -> tuple[np.ndarray, np.ndarray]:
        n_items = len(self)
        asked = min(n_items, 2 * (n + 1))
        while True:
            ids, distances = self.index.get_nns_by_vector(
                vector, asked, search_k=self._search_k(search_k, asked), include_distances=True
            )
            ids = np.asarray(ids, dtype=np.int64)
            keep = ids != excluded
            if active_only:
                keep &= self.is_active[ids]
            # Items filtered after the search: ask for more until n remain.
            if keep.sum() >= n or asked >= n_items:
                break
            asked = min(n_items, 2 * asked)
        scores = np.clip(cosine_from_angular(np.asarray(distances)), -1.0, 1.0)
        ids, scores = ids[keep], scores[keep].astype(np.float32)
        # Ties broken on the published (float32) score, so equal scores read in sku_id order.
        order = np.lexsort((ids, -scores))[:n]
        return ids[order], scores[order]


def exact_search(
    items: np.ndarray,
    queries: np.ndarray,
    n: int,
    *,
    allowed: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    block: int = EXACT_BLOCK,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact top-n by cosine of unit vectors: a matrix product per block of queries, then a
    partial sort (argpartition) of each row; ties at the cut are taken in item id order."""
    items = np.ascontiguousarray(items, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n_items = len(items)
    exclude = np.full(len(queries), -1) if exclude is None else np.asarray(exclude)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, len(queries), block):
        scores = queries[start : start + block] @ items.T
        np.clip(scores, -1.0, 1.0, out=scores)
        if allowed is not None:
            scores[:, ~allowed] = -np.inf
        rows = np.arange(len(scores))
        excluded = exclude[start : start + block]
        scores[rows[excluded >= 0], excluded[excluded >= 0]] = -np.inf
        m = min(n, n_items)
        if m == 0:
            out.extend((np.empty(0, np.int64), np.empty(0, np.float32)) for _ in rows)
            continue
        if m < n_items:
            top = np.argpartition(-scores, m - 1, axis=1)[:, :m]
        else:
            top = np.broadcast_to(np.arange(n_items), scores.shape)
        # float32 products choose; float64 ones score what was chosen, so that identical
        # vectors get identical scores wherever they sit in the matrix (ties by item id).
        cut = np.take_along_axis(scores, top, 1).min(axis=1) - TIE_MARGIN
        wide = np.count_nonzero(scores >= cut[:, None], axis=1) > m
        block_queries = queries[start : start + block].astype(np.float64)
        for r in rows:
            candidates = np.flatnonzero(scores[r] >= cut[r]) if wide[r] else top[r]
            candidates = candidates[scores[r][candidates] > -np.inf]
            exact = np.clip(items[candidates].astype(np.float64) @ block_queries[r], -1.0, 1.0)
            exact = exact.astype(np.float32)
            order = np.lexsort((candidates, -exact))[:m]
            out.append((candidates[order].astype(np.int64), exact[order]))
    return out


# --- running queries on the executors --------------------------------------------------------

PAIR_COLUMNS = ("query", "target")


def pair_shards(manifest_df: DataFrame) -> list[tuple[dict, dict]]:
    """(query shard row, target shard row) for every two sub-shards of one category (each
    shard with itself too): the manifest's rows, one per shard, not the catalog."""
    rows = [r.asDict() for r in manifest_df.collect()]
    by_category: dict[str, list[dict]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    pairs = [
        (query, target)
        for members in by_category.values()
        for query in members
        for target in members
    ]
    pairs.sort(key=_largest_first)
    return pairs


def _largest_first(pair: tuple[dict, dict]) -> tuple:
    # Largest work first, so the biggest tasks start first and the small ones fill in.
    query, target = pair
    return (-(query["n_items"] * target["n_items"]), query["shard_id"], target["shard_id"])


def map_shard_pairs(
    manifest_df: DataFrame,
    query: Callable[[Shard, Shard], pd.DataFrame],
    schema: T.StructType,
    pairs: list[tuple[dict, dict]] | None = None,
) -> DataFrame:
    """Run ``query(query_shard, target_shard) -> pd.DataFrame`` for every pair of shards of
    one category (or for the given ``pairs`` of manifest rows, e.g. across the categories of
    one parent), one Spark task per pair (largest first), files opened on the executor."""
    spark = manifest_df.sparkSession
    pairs = pair_shards(manifest_df) if pairs is None else sorted(pairs, key=_largest_first)
    if not pairs:
        return spark.createDataFrame([], schema)
    encoded = [Row(query=_encode(q), target=_encode(t)) for q, t in pairs]
    # One partition per pair: Spark hands them to free cores in order, largest first.
    pairs_df = spark.createDataFrame(
        spark.sparkContext.parallelize(encoded, len(encoded)),
        "query string, target string",
    )

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for q_text, t_text in zip(batch["query"], batch["target"], strict=True):
                query_row, target_row = _decode(q_text), _decode(t_text)
                target = Shard.open(target_row)
                source = target
                try:
                    if query_row["shard_id"] != target_row["shard_id"]:
                        source = Shard.open(query_row)
                    yield query(source, target)
                finally:
                    target.close()
                    if source is not target:
                        source.close()

    return pairs_df.mapInPandas(run, schema=schema)


def map_shards(manifest_df: DataFrame, query, schema: T.StructType) -> DataFrame:
    """Run ``query(shard) -> pd.DataFrame`` once per shard, spread over the executors."""

    def run(manifests: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for manifest in manifests:
            for _, row in manifest.iterrows():
                shard = Shard.open(row)
                try:
                    yield query(shard)
                finally:
                    shard.close()

    n = max(1, manifest_df.sparkSession.sparkContext.defaultParallelism)
    return manifest_df.repartition(n).mapInPandas(run, schema=schema)


def _encode(row: dict) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def _decode(text: str) -> dict:
    return json.loads(text)


# --- measured recall -------------------------------------------------------------------------

RECALL_SCHEMA = T.StructType(
    [
        T.StructField("shard_id", T.StringType(), False),
        T.StructField("category", T.StringType(), False),
        T.StructField("kind", T.StringType(), False),
        T.StructField("queries", T.LongType(), False),
        T.StructField("hits", T.LongType(), False),
        T.StructField("wanted", T.LongType(), False),
    ]
)


def sample_items(shard: Shard, n: int, seed: int) -> np.ndarray:
    """A deterministic sample of n active item ids of a shard (by its id and the seed)."""
    active = np.flatnonzero(shard.is_active)
    digest = hashlib.sha256(f"{shard.shard_id}:{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return np.sort(rng.choice(active, size=min(n, len(active)), replace=False))


def recall_of_shard(shard: Shard, *, k: int, search_k: int, queries: int, seed: int) -> dict:
    """recall@k of the shard's search (active items, self excluded) against exact answers,
    for a sample of its active items; exact shards are exact by construction (queries 0)."""
    row = {"shard_id": shard.shard_id, "category": shard.category, "kind": shard.kind}
    if shard.kind == EXACT:
        return {**row, "queries": 0, "hits": 0, "wanted": 0}
    sample = sample_items(shard, queries, seed)
    vectors = shard.item_vectors(sample)
    found = shard.search(vectors, k, search_k=search_k, active_only=True, exclude=sample)
    # The exact answers stream the shard's vectors in blocks: memory stays one block.
    exact = _exact_top_streaming(shard, vectors, k, exclude=sample)
    hits = sum(len(np.intersect1d(f, e)) for (f, _), e in zip(found, exact, strict=True))
    wanted = sum(len(e) for e in exact)
    return {**row, "queries": len(sample), "hits": int(hits), "wanted": int(wanted)}


def _exact_top_streaming(
    shard: Shard, queries: np.ndarray, k: int, *, exclude: np.ndarray, block: int = 50_000
) -> list[np.ndarray]:
    best_ids = np.empty((len(queries), 0), np.int64)
    best_scores = np.empty((len(queries), 0), np.float32)
    for start in range(0, len(shard), block):
        ids = np.arange(start, min(len(shard), start + block))
        scores = queries @ shard.item_vectors(ids).T
        scores[:, ~shard.is_active[ids]] = -np.inf
        scores[ids[None, :] == exclude[:, None]] = -np.inf
        best_ids = np.hstack([best_ids, np.broadcast_to(ids, scores.shape)])
        best_scores = np.hstack([best_scores, scores.astype(np.float32)])
        if best_ids.shape[1] > k:
            keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
            best_ids = np.take_along_axis(best_ids, keep, 1)
            best_scores = np.take_along_axis(best_scores, keep, 1)
    return [ids[scores > -np.inf] for ids, scores in zip(best_ids, best_scores, strict=True)]


def measure_recall(
    manifest_df: DataFrame, *, k: int, search_k: int, queries: int, seed: int
) -> DataFrame:
    """One row per shard: sampled queries and their hits among the exact top-k."""
    return map_shards(
        manifest_df,
        lambda shard: pd.DataFrame(
            [recall_of_shard(shard, k=k, search_k=search_k, queries=queries, seed=seed)]
        ),
        RECALL_SCHEMA,
    )
