"""Similar items at scale: the index + neighbors stages on N synthetic SKUs, for each index
kind in the same run, against Spark brute force.

For each --dim (default 1280, the job's MobileNet-V2 vector) and each N: clustered unit vectors
in 20 categories of skewed sizes (one holds 30% of the catalog; products in "styles" of about
50 look-alikes), written as a run's `embeddings` (no duplicate clusters), then the real `index`
and `neighbors` stages on Spark `local[cores]` once per --kinds setting of `index.kind` (the
defaults otherwise: sub-shards above `index.max_shard_size`, exact search up to
`index.exact_max_size`): `auto` (the default: IVF above that size), `annoy` (Annoy above it) and
`exact` (every shard exact). Printed per N and kind: wall time of each stage, the shards by
kind, peak memory of the job's process tree (driver JVM + Python workers + the driver's growth,
RSS sampled every 0.2 s; the benchmark's own copy of the test vectors is not counted), recall@10
of the published answer against exact answers (numpy) for 1,000 sampled SKUs, and the stage's
own recall estimate; each kind's time against the first kind's (a warm-up run of 2,000 SKUs
first starts the Python workers, so no kind pays for that); then how time grows with N
and, with several --dim, how it grows with the dimension (all measured in the same run).

Then the same data through the brute-force exact top-K a Spark user would write (a cross
join within the category, cosine as a dot product of the array columns, a window keeping the
best 10), written to Spark's no-op sink, cancelled after --brute-cap seconds: the speed ratio
where it finishes, "did not finish in X s" where not (larger sizes are then not tried).

Usage:  .venv/bin/python benchmarks/topk_scale.py [--sizes 100000 300000 1000000]
            [--dim 128 1280] [--kinds auto annoy exact] [--baseline-max 300000]
            [--brute-sizes 5000 10000 100000] [--brute-cap 900] [--cores 2]
        .venv/bin/python benchmarks/topk_scale.py --smoke   (3,000 SKUs, seconds: the code runs)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from lookalike.core.storage import Location

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

DIM = 1280  # MobileNet-V2's pooled features, what the embed stage writes
N_CATEGORIES = 20
K = 10
RECALL_SAMPLE = 1000


def synthetic_vectors(
    n: int, dim: int = DIM, seed: int = 0, chunk: int = 100_000
) -> tuple[np.ndarray, np.ndarray]:
    """(category index, unit vectors): 30% in category 0, clustered in styles of ~50.

    Made in float32 blocks of ``chunk`` rows: a million 1280-d vectors are 5.1 GB, and drawing
    them in one float64 call would need twice that again."""
    rng = np.random.default_rng(seed)
    weights = np.array([0.3] + [0.7 / (N_CATEGORIES - 1)] * (N_CATEGORIES - 1))
    category = rng.choice(N_CATEGORIES, size=n, p=weights)
    n_styles = max(1, n // (50 * N_CATEGORIES))
    centres = rng.standard_normal((N_CATEGORIES, n_styles, dim), dtype=np.float32)
    style = rng.integers(0, n_styles, n)
    vectors = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(n, start + chunk) - start, dim), dtype=np.float32)
        block *= 0.6
        block += centres[category[start : start + chunk], style[start : start + chunk]]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        vectors[start : start + len(block)] = block
    return category, vectors


def write_run(folder: Location, category: np.ndarray, vectors: np.ndarray) -> None:
    """A run's ``embeddings`` (and no duplicate clusters) as Parquet, as the stages read them,
    written in row groups of 50,000 so that no second copy of the vectors is ever held."""
    folder = folder.path  # a local run folder (a temporary one): Parquet and _SUCCESS markers
    n, dim = vectors.shape
    names = np.array([f"category-{c:02d}" for c in range(N_CATEGORIES)], dtype=object)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    schema = pa.schema(
        [
            ("sku_id", pa.string()),
            ("category", pa.string()),
            ("is_active", pa.bool_()),
            ("content_hash", pa.string()),
            ("model_id", pa.string()),
            ("embedding", pa.list_(pa.float32())),
            ("embedded_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    for name in ("embeddings", "duplicate_clusters"):
        (folder / name).mkdir(parents=True)
    with pq.ParquetWriter(folder / "embeddings" / "part-0.parquet", schema) as writer:
        for start in range(0, n, 50_000):
            ids = range(start, min(n, start + 50_000))
            block = vectors[start : start + 50_000]
            writer.write_table(
                pa.table(
                    {
                        "sku_id": [f"SKU-{i:08d}" for i in ids],
                        "category": names[category[start : start + 50_000]],
                        "is_active": np.ones(len(block), dtype=bool),
                        "content_hash": [f"{i:064x}" for i in ids],
                        "model_id": [f"synthetic-{dim}d"] * len(block),
                        "embedding": pa.FixedSizeListArray.from_arrays(block.ravel(), dim).cast(
                            pa.list_(pa.float32())
                        ),
                        "embedded_at": pa.array([now] * len(block), pa.timestamp("us", tz="UTC")),
                    },
                    schema=schema,
                )
            )
    clusters = pa.table(
        {"cluster_id": pa.array([], pa.string()), "sku_id": pa.array([], pa.string())}
    )
    pq.write_table(clusters, folder / "duplicate_clusters" / "part-0.parquet")
    for name in ("embeddings", "duplicate_clusters"):
        (folder / name / "_SUCCESS").touch()


class PeakMemory:
    """Peak summed RSS of this process and all its descendants (the JVM, Python workers),
    above this process's own RSS on entering: the benchmark's test data (a million 1280-d
    vectors are 5.1 GB, kept to check the answers) is not the job's memory."""

    def __init__(self, interval: float = 0.2) -> None:
        self.peak = 0
        self._baseline = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def __enter__(self) -> PeakMemory:
        self._baseline = self.own_rss()
        self._thread.start()
        return self

    @staticmethod
    def own_rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def tree_rss() -> int:
        children: dict[int, list[int]] = {}
        rss: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/statm") as f:
                    rss[int(entry)] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
        total, todo = 0, [os.getpid()]
        while todo:
            pid = todo.pop()
            total += rss.get(pid, 0)
            todo.extend(children.get(pid, []))
        return total

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.tree_rss() - self._baseline)
            self._stop.wait(interval)


def exact_recall(category, vectors, similar, rng) -> float:
    """recall@K of the stage's answers against numpy's exact top-K, on sampled SKUs (each
    category's vectors gathered once for all its sampled queries)."""
    sample = rng.choice(len(vectors), size=min(RECALL_SAMPLE, len(vectors)), replace=False)
    got = similar.groupby("sku_id")["similar_sku_id"].apply(set)
    hits = wanted = 0
    for c in np.unique(category[sample]):
        same = np.flatnonzero(category == c)
        queries = sample[category[sample] == c]
        scores = vectors[same] @ vectors[queries].T  # (members, queries)
        scores[np.searchsorted(same, queries), np.arange(len(queries))] = -np.inf  # itself
        best = np.argpartition(-scores, min(K, len(same) - 1), axis=0)[:K]
        for column, i in enumerate(queries):
            want = {f"SKU-{j:08d}" for j in same[best[:, column]] if j != i}
            found = got.get(f"SKU-{i:08d}", set())
            hits += len(want & found)
            wanted += len(want)
    return hits / wanted


def brute_force(spark, embeddings_path: Path, cap: float) -> float | None:
    """Seconds of the Spark cross-join top-K, or None when cancelled at ``cap``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    items = spark.read.parquet(str(embeddings_path)).select("sku_id", "category", "embedding")
    others = items.select(
        F.col("sku_id").alias("similar_sku_id"), "category", F.col("embedding").alias("other")
    )
    dot = F.aggregate(
        F.zip_with("embedding", "other", lambda x, y: x * y), F.lit(0.0), lambda a, b: a + b
    )
    best = Window.partitionBy("sku_id").orderBy(F.col("score").desc(), "similar_sku_id")
    top_df = (
        items.join(others, "category")
        .filter(F.col("sku_id") != F.col("similar_sku_id"))
        .select("sku_id", "similar_sku_id", dot.alias("score"))
        .withColumn("rank", F.row_number().over(best))
        .filter(F.col("rank") <= K)
    )
    group = f"brute-{time.time()}"
    spark.sparkContext.setJobGroup(group, "brute force top-K", interruptOnCancel=True)
    timer = threading.Timer(cap, lambda: spark.sparkContext.cancelJobGroup(group))
    started = time.perf_counter()
    timer.start()
    try:
        top_df.write.format("noop").mode("overwrite").save()
        return time.perf_counter() - started
    except Exception:  # cancelled: a Py4J/Spark error, whichever the version raises
        if time.perf_counter() - started >= cap * 0.99:
            return None
        raise
    finally:
        timer.cancel()
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument(
        "--dim", type=int, nargs="+", default=[DIM], help="vector sizes (each runs every N)"
    )
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=["auto", "annoy", "exact"],
        choices=["auto", "annoy", "ivf", "exact"],
        help="index.kind settings run on the same data (the first is the one timed for growth)",
    )
    parser.add_argument(
        "--baseline-max",
        type=int,
        default=300_000,
        help="kinds other than the first run only up to this N (Annoy and all-exact take hours "
        "at a million 1280-d SKUs on 2 cores)",
    )
    parser.add_argument("--brute-sizes", type=int, nargs="*", default=[5_000, 10_000, 100_000])
    parser.add_argument("--brute-cap", type=float, default=900.0)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="3,000 SKUs at 128-d and 1280-d, small shards (sub-shards, exact and indexed ones), "
        "each kind, brute force on 1,000: seconds, to show the benchmark still runs",
    )
    args = parser.parse_args()
    index_overrides = {}
    if args.smoke:
        args.sizes, args.dim, args.brute_sizes, args.brute_cap = [3_000], [128, 1280], [1_000], 120
        # The largest category (~900 SKUs) splits into sub-shards; an index above 300 members.
        index_overrides = {"max_shard_size": 500, "exact_max_size": 300}
    sys.stdout.reconfigure(line_buffering=True)

    from lookalike.config import Config
    from lookalike.pipeline import RunContext, run_stage
    from lookalike.session import build_session

    work = Path(tempfile.mkdtemp(prefix="lookalike-topk-scale-"))
    config = Config().with_overrides(
        spark={
            "master": f"local[{args.cores}]",
            "conf": {
                "spark.ui.enabled": "false",
                "spark.driver.memory": "4g",
                "spark.sql.shuffle.partitions": str(args.cores * 8),
            },
        },
        output={"root": str(work)},
        **({"index": index_overrides} if index_overrides else {}),
    )
    index_settings = config.index
    print(
        f"{args.cores} cores; k={K}; index: n_trees={index_settings.n_trees}, "
        f"search_k={index_settings.search_k}, IVF target_recall={index_settings.target_recall:g}, "
        f"max_shard_size={index_settings.max_shard_size:,}, "
        f"exact_max_size={index_settings.exact_max_size:,}; kinds {', '.join(args.kinds)}"
    )
    spark = build_session(config)
    runs = iter(range(10_000))  # one run date per run: nothing is reused between them

    def run_ours(kind: str, category, vectors) -> tuple:
        kind_config = config.with_overrides(index={"kind": kind})
        ctx = RunContext(kind_config, dt.date(2026, 1, 1) + dt.timedelta(days=next(runs)))
        write_run(ctx.layout.work, category, vectors)
        with PeakMemory() as memory:
            index = run_stage("index", spark, ctx)
            neighbors = run_stage("neighbors", spark, ctx)
        return ctx, index, neighbors, memory.peak

    first = args.kinds[0]
    seconds_of: dict[tuple[str, int, int], float] = {}
    try:
        # The Python workers' start (imports, faiss, Annoy) is paid here, not by the first kind.
        ctx, *_ = run_ours(first, *synthetic_vectors(2_000, args.dim[0], seed=99))
        ctx.layout.work.rmtree()
        for dim in args.dim:
            for n in args.sizes:
                category, vectors = synthetic_vectors(n, dim)
                for kind in args.kinds:
                    if kind != first and n > args.baseline_max:
                        print(f"dim={dim:>4} N={n:>9,} {kind:>5}: not run (above --baseline-max)")
                        continue
                    ctx, index, neighbors, peak = run_ours(kind, category, vectors)
                    similar = pq.read_table(
                        ctx.layout.similar_items.path, columns=["sku_id", "similar_sku_id"]
                    ).to_pandas()
                    recall = exact_recall(category, vectors, similar, np.random.default_rng(1))
                    seconds = seconds_of[kind, dim, n] = index.seconds + neighbors.seconds
                    counts, built = neighbors.counts, index.counts
                    print(
                        f"dim={dim:>4} N={n:>9,} {kind:>5}: index {index.seconds:6.1f} s "
                        f"({built['shards']} shards: {built['exact_shards']} exact, "
                        f"{built.get('ivf_shards', 0)} IVF, {built.get('annoy_shards', 0)} Annoy) "
                        f"+ neighbors {neighbors.seconds:6.1f} s = {seconds:6.1f} s; "
                        f"peak memory {peak / 2**30:.2f} GiB; recall@{K} {recall:.4f} (exact "
                        f"answers of {min(RECALL_SAMPLE, n)} sampled SKUs); stage's estimate "
                        f"{counts.get('recall_at_k')} (min shard {counts.get('recall_at_k_min')}); "
                        f"{counts['skus_with_full_k']:,} of {counts['skus']:,} SKUs with {K}"
                    )
                    ctx.layout.work.rmtree()
                for kind in args.kinds[1:]:
                    if (kind, dim, n) in seconds_of:
                        ratio = seconds_of[kind, dim, n] / seconds_of[first, dim, n]
                        print(f"  dim={dim} N={n:,}: {kind} took x{ratio:.2f} the time of {first}")
                del vectors
            timed = [(n, seconds_of[first, dim, n]) for n in args.sizes]
            for (n0, s0), (n1, s1) in zip(timed, timed[1:], strict=False):
                exponent = np.log(s1 / s0) / np.log(n1 / n0)
                print(
                    f"  dim={dim} {first}: {n0:,} -> {n1:,}: time x{s1 / s0:.2f} for "
                    f"N x{n1 / n0:.1f} (~N^{exponent:.2f})"
                )
        for n in args.sizes:
            for d0, d1 in zip(args.dim, args.dim[1:], strict=False):
                s0, s1 = seconds_of[first, d0, n], seconds_of[first, d1, n]
                print(
                    f"  N={n:,} {first}: dim {d0} -> {d1}: time x{s1 / s0:.2f} for "
                    f"dim x{d1 / d0:.1f}"
                )

        for dim in args.dim:
            for n in args.brute_sizes:
                category, vectors = synthetic_vectors(n, dim)
                if (first, dim, n) not in seconds_of:
                    ctx, index, neighbors, _ = run_ours(first, category, vectors)
                    seconds_of[first, dim, n] = index.seconds + neighbors.seconds
                else:
                    ctx = RunContext(config, dt.date(2026, 1, 1) + dt.timedelta(days=next(runs)))
                    write_run(ctx.layout.work, category, vectors)
                ours = seconds_of[first, dim, n]
                seconds = brute_force(spark, ctx.layout.embeddings, args.brute_cap)
                ctx.layout.work.rmtree()
                if seconds is None:
                    print(
                        f"brute force dim={dim} N={n:,}: did not finish in {args.brute_cap:.0f} s "
                        f"(ours {ours:.1f} s: more than {args.brute_cap / ours:.0f}x faster); "
                        "larger sizes not tried"
                    )
                    break
                print(
                    f"brute force dim={dim} N={n:,}: {seconds:.1f} s; ours {ours:.1f} s: "
                    f"{seconds / ours:.1f}x faster"
                )
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
