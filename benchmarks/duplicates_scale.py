"""Time of the duplicates stage on N synthetic SKUs (vectors and hashes), on local cores.

Writes a run's `catalog` and `embeddings` as Spark would (topk_scale's clustered unit vectors
of --dim components, default 1280 as MobileNet-V2 writes them, in 20 categories of skewed
sizes, one of them 30% of the catalog, in styles of about 50 look-alikes; random 64-bit
pHashes), with planted duplicates: 1% exact copies (same content hash, same vector and pHash),
2% near copies (vector plus noise of about 1/5 of a style's spread, cosine ~0.995; pHash with
0-4 bits flipped). Then runs the real `index` stage (not timed as duplicates work, printed
apart) and the real `duplicates` stage, and checks the planted pairs it found. Peak memory of
the job's process tree is printed per stage (topk_scale's PeakMemory: above the benchmark's
own copy of the vectors).

The synthetic embeddings carry no `rmac` column, so the stage verifies candidates on the
`embedding` vector (its fallback), of the same size as the real job's descriptor.

Usage:  .venv/bin/python benchmarks/duplicates_scale.py [--skus 1000000] [--dim 1280] [--cores 2]
        .venv/bin/python benchmarks/duplicates_scale.py --smoke   (3,000 SKUs, seconds)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from topk_scale import DIM, N_CATEGORIES, PeakMemory, synthetic_vectors

if TYPE_CHECKING:
    from lookalike.core.storage import Location

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

ROW_GROUP = 50_000


def synthetic_run(folder: Location, n: int, dim: int = DIM, seed: int = 0) -> tuple[set, set]:
    """Write catalog/ and embeddings/ Parquet for n SKUs; return planted (exact, near) pairs.

    The vectors are topk_scale's (float32, made in blocks: a million 1280-d vectors are
    5.1 GB); the tables are written in row groups of 50,000, so no second copy is held."""
    folder = folder.path  # a local run folder (a temporary one): Parquet and _SUCCESS markers
    category, vectors = synthetic_vectors(n, dim, seed)
    rng = np.random.default_rng(seed + 1)
    phash = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    phash_mirrored = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    content = np.arange(n)  # the content hash of SKU i is i, as 64 hex digits

    originals = rng.permutation(n)
    n_exact, n_near = n // 100, n // 50
    exact_src, exact_dst = originals[:n_exact], originals[n_exact : 2 * n_exact]
    near_src = originals[2 * n_exact : 2 * n_exact + n_near]
    near_dst = originals[2 * n_exact + n_near : 2 * n_exact + 2 * n_near]
    for src, dst in ((exact_src, exact_dst), (near_src, near_dst)):
        category[dst] = category[src]
    vectors[exact_dst] = vectors[exact_src]
    phash[exact_dst], phash_mirrored[exact_dst] = phash[exact_src], phash_mirrored[exact_src]
    content[exact_dst] = content[exact_src]
    # A near copy: its original plus noise of ~1/5 of a style's spread (cosine ~0.995).
    noise = rng.standard_normal((n_near, dim), dtype=np.float32) * np.float32(0.1 / np.sqrt(dim))
    near = vectors[near_src] + noise
    vectors[near_dst] = near / np.linalg.norm(near, axis=1, keepdims=True)
    flips = rng.integers(0, 5, n_near)
    masks = np.array(
        [sum(1 << int(b) for b in rng.choice(64, k, replace=False)) for k in flips], dtype=np.uint64
    )
    phash[near_dst] = (phash[near_src].view(np.uint64) ^ masks).view(np.int64)

    names = np.array([f"category-{c:02d}" for c in range(N_CATEGORIES)], dtype=object)
    now = pa.scalar(dt.datetime(2026, 1, 1, tzinfo=dt.UTC), pa.timestamp("us", tz="UTC"))
    for name in ("catalog", "embeddings"):
        (folder / name).mkdir(parents=True)
    writers = {}
    try:
        for start in range(0, n, ROW_GROUP):
            rows = slice(start, min(n, start + ROW_GROUP))
            sku = [f"SKU-{i:08d}" for i in range(rows.start, rows.stop)]
            size = len(sku)
            tables = {
                "catalog": pa.table(
                    {
                        "sku_id": sku,
                        "category": names[category[rows]],
                        "image_uri": [f"/img/{s}.jpg" for s in sku],
                        "title": sku,
                        "is_active": np.ones(size, dtype=bool),
                        "updated_at": pa.array([now.as_py()] * size, now.type),
                    }
                ),
                "embeddings": pa.table(
                    {
                        "sku_id": sku,
                        "category": names[category[rows]],
                        "is_active": np.ones(size, dtype=bool),
                        "content_hash": [f"{c:064x}" for c in content[rows]],
                        "model_id": [f"synthetic-{dim}d"] * size,
                        "embedding": pa.FixedSizeListArray.from_arrays(
                            vectors[rows].ravel(), dim
                        ).cast(pa.list_(pa.float32())),
                        "phash": phash[rows],
                        "phash_mirrored": phash_mirrored[rows],
                        "embedded_at": pa.array([now.as_py()] * size, now.type),
                    }
                ),
            }
            for name, table in tables.items():
                if name not in writers:
                    path = folder / name / "part-0.parquet"
                    writers[name] = pq.ParquetWriter(path, table.schema)
                writers[name].write_table(table)
    finally:
        for writer in writers.values():
            writer.close()
    for name in ("catalog", "embeddings"):
        (folder / name / "_SUCCESS").touch()

    def pairs(src, dst):
        return {
            tuple(sorted((f"SKU-{a:08d}", f"SKU-{b:08d}"))) for a, b in zip(src, dst, strict=True)
        }

    return pairs(exact_src, exact_dst), pairs(near_src, near_dst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skus", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=DIM, help="vector size (MobileNet-V2: 1280)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="3,000 SKUs, Annoy shards: seconds, to show the benchmark still runs",
    )
    args = parser.parse_args()
    index_overrides = {}
    if args.smoke:
        args.skus = 3_000
        # Annoy shards, as at scale, rather than exact ones for these small categories.
        index_overrides = {"exact_max_size": 300}
    sys.stdout.reconfigure(line_buffering=True)

    from lookalike.config import Config
    from lookalike.pipeline import RunContext, run_stage
    from lookalike.session import build_session

    work = Path(tempfile.mkdtemp(prefix="lookalike-dup-scale-"))
    try:
        config = Config().with_overrides(
            spark={
                "master": f"local[{args.cores}]",
                "conf": {
                    "spark.ui.enabled": "false",
                    "spark.driver.memory": "6g",
                    "spark.sql.shuffle.partitions": str(args.cores * 8),
                },
            },
            output={"root": str(work)},
            **({"index": index_overrides} if index_overrides else {}),
        )
        ctx = RunContext(config, dt.date(2026, 1, 1))
        started = time.perf_counter()
        exact, near = synthetic_run(ctx.layout.work, args.skus, args.dim)
        print(
            f"{args.skus:,} synthetic SKUs ({args.dim}-d, {N_CATEGORIES} categories, largest 30%): "
            f"{len(exact):,} exact + {len(near):,} near copies planted, "
            f"written in {time.perf_counter() - started:.0f} s"
        )
        spark = build_session(config)
        with PeakMemory() as memory:
            index = run_stage("index", spark, ctx)
        print(
            f"index stage (shards per category, not duplicates work): {index.seconds:.0f} s "
            f"({index.counts['exact_shards']} exact, {index.counts['ivf_shards']} IVF, "
            f"{index.counts['annoy_shards']} Annoy shards); "
            f"peak memory {memory.peak / 2**30:.2f} GiB"
        )
        with PeakMemory() as memory:
            result = run_stage("duplicates", spark, ctx)
        print(
            f"duplicates stage: {result.seconds:.0f} s on {args.cores} cores; peak memory "
            f"{memory.peak / 2**30:.2f} GiB  {result.counts}"
        )
        pairs = pq.read_table(ctx.layout.duplicate_pairs.path).to_pandas()
        found = set(zip(pairs["sku_id_a"], pairs["sku_id_b"], strict=True))
        for name, planted in (("exact", exact), ("near", near)):
            print(f"  planted {name} pairs found: {len(planted & found):,} / {len(planted):,}")
        spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
