"""Nearest neighbors of unit vectors: the one exact top-k, the Annoy and IVF builders, shards.

Everything that ranks vectors by cosine goes through here: the index stage's exact shards
and its recall sample, evaluation's leave-one-out search and the mismatch stage's reference
vote. ``best_of`` chooses the best columns of a score matrix (ties by column); ``top_k``
multiplies blocks of queries by the items, chooses with ``best_of`` in float32 and scores the
chosen in float64, so identical vectors get identical scores wherever they sit.

A shard is two files on local disk or object storage, named in a manifest row with their
checksum: ``<shard_id>.npy`` (float32 unit vectors, ``kind = exact``), ``<shard_id>.ann``
(an Annoy forest, ``kind = annoy``) or ``<shard_id>.faiss`` (a faiss IndexIVFFlat on inner
products, ``kind = ivf``), and ``<shard_id>.ids.parquet`` (dense item id -> sku_id,
is_active). ``Shard`` opens both memory-mapped and answers ``search`` whatever the kind.

``choose_kind`` decides a shard's kind from ``index.kind`` and its size: at most
``index.exact_max_size`` vectors are exact, except that ``auto`` builds a shard of at least
``index.auto_ivf_min_size`` as IVF and keeps it where its tuned scan is cheap enough to beat
exact search (``ivf_pays``: its queries compare at most a tenth of the vectors; clustered
vectors do, real photos not); above, ``auto`` takes
``ivf``, measured faster
than Annoy at equal or higher recall on 1280-d vectors (benchmarks/exact_vs_annoy.py, one
thread, 20,000 clustered vectors, build + every item's top-10, on a loaded machine: IVF
nprobe 8 36 s at
recall@10 1.000, Annoy 20 trees / search_k 5000 244 s at 1.000, exact 48 s; the shared
notes' 50,000: IVF nprobe 4 35 s at 0.9998, Annoy search_k 20,000 370 s at 0.974, exact
154 s). An IVF shard's
inverted lists are its vectors: ``nlist`` about 4 sqrt(n) centroids (at least 39 vectors a
list) trained by a seeded k-means on a seeded sample of the shard, ``nprobe`` lists scanned
per query (stored in the file, so the manifest keeps its columns). Its candidates are
rescored in float64 like the exact kind's, so scores and ties follow the same rules.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from annoy import AnnoyIndex

from lookalike import faults
from lookalike.core.storage import ChecksumMismatch, Location

if TYPE_CHECKING:
    from lookalike.config import IndexSettings
    from lookalike.core.projection import Projection

METRIC = "angular"  # on L2-normalised vectors: cosine = 1 - distance**2 / 2
ANNOY, EXACT, IVF = "annoy", "exact", "ivf"
AUTO = "auto"  # index.kind: exact or IVF, whichever is measured cheaper for the shard
KINDS = (AUTO, EXACT, ANNOY, IVF)
SHARD_KINDS = (EXACT, ANNOY, IVF)  # what a shard is (auto chooses one of them)
NO_PROJECTION = "none"  # the manifest's projection without PCA

# Query vectors per block of exact search: 512 x 100k float32 scores = 200 MB at most.
EXACT_BLOCK = 512
# float32 products are within about 1e-6 of the float64 ones for unit vectors: candidates this
# close to the cut are rescored too, so a near-tie is decided in float64.
TIE_MARGIN = 1e-5


# IVF: about IVF_LISTS_PER_ROOT * sqrt(n) lists, but at least IVF_MIN_TRAIN training vectors
# per list (faiss warns below 39) and at most IVF_MAX_TRAIN per list in the training sample.
IVF_LISTS_PER_ROOT = 4
IVF_MIN_TRAIN = 39
IVF_MAX_TRAIN = 64
# Queries per faiss search call (the float64 rescoring holds their candidates' vectors).
IVF_BLOCK = 256
# IVF shards tune their lists scanned on this many sampled members' top-10 (tune_nprobe).
TUNE_QUERIES, TUNE_K = 200, 10
# An IVF shard whose queries compare at most this share of its vectors (at its tuned nprobe,
# counted by faiss) beats exact search of the same vectors. Measured one core, 1280-d, tuning
# + build + every item's top-10 (the shared notes' crossover run): a distance in an IVF scan
# costs about 5.6x one in exact search's matrix products (a scan of 1/8 took 0.70x the exact
# time at 20,000 and 37,000 vectors beside a trial of 0.16x and 0.09x), so IVF wins below a
# share of about 0.15; clustered vectors tuned to about 1/300 took 0.20x and 0.11x in all.
# Lists share is not the measure: real photos fill their lists unevenly, and a scan of 1/8 of
# the lists took 1.5x the exact time at 20,000 (benchmarks/exact_vs_annoy.py --real).
IVF_MAX_SCAN = 0.10


class ShardError(RuntimeError):
    """A shard's files are missing or do not match the manifest."""


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be (n, dim), got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def cosine_from_angular(distance: np.ndarray | float) -> np.ndarray | float:
    return 1.0 - np.square(distance) / 2.0


def shard_id_for(category: str, part: int = 0, n_parts: int = 1) -> str:
    """A file-name-safe, collision-free id: categories come from sellers (``../x`` too)."""
    slug = re.sub(r"[^a-z0-9]+", "-", category.lower()).strip("-")[:40] or "category"
    base = f"{slug}-{hashlib.sha1(category.encode()).hexdigest()[:8]}"
    return base if n_parts == 1 else f"{base}-p{part:03d}of{n_parts:03d}"


# --- exact search ----------------------------------------------------------------------------


def best_of(scores: np.ndarray, k: int, tie_keys: np.ndarray | None = None) -> np.ndarray:
    """Column ids of each row's k highest scores, best first; equal scores in column order
    (or in ``tie_keys`` order, one key per column). ``-inf`` marks a column a row must not
    get; it is returned only when fewer than k columns remain."""
    n_rows, n_columns = scores.shape
    m = min(k, n_columns)
    if m == 0:
        return np.empty((n_rows, 0), np.int64)
    if m < n_columns:
        chosen = np.argpartition(-scores, m - 1, axis=1)[:, :m]
        # Equal scores at the cut: argpartition took any of them; take the first by key.
        cut = np.take_along_axis(scores, chosen, 1).min(axis=1)
        for row in np.flatnonzero(np.count_nonzero(scores >= cut[:, None], axis=1) > m):
            tied = np.flatnonzero(scores[row] >= cut[row])
            keys = tied if tie_keys is None else tie_keys[tied]
            chosen[row] = tied[np.lexsort((keys, -scores[row, tied]))][:m]
    else:
        chosen = np.broadcast_to(np.arange(n_columns), scores.shape)
    ties = chosen if tie_keys is None else tie_keys[chosen]
    order = np.lexsort((ties, -np.take_along_axis(scores, chosen, 1)), axis=1)
    return np.take_along_axis(chosen, order, 1).astype(np.int64)


def top_k(
    items: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    allowed: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    block: int = EXACT_BLOCK,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact top-k by cosine of unit vectors: for each query up to k (item ids, scores), best
    first, ties in item id order. ``allowed`` (a mask of items) leaves the others out;
    ``exclude[i]`` is an item query i must not get (itself), -1 for none."""
    items = np.ascontiguousarray(items, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
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
        top = best_of(scores, k)
        m = top.shape[1]
        if m == 0:
            out.extend((np.empty(0, np.int64), np.empty(0, np.float32)) for _ in rows)
            continue
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


def merge_answers(
    parts: list[list[tuple[np.ndarray, np.ndarray]]], k: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each query's best k over the answers of several item blocks (item ids already global):
    every block's answer is exact, so the best of their union is the exact answer."""
    merged = []
    for answers in zip(*parts, strict=True):
        ids = np.concatenate([a[0] for a in answers])
        scores = np.concatenate([a[1] for a in answers])
        order = np.lexsort((ids, -scores))[:k]
        merged.append((ids[order], scores[order]))
    return merged


def padded(answers: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Answers as (queries, k) arrays of ids and scores, short rows padded with -1 / -inf."""
    ids = np.full((len(answers), k), -1, dtype=np.int64)
    scores = np.full((len(answers), k), -np.inf, dtype=np.float32)
    for row, (found, found_scores) in enumerate(answers):
        ids[row, : len(found)] = found
        scores[row, : len(found)] = found_scores
    return ids, scores


# --- Annoy -----------------------------------------------------------------------------------


def build_annoy(vectors: np.ndarray, *, n_trees: int, seed: int) -> AnnoyIndex:
    """An angular Annoy forest of the vectors (item id = row), reproducible for a seed."""
    index = AnnoyIndex(vectors.shape[1], METRIC)
    index.set_seed(seed)
    for item_id, vector in enumerate(vectors):
        index.add_item(item_id, vector)
    # One build thread: Annoy's seeded builds are reproducible only for a fixed n_jobs.
    index.build(n_trees, n_jobs=1)
    return index


# --- faiss IVF ---------------------------------------------------------------------------------


def task_threads() -> int:
    """Threads for faiss: the cores of the Spark task running this (spark.task.cpus), else
    OMP_NUM_THREADS where set (the benchmarks' one core), else the machine's cores."""
    try:
        from pyspark import TaskContext

        task = TaskContext.get()
    except ImportError:  # pragma: no cover - pyspark is a dependency
        task = None
    if task is not None:
        return max(1, task.cpus())
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else os.cpu_count() or 1


def ivf_lists(n: int) -> int:
    """Inverted lists for n vectors: about 4 sqrt(n), with at least 39 vectors per list."""
    return int(max(1, min(round(IVF_LISTS_PER_ROOT * np.sqrt(n)), n // IVF_MIN_TRAIN)))


def tuning_sample(n: int, seed: int) -> np.ndarray:
    """The members an IVF shard is tuned and judged on: TUNE_QUERIES of n, sorted, seeded."""
    return np.sort(np.random.default_rng(seed + 1).choice(n, min(n, TUNE_QUERIES), False))


def tune_nprobe(index: faiss.IndexIVFFlat, vectors: np.ndarray, *, target: float, seed: int) -> int:
    """The fewest lists an IVF query must scan for ``target`` recall@10 on this shard: the
    top-10 of TUNE_QUERIES sampled members through the index against their exact top-10
    (one matrix product), lists doubled from 1 until the target is met, then the smallest
    count between the last two found by bisection. A count measured per shard, because the
    one that suffices depends on the vectors: 2 lists gave recall 0.99 on clustered synthetic
    vectors, while real photos need about 1/8 of a shard's lists for 0.97
    (``benchmarks/exact_vs_annoy.py --real``)."""
    n = len(vectors)
    sample = tuning_sample(n, seed)
    queries = vectors[sample]
    k = min(n, TUNE_K + 1)  # each query finds itself in both answers
    exact = [ids for ids, _ in top_k(vectors, queries, k)]
    wanted = sum(len(ids) for ids in exact)

    def recall(nprobe: int) -> float:
        _, found = index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
        return sum(len(np.intersect1d(f, e)) for f, e in zip(found, exact, strict=True)) / wanted

    low, high = 0, 1  # recall(low) below the target (0 lists: nothing), recall(high) unknown
    while high < index.nlist and recall(high) < target:
        low, high = high, min(index.nlist, 2 * high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if recall(middle) >= target else (middle, high)
    return high


def build_ivf(
    vectors: np.ndarray, *, nprobe: int, target_recall: float, seed: int
) -> faiss.IndexIVFFlat:
    """An inner-product IVF-Flat index of unit vectors (item id = row): k-means (seeded) on a
    seeded sample of at most 64 vectors per list, then every vector added in row order, so
    the same vectors and seed give the same file. It scans ``nprobe`` lists per query, or
    when that is 0 the fewest that reach ``target_recall`` on this shard (``tune_nprobe``)."""
    n, dim = vectors.shape
    nlist = ivf_lists(n)
    faiss.omp_set_num_threads(task_threads())
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, IVF_MAX_TRAIN * nlist), replace=False))
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index.train(vectors[sample])
    index.add(vectors)
    index.nprobe = (
        min(nlist, nprobe)
        if nprobe
        else tune_nprobe(index, vectors, target=target_recall, seed=seed)
    )
    index.make_direct_map()  # stored vectors by item id (item_vectors, float64 rescoring)
    return index


def choose_kind(n_items: int, settings: IndexSettings) -> str:
    """The kind of a shard of n_items vectors: exact up to ``index.exact_max_size`` (always,
    with ``index.kind: exact``), else the configured kind, ``auto`` meaning IVF. Under
    ``auto`` a shard from ``index.auto_ivf_min_size`` up to ``exact_max_size`` vectors is
    ``AUTO``: ``save_shard`` builds it as IVF and keeps that only if it is cheap enough."""
    if settings.kind == AUTO and settings.auto_ivf_min_size <= n_items <= settings.exact_max_size:
        return AUTO
    if settings.kind == EXACT or n_items <= settings.exact_max_size:
        return EXACT
    return IVF if settings.kind == AUTO else settings.kind


def ivf_pays(index: faiss.IndexIVFFlat, vectors: np.ndarray, *, seed: int) -> bool:
    """Whether a tuned IVF index of these vectors beats exact search of them: its queries (the
    tuning sample of members, at the index's nprobe) compare at most IVF_MAX_SCAN of them."""
    return scanned_share(index, vectors, seed=seed) <= IVF_MAX_SCAN


def scanned_share(index: faiss.IndexIVFFlat, vectors: np.ndarray, *, seed: int) -> float:
    """The share of the shard's vectors an IVF query compares at the index's nprobe, as faiss
    counts them for tune_nprobe's sampled members (lists are as uneven as the data)."""
    n = len(vectors)
    sample = tuning_sample(n, seed)
    stats = faiss.cvar.indexIVF_stats  # process-wide; a Spark task is alone in its worker
    stats.reset()
    index.search(np.ascontiguousarray(vectors[sample]), 1)
    return stats.ndis / (len(sample) * n)


# --- shard files -----------------------------------------------------------------------------


def save_shard(
    members: pd.DataFrame,
    vectors: np.ndarray,
    folder: Path,
    shard_id: str,
    *,
    kind: str,
    n_trees: int,
    seed: int,
    nprobe: int = 0,
    target_recall: float = 0.97,
) -> dict:
    """Write a shard's two files into a local folder; each is written beside and renamed, so
    a reader never maps a half-written file. ``members`` holds sku_id and is_active in item
    order; returns the manifest fields the files decide."""
    folder.mkdir(parents=True, exist_ok=True)
    dim = vectors.shape[1]
    index = None
    if kind in (AUTO, IVF):
        index = build_ivf(vectors, nprobe=nprobe, target_recall=target_recall, seed=seed)
        if kind == AUTO:  # a trial: kept only where it beats exact search
            kind = IVF if ivf_pays(index, vectors, seed=seed) else EXACT
    if kind == EXACT:
        path = folder / f"{shard_id}.npy"
        with open(str(path) + ".partial", "wb") as out:
            np.save(out, np.ascontiguousarray(vectors))
        faults.point("index.shard_saved")
    elif kind == ANNOY:
        index = build_annoy(vectors, n_trees=n_trees, seed=seed)
        path = folder / f"{shard_id}.ann"
        index.save(str(path) + ".partial")
        faults.point("index.shard_saved")
        index.unload()
    elif kind == IVF:
        path = folder / f"{shard_id}.faiss"
        faiss.write_index(index, str(path) + ".partial")
        faults.point("index.shard_saved")
    else:
        raise ValueError(f"unknown shard kind {kind!r}")
    del index
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
        "n_trees": n_trees if kind == ANNOY else 0,
        "file": path.name,
        "ids_file": ids_path.name,
        "checksum": Location.of(path).sha256(),
    }


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

    The files are built on local disk (Annoy and faiss write and map only local files): in
    ``index_dir`` itself when it is a local folder, else in a scratch folder and then
    uploaded to object storage.
    """
    members = members.sort_values("sku_id", kind="stable").reset_index(drop=True)
    vectors = np.stack(members["embedding"].to_numpy()).astype(np.float32)
    vectors = projection.apply(vectors) if projection is not None else unit_rows(vectors)
    index_dir = Location.of(index_dir)
    scratch = None if index_dir.is_local else Path(tempfile.mkdtemp(prefix="lookalike-shard-"))
    try:
        built = save_shard(
            members,
            vectors,
            scratch or index_dir.path,
            shard_id,
            kind=kind,
            n_trees=settings.n_trees,
            seed=settings.seed,
            nprobe=settings.nprobe,
            target_recall=settings.target_recall,
        )
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


@dataclass
class Shard:
    """A shard opened for queries: the memory-mapped index (or vectors) and its id map."""

    shard_id: str
    category: str
    model_id: str
    kind: str
    index: AnnoyIndex | faiss.IndexIVFFlat | None
    vectors: np.ndarray | None  # exact shards: (n, dim) float32, memory-mapped
    sku_ids: np.ndarray
    is_active: np.ndarray

    @classmethod
    def open(cls, row: pd.Series | dict) -> Shard:
        """Open the shard a manifest row names, checking its files against the row."""

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
        elif kind == IVF:
            try:
                # Inverted lists memory-mapped (faiss maps IVF indexes only), shared likewise.
                index = faiss.read_index(str(local), faiss.IO_FLAG_MMAP)
            except RuntimeError as err:
                raise fail(f"{path} is not a faiss index: {err}") from None
            if not isinstance(index, faiss.IndexIVFFlat) or index.d != int(row["dim"]):
                raise fail(f"{path} is not an IVF-Flat index of dim {row['dim']}")
            n_items = index.ntotal
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
        if isinstance(self.index, AnnoyIndex):
            self.index.unload()
        self.index = None if self.kind == IVF else self.index  # unmapped when collected

    def __len__(self) -> int:
        return len(self.sku_ids)

    def item_vectors(self, item_ids: np.ndarray | None = None) -> np.ndarray:
        """Stored (unit) vectors of some items, or of all, as a float32 array."""
        if self.vectors is not None:
            chosen = self.vectors if item_ids is None else self.vectors[item_ids]
            return np.asarray(chosen, dtype=np.float32)
        if self.kind == IVF:
            ids = np.arange(len(self)) if item_ids is None else np.asarray(item_ids)
            if len(ids) == 0:
                return np.empty((0, self.index.d), np.float32)
            return self.index.reconstruct_batch(ids.astype(np.int64))
        ids = range(len(self)) if item_ids is None else item_ids
        return np.array([self.index.get_item_vector(int(i)) for i in ids], dtype=np.float32)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        search_k: int,
        active_only: bool = False,
        exclude: np.ndarray | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each query vector, up to k (item ids, cosines) best first, ties by item id
        (= sku_id order); ``exclude[i]`` is an item id query i must not get (itself), -1 none;
        ``active_only`` leaves out inactive items and still returns k when there are k."""
        exclude = np.full(len(queries), -1) if exclude is None else exclude
        if self.kind == EXACT:
            return top_k(
                self.item_vectors(), queries, k,
                allowed=self.is_active if active_only else None, exclude=exclude,
            )  # fmt: skip
        if self.kind == IVF:
            return self._ivf_search(queries, k, active_only, np.asarray(exclude))
        return [
            self._annoy_search(vector, k, search_k, active_only, int(excluded))
            for vector, excluded in zip(queries, exclude, strict=True)
        ]

    def exact_search(
        self, queries: np.ndarray, k: int, *, exclude: np.ndarray, block: int = 50_000
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The exact answer of ``search(..., active_only=True)`` whatever the kind, reading the
        stored vectors ``block`` items at a time (memory stays one block, not the shard)."""
        if len(self) == 0:
            return [(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in queries]
        parts = []
        for start in range(0, len(self), block):
            ids = np.arange(start, min(len(self), start + block))
            inside = (exclude >= start) & (exclude < start + len(ids))
            answers = top_k(
                self.item_vectors(ids), queries, k,
                allowed=self.is_active[ids], exclude=np.where(inside, exclude - start, -1),
            )  # fmt: skip
            parts.append([(found + start, scores) for found, scores in answers])
        return merge_answers(parts, k)

    def _search_k(self, search_k: int, k: int) -> int:
        """The configured nodes per query, but never fewer than Annoy's own default for k
        (n_trees * k): asking for more neighbors (own duplicates, inactive SKUs) must not
        lower the recall."""
        return search_k if search_k < 0 else max(search_k, self.index.get_n_trees() * k)

    def _annoy_search(
        self, vector: np.ndarray, k: int, search_k: int, active_only: bool, excluded: int
    ) -> tuple[np.ndarray, np.ndarray]:
        n_items = len(self)
        asked = min(n_items, 2 * (k + 1))
        while True:
            ids, distances = self.index.get_nns_by_vector(
                vector, asked, search_k=self._search_k(search_k, asked), include_distances=True
            )
            ids = np.asarray(ids, dtype=np.int64)
            keep = ids != excluded
            if active_only:
                keep &= self.is_active[ids]
            # Items filtered after the search: ask for more until k remain.
            if keep.sum() >= k or asked >= n_items:
                break
            asked = min(n_items, 2 * asked)
        scores = np.clip(cosine_from_angular(np.asarray(distances)), -1.0, 1.0)
        ids, scores = ids[keep], scores[keep].astype(np.float32)
        # Ties broken on the published (float32) score, so equal scores read in sku_id order.
        order = np.lexsort((ids, -scores))[:k]
        return ids[order], scores[order]

    def _ivf_search(
        self, queries: np.ndarray, k: int, active_only: bool, exclude: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """IVF answers: faiss chooses candidates among the allowed items of ``nprobe`` lists
        in float32, they are rescored in float64 (as ``top_k`` does) and ordered by score,
        then item id. A query asks for more candidates (and more lists) until k remain after
        leaving itself out and no float32 near-tie sits at the edge of what was asked."""
        index, n_items = self.index, len(self)
        faiss.omp_set_num_threads(task_threads())
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n_allowed = int(self.is_active.sum()) if active_only else n_items
        selector = None
        if active_only and n_allowed < n_items:
            bitmap = np.packbits(self.is_active.astype(bool), bitorder="little")
            selector = faiss.IDSelectorBitmap(n_items, faiss.swig_ptr(bitmap))
        out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(queries)
        empty = (np.empty(0, np.int64), np.empty(0, np.float32))
        if n_allowed == 0 or k == 0:
            return [empty for _ in queries]
        for start in range(0, len(queries), IVF_BLOCK):
            pending = np.arange(start, min(len(queries), start + IVF_BLOCK))
            asked, nprobe = min(n_allowed, 2 * (k + 1)), min(index.nprobe, index.nlist)
            while len(pending):
                params = faiss.SearchParametersIVF(nprobe=nprobe)
                if selector is not None:
                    params.sel = selector
                scores32, found = index.search(queries[pending], asked, params=params)
                retry = []
                for row, query in enumerate(pending):
                    valid = found[row] >= 0
                    ids, near = found[row][valid], scores32[row][valid]
                    keep = ids != exclude[query]
                    ids, near = ids[keep], near[keep]
                    # Every list scanned and every allowed item it could give: all there is.
                    scanned = nprobe >= index.nlist
                    everything = scanned and (valid.sum() < asked or asked >= n_allowed)
                    if not everything and len(ids) < k:
                        retry.append(query)  # too few: more lists (and candidates)
                        continue
                    tied = valid.all() and len(ids) >= k and near[-1] >= near[k - 1] - TIE_MARGIN
                    if tied and asked < n_allowed:
                        retry.append(query)  # a tie may continue past what was asked
                        continue
                    exact = self.item_vectors(ids).astype(np.float64) @ queries[query].astype(
                        np.float64
                    )
                    exact = np.clip(exact, -1.0, 1.0).astype(np.float32)
                    order = np.lexsort((ids, -exact))[:k]
                    out[query] = (ids[order].astype(np.int64), exact[order])
                pending = np.asarray(retry, dtype=np.int64)
                asked, nprobe = min(n_allowed, 2 * asked), min(index.nlist, 2 * nprobe)
        return out


# --- measured recall -------------------------------------------------------------------------


def sample_items(shard: Shard, n: int, seed: int) -> np.ndarray:
    """A deterministic sample of n active item ids of a shard (by its id and the seed)."""
    active = np.flatnonzero(shard.is_active)
    digest = hashlib.sha256(f"{shard.shard_id}:{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return np.sort(rng.choice(active, size=min(n, len(active)), replace=False))


def recall_of_shard(shard: Shard, *, k: int, search_k: int, queries: int, seed: int) -> dict:
    """recall@k of the shard's search (active items, self excluded) against exact answers,
    for a sample of its active items (Annoy and IVF shards alike; ``search_k`` is Annoy's
    effort, an IVF shard scans the ``nprobe`` stored in its file); exact shards are exact by
    construction (queries 0)."""
    row = {"shard_id": shard.shard_id, "category": shard.category, "kind": shard.kind}
    if shard.kind == EXACT:
        return {**row, "queries": 0, "hits": 0, "wanted": 0}
    sample = sample_items(shard, queries, seed)
    vectors = shard.item_vectors(sample)
    found = shard.search(vectors, k, search_k=search_k, active_only=True, exclude=sample)
    exact = shard.exact_search(vectors, k, exclude=sample)
    hits = sum(len(np.intersect1d(f, e)) for (f, _), (e, _) in zip(found, exact, strict=True))
    wanted = sum(len(e) for e, _ in exact)
    return {**row, "queries": len(sample), "hits": int(hits), "wanted": int(wanted)}
