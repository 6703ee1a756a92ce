"""One published run, in the form the service answers from.

What the service serves is a *run*, never a table: the latest ``published`` record of the
``runs`` table names the version of each table that run wrote (``table_versions``), and a
snapshot reads every table at exactly that version. A publish in progress (tables committed
one after the other, the runs record last) is therefore invisible until it is complete, and a
snapshot never holds one run's similar items beside another run's duplicate clusters.

Similar items are kept as memory-mapped numpy arrays, built once per run into
``<cache>/<snapshot key>/`` (written beside, then renamed into place):

- ``keys.npy``: every SKU the run knows (the catalog's, and every id in similar_items),
  sorted, as fixed-width bytes: ``numpy.searchsorted`` finds a SKU in ~1 µs at 1M SKUs;
- ``starts.npy``: row ranges per key into the row arrays, which are sorted by (SKU, rank);
- ``similar.npy`` (the similar SKU's key number), ``score.npy``, ``rank.npy``,
  ``category.npy`` and ``model.npy`` (codes into the small lists of ``meta.json``).

At a million SKUs with ten similar items each this is about 150 MB of files, shared by every
process that maps them, against ~1.5 GB of Python objects for the same rows; the build takes
seconds (``benchmarks/serve_latency.py`` prints it). Duplicate clusters and category
mismatches are small (a share of the catalog) and kept as plain Python objects.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lookalike import tables
from lookalike.core.storage import Location

log = logging.getLogger(__name__)

# The tables a snapshot reads, at the versions the run's record names.
SERVED_TABLES = ("similar_items", "duplicate_clusters", "category_mismatches", "catalog")
# Served where the run published them (runs from before the styles stage did not).
OPTIONAL_TABLES = ("style_groups",)
_ROW_ARRAYS = ("similar", "score", "rank", "category", "model")


class SnapshotError(RuntimeError):
    """A published run that cannot be served (the message names the table and the problem)."""


@dataclass(frozen=True)
class PublishedRun:
    """A ``runs`` record with status ``published``: which version of each table it wrote."""

    run_id: str
    finished_at: str
    table_versions: dict[str, int]

    @property
    def key(self) -> str:
        """A name for the run's snapshot, unique per (run, versions): a rerun of the same date
        publishes new versions and gets a new key."""
        versions = "-".join(
            f"{self.table_versions.get(name, 'x')}" for name in SERVED_TABLES + OPTIONAL_TABLES
        )
        return f"{_safe_name(self.run_id)}.v{versions}"

    @property
    def etag(self) -> str:
        """What a client's cache compares: the run and the similar_items version."""
        return f'"{_safe_name(self.run_id)}.{self.table_versions["similar_items"]}"'


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:80]


def published_runs(tables_dir: Location) -> list[PublishedRun]:
    """Runs that published every served table, the most recently finished first."""
    runs_path = tables_dir / "runs"
    if not tables.is_table(runs_path):
        return []
    runs = tables.read_table(
        runs_path, columns=["run_id", "status", "finished_at", "table_versions"]
    )
    published = [r for r in runs.to_pylist() if r["status"] == "published" and r["table_versions"]]
    servable = []
    for record in sorted(published, key=lambda r: r["finished_at"], reverse=True):
        versions = json.loads(record["table_versions"])
        missing = [name for name in SERVED_TABLES if name not in versions]
        if missing:
            log.warning("run %s published no %s: not servable", record["run_id"], missing)
            continue
        servable.append(PublishedRun(record["run_id"], str(record["finished_at"]), versions))
    return servable


def latest_published_run(tables_dir: Location) -> PublishedRun | None:
    """The most recently finished run that published every served table; None before any."""
    runs = published_runs(tables_dir)
    return runs[0] if runs else None


# --- similar items: memory-mapped arrays ------------------------------------------------------


@dataclass(frozen=True)
class SimilarItem:
    sku_id: str
    rank: int
    score: float
    category: str
    model_id: str


class SimilarItems:
    """A run's similar items, looked up by SKU in the memory-mapped arrays of ``folder``."""

    def __init__(self, folder: Path) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        self.run_id: str = meta["run_id"]
        self.categories: list[str] = meta["categories"]
        self.models: list[str] = meta["models"]
        self.n_rows: int = meta["n_rows"]
        self.keys = np.load(folder / "keys.npy", mmap_mode="r")
        self.starts = np.load(folder / "starts.npy", mmap_mode="r")
        self._rows = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in _ROW_ARRAYS}
        self.folder = folder

    def __len__(self) -> int:
        return len(self.keys)

    def position(self, sku_id: str) -> int | None:
        """The SKU's key number, or None when the run does not know it."""
        key = sku_id.encode("utf-8")
        if len(key) > self.keys.dtype.itemsize or not key or key.endswith(b"\0"):
            return None
        i = int(np.searchsorted(self.keys, key))
        return i if i < len(self.keys) and self.keys[i] == key else None

    def sku_at(self, position: int) -> str:
        return bytes(self.keys[position]).decode("utf-8")

    def lookup(self, sku_id: str, k: int) -> list[SimilarItem] | None:
        """Up to ``k`` similar items, best first; [] for a known SKU without any (inactive,
        or alone in its category); None for a SKU the run does not know."""
        i = self.position(sku_id)
        if i is None:
            return None
        start, end = int(self.starts[i]), int(self.starts[i + 1])
        end = min(end, start + k)
        rows = self._rows
        # Slices as lists: one conversion per array, not one numpy scalar per value.
        similar = rows["similar"][start:end].tolist()
        ranks = rows["rank"][start:end].tolist()
        scores = rows["score"][start:end].tolist()
        categories = rows["category"][start:end].tolist()
        models = rows["model"][start:end].tolist()
        keys = self.keys
        return [
            SimilarItem(
                sku_id=keys[similar[j]].decode("utf-8"),
                rank=ranks[j],
                score=scores[j],
                category=self.categories[categories[j]],
                model_id=self.models[models[j]],
            )
            for j in range(end - start)
        ]


def build_similar_items(
    similar: pa.Table, catalog_ids: pa.Array, run_id: str, folder: Path
) -> SimilarItems:
    """Write the arrays of ``similar`` (similar_items rows) into ``folder`` and map them.

    ``catalog_ids`` are every SKU of the run's catalog: a SKU of the catalog without similar
    items is known (an empty answer), one outside it is not (404). Raises SnapshotError when
    the rows are not one run's well-formed similar items.
    """
    _check_similar_items(similar, run_id)
    ids = pa.chunked_array(
        [*catalog_ids.chunks, *similar["sku_id"].chunks, *similar["similar_sku_id"].chunks]
        if isinstance(catalog_ids, pa.ChunkedArray)
        else [catalog_ids, *similar["sku_id"].chunks, *similar["similar_sku_id"].chunks]
    )
    unique = pc.unique(ids.cast(pa.binary())).to_numpy(zero_copy_only=False)
    width = max((len(v) for v in unique), default=1)
    keys = np.sort(unique.astype(f"S{width}"))
    value_set = pa.array(keys.tolist(), type=pa.binary())
    sku = pc.index_in(similar["sku_id"].cast(pa.binary()), value_set=value_set).to_numpy()
    other = pc.index_in(similar["similar_sku_id"].cast(pa.binary()), value_set=value_set)
    rank = similar["rank"].to_numpy()
    order = np.lexsort((rank, sku))
    categories = pc.dictionary_encode(similar["category"].combine_chunks())
    models = pc.dictionary_encode(similar["model_id"].combine_chunks())
    arrays = {
        "keys": keys,
        "starts": np.searchsorted(sku[order], np.arange(len(keys) + 1)).astype(np.int64),
        "similar": other.to_numpy()[order].astype(np.int32),
        "score": similar["score"].to_numpy()[order].astype(np.float32),
        "rank": rank[order].astype(np.int32),
        "category": categories.indices.to_numpy()[order].astype(np.int32),
        "model": models.indices.to_numpy()[order].astype(np.int32),
    }
    meta = {
        "run_id": run_id,
        "n_rows": similar.num_rows,
        "categories": categories.dictionary.to_pylist(),
        "models": models.dictionary.to_pylist(),
    }
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    (folder / "meta.json").write_text(json.dumps(meta))
    return SimilarItems(folder)


def _check_similar_items(similar: pa.Table, run_id: str) -> None:
    for column in ("sku_id", "rank", "similar_sku_id", "score", "category", "model_id", "run_id"):
        if column not in similar.column_names:
            raise SnapshotError(f"similar_items has no column {column!r}")
        if similar[column].null_count:
            raise SnapshotError(f"similar_items: {similar[column].null_count} null {column}")
    runs = pc.unique(similar["run_id"]).to_pylist()
    if runs and runs != [run_id]:
        raise SnapshotError(f"similar_items holds rows of runs {runs}, expected only {run_id}")
    if similar.num_rows and pc.min(similar["rank"]).as_py() < 1:
        raise SnapshotError("similar_items: a rank below 1")


# --- duplicate clusters and category mismatches: small, plain objects ----------------------------


@dataclass(frozen=True)
class Listing:
    """What the review app shows of a SKU: the published catalog's row."""

    sku_id: str
    category: str
    title: str | None
    image_uri: str | None
    is_active: bool


@dataclass(frozen=True)
class Cluster:
    cluster_id: str
    canonical_sku_id: str
    evidence: str
    min_score: float
    categories: tuple[str, ...]
    # (sku_id, score to the canonical listing or None), canonical first, then by sku_id.
    members: tuple[tuple[str, float | None], ...]

    @property
    def sku_ids(self) -> tuple[str, ...]:
        return tuple(sku for sku, _ in self.members)

    def evidence_kinds(self) -> tuple[str, ...]:
        return tuple(kind.strip() for kind in self.evidence.split(",") if kind.strip())


@dataclass(frozen=True)
class StyleGroup:
    group_id: str
    category: str
    representative_sku_id: str
    cohesion: float
    # (sku_id, cosine to the group), the representative first, then the closest.
    members: tuple[tuple[str, float], ...]


def style_groups_of(rows: pa.Table) -> list[StyleGroup]:
    """style_groups rows as groups, largest first (then the most cohesive, then id)."""
    by_id = _rows_by(rows, "group_id")
    groups = []
    for group_id, members in by_id.items():
        members.sort(key=lambda r: (not r["is_representative"], -r["similarity"], r["sku_id"]))
        groups.append(
            StyleGroup(
                group_id=group_id,
                category=members[0]["category"],
                representative_sku_id=members[0]["representative_sku_id"],
                cohesion=float(members[0]["cohesion"]),
                members=tuple((r["sku_id"], float(r["similarity"])) for r in members),
            )
        )
    groups.sort(key=lambda g: (-len(g.members), -g.cohesion, g.group_id))
    return groups


@dataclass(frozen=True)
class Mismatch:
    sku_id: str
    category: str
    suggested_category: str
    suggested_share: float
    own_share: float
    suggested_score: float
    neighbors: tuple[tuple[str, str], ...]


def _rows_by(rows: pa.Table, key: str) -> dict[str, list[dict]]:
    """A table's rows as dicts, gathered by one column's value (in the table's order)."""
    by_key: dict[str, list[dict]] = {}
    for row in rows.to_pylist():
        by_key.setdefault(row[key], []).append(row)
    return by_key


def clusters_of(rows: pa.Table) -> list[Cluster]:
    """duplicate_clusters rows as clusters, the most confident first (min_score, then id)."""
    by_id = _rows_by(rows, "cluster_id")
    clusters = []
    for cluster_id, members in by_id.items():
        canonical = members[0]["canonical_sku_id"]
        members.sort(key=lambda r: (r["sku_id"] != canonical, r["sku_id"]))
        clusters.append(
            Cluster(
                cluster_id=cluster_id,
                canonical_sku_id=canonical,
                evidence=members[0].get("evidence") or "",
                min_score=min(float(r["min_score"]) for r in members),
                categories=tuple(dict.fromkeys(str(r.get("category")) for r in members)),
                members=tuple(
                    (r["sku_id"], None if r.get("score") is None else float(r["score"]))
                    for r in members
                ),
            )
        )
    clusters.sort(key=lambda c: (-c.min_score, c.cluster_id))
    return clusters


def mismatches_of(rows: pa.Table) -> list[Mismatch]:
    """category_mismatches rows, the most confident first (as the static report orders them)."""
    found = [
        Mismatch(
            sku_id=r["sku_id"],
            category=r["category"],
            suggested_category=r["suggested_category"],
            suggested_share=float(r["suggested_share"]),
            own_share=float(r["own_share"]),
            suggested_score=float(r["suggested_score"]),
            neighbors=tuple(
                zip(
                    r.get("neighbour_sku_ids") or (),
                    r.get("neighbour_categories") or (),
                    strict=False,
                )
            ),
        )
        for r in rows.to_pylist()
    ]
    found.sort(key=lambda m: (m.own_share, -m.suggested_share, -m.suggested_score, m.sku_id))
    return found


# --- the snapshot -----------------------------------------------------------------------------


@dataclass
class Snapshot:
    """Everything the service answers from, for one published run."""

    run: PublishedRun
    similar: SimilarItems
    clusters: list[Cluster]
    mismatches: list[Mismatch]
    listings: dict[str, Listing]
    load_seconds: float
    # Empty where the run published no style_groups.
    styles: list[StyleGroup] = field(default_factory=list)
    loaded_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.cluster_by_id = {c.cluster_id: c for c in self.clusters}
        self.cluster_of_sku = {sku: c for c in self.clusters for sku in c.sku_ids}
        self.mismatch_of_sku = {m.sku_id: m for m in self.mismatches}
        self.style_of_sku = {sku: g for g in self.styles for sku, _ in g.members}

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def describe(self) -> dict:
        """What /healthz says is served."""
        return {
            "run_id": self.run.run_id,
            "finished_at": self.run.finished_at,
            "table_versions": {
                name: self.run.table_versions[name]
                for name in SERVED_TABLES + OPTIONAL_TABLES
                if name in self.run.table_versions
            },
            "skus": len(self.similar),
            "similar_items_rows": self.similar.n_rows,
            "duplicate_clusters": len(self.clusters),
            "category_mismatches": len(self.mismatches),
            "style_groups": len(self.styles),
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            "load_seconds": round(self.load_seconds, 3),
        }


def load_snapshot(tables_dir: Location, run: PublishedRun, cache_dir: Path) -> Snapshot:
    """Read ``run``'s tables at the versions it published into a Snapshot.

    The similar-items arrays are built into ``cache_dir/<run.key>`` unless a finished build is
    already there (another worker's, or this process's before a restart). Any problem raises
    SnapshotError naming the table; nothing half-built is left under the final name.
    """
    started = time.perf_counter()
    versions = run.table_versions

    def read(name: str, columns: list[str] | None = None, filter=None) -> pa.Table:
        try:
            dataset = tables.delta_dataset(tables_dir / name, versions[name])
            return dataset.to_table(columns=columns, filter=filter)
        except Exception as err:  # a vacuumed version, a missing file, a bad schema
            raise SnapshotError(
                f"{name} version {versions[name]} of run {run.run_id}: {type(err).__name__}: {err}"
            ) from err

    folder = cache_dir / run.key
    cache_dir.mkdir(parents=True, exist_ok=True)
    # One build per run for all the workers sharing cache_dir: the others wait, then map it.
    with open(cache_dir / f".{run.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "meta.json").exists():
            _build_into(folder, read, run.run_id)
    similar = SimilarItems(folder)
    clusters = clusters_of(read("duplicate_clusters"))
    mismatches = mismatches_of(read("category_mismatches"))
    styles = style_groups_of(read("style_groups")) if "style_groups" in versions else []
    reviewed = sorted(
        {sku for c in clusters for sku in c.sku_ids}
        | {m.sku_id for m in mismatches}
        | {sku for m in mismatches for sku, _ in m.neighbors}
    )
    catalog = read(
        "catalog",
        ["sku_id", "category", "title", "image_uri", "is_active"],
        filter=pc.field("sku_id").isin(reviewed) if reviewed else pc.scalar(False),
    )
    listings = {row["sku_id"]: Listing(**row) for row in catalog.to_pylist()}
    return Snapshot(
        run=run,
        similar=similar,
        clusters=clusters,
        mismatches=mismatches,
        listings=listings,
        load_seconds=time.perf_counter() - started,
        styles=styles,
    )


def _build_into(folder: Path, read, run_id: str) -> None:
    """Build the similar-items arrays beside ``folder``, then rename them into place."""
    catalog_ids = read("catalog", ["sku_id"])["sku_id"]
    rows = read(
        "similar_items",
        ["sku_id", "rank", "similar_sku_id", "score", "category", "model_id", "run_id"],
    )
    building = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}")
    building.mkdir()
    try:
        build_similar_items(rows, catalog_ids, run_id, building)
        try:
            os.rename(building, folder)
        except OSError:  # a process not sharing the lock finished the same build first
            if not (folder / "meta.json").exists():
                raise
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
        del rows, catalog_ids
        # Arrow's allocator keeps the build's ~1 GB (at 1M SKUs) for reuse unless told: the
        # service answers from the mapped files and has no use for it.
        pa.default_memory_pool().release_unused()


def prune_cache(cache_dir: Path, keep: set[str]) -> None:
    """Delete snapshot folders other than ``keep`` (mapped files stay readable until unmapped)."""
    if not cache_dir.is_dir():
        return
    for entry in cache_dir.iterdir():
        if entry.is_dir() and entry.name not in keep and not entry.name.startswith("."):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.suffix == ".lock" and entry.name[1:-5] not in keep:
            entry.unlink(missing_ok=True)
