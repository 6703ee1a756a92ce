"""Time of the duplicates stage on N synthetic SKUs (vectors and hashes), on local cores.

Writes a run's `catalog` and `embeddings` as Spark would (clustered unit vectors of --dim
components, default 1280 as MobileNet-V2 writes them, in 20 categories of skewed sizes, one of
them 30% of the catalog; random 64-bit pHashes), with planted duplicates: 1% exact copies (same
content hash, same vector and pHash), 2% near copies (vector plus small noise, pHash with 0-4
bits flipped). Then runs the real `index` stage (not timed as duplicates work, printed apart)
and the real `duplicates` stage, and checks the planted pairs it found.

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

if TYPE_CHECKING:
    from lookalike.core.storage import Location

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

DIM = 1280  # MobileNet-V2's pooled features, what the embed stage writes
N_CATEGORIES = 20


def synthetic_run(folder: Location, n: int, dim: int = DIM, seed: int = 0) -> tuple[set, set]:
    """Write catalog/ and embeddings/ Parquet for n SKUs; return planted (exact, near) pairs."""
    folder = folder.path  # a local run folder (a temporary one): Parquet and _SUCCESS markers
    rng = np.random.default_rng(seed)
    weights = np.array([0.3] + [0.7 / (N_CATEGORIES - 1)] * (N_CATEGORIES - 1))
    category = rng.choice(N_CATEGORIES, size=n, p=weights)
    # Clustered vectors: 2,000 product "styles" per category, each SKU near its style.
    n_styles = 2000
    centres = rng.standard_normal((N_CATEGORIES, n_styles, dim)).astype(np.float32)
    style = rng.integers(0, n_styles, n)
    vectors = centres[category, style] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    phash = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    phash_mirrored = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    content = np.array([f"{i:064x}" for i in range(n)], dtype=object)

    sku = np.array([f"SKU-{i:08d}" for i in range(n)], dtype=object)
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
    vectors[near_dst] = vectors[near_src] + 0.12 * rng.standard_normal((n_near, dim)).astype(
        np.float32
    )
    flips = rng.integers(0, 5, n_near)
    masks = np.array(
        [sum(1 << int(b) for b in rng.choice(64, k, replace=False)) for k in flips], dtype=np.uint64
    )
    phash[near_dst] = (phash[near_src].view(np.uint64) ^ masks).view(np.int64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    names = np.array([f"category-{c:02d}" for c in range(N_CATEGORIES)], dtype=object)[category]
    now = pa.scalar(dt.datetime(2026, 1, 1, tzinfo=dt.UTC), pa.timestamp("us", tz="UTC"))
    catalog = pa.table(
        {
            "sku_id": sku,
            "category": names,
            "image_uri": np.array([f"/img/{s}.jpg" for s in sku], dtype=object),
            "title": sku,
            "is_active": np.ones(n, dtype=bool),
            "updated_at": pa.array([now.as_py()] * n, pa.timestamp("us", tz="UTC")),
        }
    )
    embeddings = pa.table(
        {
            "sku_id": sku,
            "category": names,
            "is_active": np.ones(n, dtype=bool),
            "content_hash": content,
            "model_id": np.full(n, f"synthetic-{dim}d", dtype=object),
            "embedding": pa.FixedSizeListArray.from_arrays(vectors.ravel(), dim).cast(
                pa.list_(pa.float32())
            ),
            "phash": phash,
            "phash_mirrored": phash_mirrored,
            "embedded_at": pa.array([now.as_py()] * n, pa.timestamp("us", tz="UTC")),
        }
    )
    for name, table in (("catalog", catalog), ("embeddings", embeddings)):
        (folder / name).mkdir(parents=True)
        pq.write_table(table, folder / name / "part-0.parquet", row_group_size=100_000)
        (folder / name / "_SUCCESS").touch()

    def pairs(src, dst):
        return {tuple(sorted((sku[a], sku[b]))) for a, b in zip(src, dst, strict=True)}

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
        index = run_stage("index", spark, ctx)
        print(f"index stage (shards per category, not duplicates work): {index.seconds:.0f} s")
        result = run_stage("duplicates", spark, ctx)
        print(f"duplicates stage: {result.seconds:.0f} s on {args.cores} cores  {result.counts}")
        pairs = pq.read_table(ctx.layout.duplicate_pairs.path).to_pandas()
        found = set(zip(pairs["sku_id_a"], pairs["sku_id_b"], strict=True))
        for name, planted in (("exact", exact), ("near", near)):
            print(f"  planted {name} pairs found: {len(planted & found):,} / {len(planted):,}")
        spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
