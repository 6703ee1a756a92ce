"""Where exact search beats Annoy: time of one shard's top-K, both ways, by shard size.

For each shard size n, clustered unit vectors (the same generator as topk_scale.py) go through
the index stage's ``build_shard`` as an exact shard (.npy) and as an Annoy shard, and every
item asks its shard for its top-K through the neighbors stage's ``top_k_for_shard``: build +
all n queries, one core (one BLAS thread, as one Spark task per core). Exact work grows with
n^2, Annoy's with about n log n: the crossover is the default of ``index.exact_max_size``.
Annoy's recall@K against the exact answer is printed beside.

Usage:  .venv/bin/python benchmarks/exact_vs_annoy.py [--dims 128 1280]
            [--sizes 1000 2000 5000 10000 20000 40000] [--k 10]
        .venv/bin/python benchmarks/exact_vs_annoy.py --smoke   (300 and 600 items: seconds)
"""

from __future__ import annotations

import os

# One core per Spark task: BLAS must not use the other core (set before numpy loads).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lookalike.config import IndexSettings  # noqa: E402
from lookalike.core.ann import (
    ANNOY,
    EXACT,
    METRIC,
    Shard,
    build_shard,  # noqa: E402
)
from lookalike.stages.neighbors import top_k_for_shard  # noqa: E402


def clustered(n: int, dim: int, seed: int = 0, per_style: int = 50) -> np.ndarray:
    """Unit vectors around n / per_style "styles" (products photographed alike)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // per_style), dim)).astype(np.float32)
    vectors = centres[rng.integers(0, len(centres), n)]
    vectors = vectors + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def run_shard(members: pd.DataFrame, folder: Path, kind: str, k: int, settings: IndexSettings):
    started = time.perf_counter()
    built = build_shard(members, shard_id=kind, index_dir=folder, settings=settings, kind=kind)
    built_s = time.perf_counter() - started
    row = {"shard_id": kind, "category": "bench", "metric": METRIC, "model_id": "m", **built}
    shard = Shard.open(row)
    rows = top_k_for_shard(shard, k=k, search_k=settings.search_k, run_id="bench")
    shard.close()
    return time.perf_counter() - started, built_s, rows, Path(built["path"]).stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 1280])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1000, 2000, 5000, 10000, 20000, 40000]
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="two small shards: seconds")
    args = parser.parse_args()
    if args.smoke:
        args.dims, args.sizes = [128, 1280], [300, 600]
    sys.stdout.reconfigure(line_buffering=True)
    settings = IndexSettings()
    print(
        f"one core, k={args.k}, Annoy n_trees={settings.n_trees} search_k={settings.search_k}; "
        "seconds for build + every item's top-K"
    )
    print(f"{'dim':>5} {'n':>7} {'exact s':>8} {'annoy s':>8} {'(build)':>8} "
          f"{'annoy/exact':>11} {'annoy recall@k':>14}")  # fmt: skip
    for dim in args.dims:
        for n in args.sizes:
            vectors = clustered(n, dim)
            members = pd.DataFrame(
                {
                    "sku_id": [f"s{i:07d}" for i in range(n)],
                    "is_active": np.ones(n, bool),
                    "embedding": list(vectors),
                }
            )
            with tempfile.TemporaryDirectory() as folder:
                exact_s, _, exact_rows, _ = run_shard(
                    members, Path(folder), EXACT, args.k, settings
                )
                annoy_s, build_s, annoy_rows, _ = run_shard(
                    members, Path(folder), ANNOY, args.k, settings
                )
            want = exact_rows.groupby("sku_id")["similar_sku_id"].apply(set)
            got = annoy_rows.groupby("sku_id")["similar_sku_id"].apply(set)
            recall = sum(len(want[s] & got.get(s, set())) for s in want.index) / sum(
                len(v) for v in want
            )
            print(f"{dim:>5} {n:>7} {exact_s:>8.2f} {annoy_s:>8.2f} {build_s:>8.2f} "
                  f"{annoy_s / exact_s:>11.2f} {recall:>14.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
