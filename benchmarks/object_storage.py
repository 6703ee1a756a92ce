"""What object storage costs the job: publishing a table and opening index shards, on an S3
store against the same work on local disk, in one run.

- publish: ``tables.publish_files`` of a similar_items-like table (``--rows`` rows in
  ``--files`` Parquet files) as the second version of a table: local disk (hard links into
  the staging folder) vs S3 (run files already on the store, staged by server-side copies,
  one delta-rs commit).
- shards: ``build_shard`` of an Annoy shard (``--items`` x ``--dim``) into a local folder vs
  onto the store (built on local disk, uploaded), then ``Shard.open``: local (checksum read +
  memory-map) vs the first open on a machine (fetch + checksum + map) vs a later open (the
  cached copy).

The store is ``LOOKALIKE_TEST_S3`` (``s3://bucket``) or ``--root``, with the usual ``AWS_*``
variables; ``eval "$(.ci/ceph-s3.sh)"`` starts Ceph's radosgw on loopback. Loopback has no
network latency and radosgw keeps objects in memory here: the figures are the client-side
cost (copies, checksums, requests), a lower bound for a real bucket.

Usage:  eval "$(.ci/ceph-s3.sh)"
        LOOKALIKE_TEST_S3=s3://lookalike-bench .venv/bin/python benchmarks/object_storage.py
            [--rows 1000000] [--files 8] [--items 100000] [--dim 128]
        ... benchmarks/object_storage.py --smoke   (20,000 rows, 2,000 items: seconds; the
            store is still needed)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from lookalike import tables
from lookalike.config import IndexSettings
from lookalike.core.ann import METRIC, Shard, build_shard
from lookalike.core.storage import Location


def similar_items_files(folder: Path, rows: int, files: int, run: int) -> Path:
    rng = np.random.default_rng(run)
    folder.mkdir(parents=True)
    per_file = rows // files
    for part in range(files):
        ids = np.arange(part * per_file, (part + 1) * per_file)
        table = pa.table(
            {
                "run_id": pa.array([f"2026-12-0{run}"] * len(ids)),
                "sku_id": pa.array([f"SKU-{i // 10:08d}" for i in ids]),
                "rank": pa.array(ids % 10 + 1, pa.int32()),
                "similar_sku_id": pa.array([f"SKU-{i:08d}" for i in rng.permutation(ids)]),
                "score": pa.array(rng.random(len(ids)).astype(np.float32)),
            }
        )
        pq.write_table(table, folder / f"part-{part:05d}.parquet")
    return folder


def timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def bench_publish(root: Location, scratch: Path, rows: int, files: int) -> None:
    day1 = similar_items_files(scratch / "day1", rows, files, 1)
    day2 = similar_items_files(scratch / "day2", rows, files, 2)
    size_mb = sum(f.stat().st_size for f in day2.iterdir()) / 2**20
    local_table = Location.of(scratch / "tables" / "similar_items")
    tables.publish_files(local_table, [day1])
    local_s, _ = timed(lambda: tables.publish_files(local_table, [day2]))

    remote_run = root / "runs" / "day2" / "similar_items"
    upload_s, _ = timed(lambda: [(remote_run / f.name).upload(f) for f in sorted(day2.iterdir())])
    remote_table = root / "tables" / "similar_items"
    tables.publish_files(remote_table, [day1])
    remote_s, version = timed(lambda: tables.publish_files(remote_table, [remote_run]))
    assert version == 1 and tables.count_rows(remote_table) == rows
    print(f"publish {rows:,} rows in {files} files ({size_mb:.1f} MB), second version:")
    print(f"  local disk (hard links + commit)        {local_s:7.2f} s")
    print(
        f"  S3 (server-side copies + commit)         {remote_s:7.2f} s   x{remote_s / local_s:.1f}"
    )
    print(f"  (uploading the run's files to S3 first: {upload_s:.2f} s, Spark's work on a cluster)")


def bench_shards(root: Location, scratch: Path, items: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((items, dim)).astype(np.float32)
    members = pd.DataFrame(
        {
            "sku_id": [f"SKU-{i:08d}" for i in range(items)],
            "is_active": np.ones(items, bool),
            "embedding": list(vectors),
        }
    )
    settings = IndexSettings()

    def build(folder):
        return build_shard(members, shard_id="bench", index_dir=folder, settings=settings)

    local_build_s, local = timed(lambda: build(scratch / "index"))
    remote_build_s, remote = timed(lambda: build(root / "index"))
    size_mb = Location.of(local["path"]).size() / 2**20

    def open_shard(built):
        row = {"shard_id": "bench", "category": "bench", "metric": METRIC, "model_id": "m"}
        shard = Shard.open(row | built)
        shard.close()

    os.environ["LOOKALIKE_CACHE_DIR"] = str(scratch / "cache")
    local_open_s, _ = timed(lambda: open_shard(local))
    first_open_s, _ = timed(lambda: open_shard(remote))
    cached_open_s, _ = timed(lambda: open_shard(remote))
    print(f"Annoy shard of {items:,} x {dim} ({size_mb:.1f} MB, {settings.n_trees} trees):")
    print(f"  build into a local folder                {local_build_s:7.2f} s")
    print(
        f"  build + upload to S3                     {remote_build_s:7.2f} s"
        f"   x{remote_build_s / local_build_s:.2f}"
    )
    print(f"  open, local (checksum + map)             {local_open_s:7.3f} s")
    print(
        f"  open from S3, first on this machine      {first_open_s:7.3f} s"
        f"   x{first_open_s / local_open_s:.1f} (fetch + checksum + map)"
    )
    print(
        f"  open from S3, cached                     {cached_open_s:7.3f} s"
        f"   x{cached_open_s / local_open_s:.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("LOOKALIKE_TEST_S3"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--smoke", action="store_true", help="small table and shard: seconds")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.files, args.items = 20_000, 2, 2_000
    if not args.root:
        print("no store: set LOOKALIKE_TEST_S3=s3://bucket or --root (see the docstring)")
        return 2
    bucket = str(args.root).split("://", 1)[1].split("/")[0]
    creator, _ = pafs.FileSystem.from_uri(f"s3://{bucket}?allow_bucket_creation=true")
    creator.create_dir(bucket)
    root = Location.of(args.root) / f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        bench_publish(root, Path(tmp) / "publish", args.rows, args.files)
        bench_shards(root, Path(tmp) / "shards", args.items, args.dim)
    root.rmtree()
    return 0


if __name__ == "__main__":
    sys.exit(main())
