"""Where exact search beats an index: time of one shard's top-K, exact, Annoy and IVF, by size.

For each shard size n, clustered unit vectors (the same generator as topk_scale.py) go through
the index stage's ``build_shard`` as an exact shard (.npy), an Annoy shard (.ann) and a faiss
IVF-Flat shard (.faiss), and every item asks its shard for its top-K through the neighbors
stage's ``top_k_for_shard``: build + all n queries, one core (one BLAS / OpenMP thread, as one
Spark task per core). Exact work grows with n^2, Annoy's with about n log n: the crossover
against Annoy is the default of ``index.exact_max_size``. Each index's recall@K against the
exact answer is printed beside.

``--sweep`` then measures IVF recall@K by ``nprobe`` with the index stage's own recall sampling
(``recall_of_shard``, ``--queries`` sampled items) on one shard per seed: the figures behind
the default of ``index.nprobe``.

Usage:  .venv/bin/python benchmarks/exact_vs_annoy.py [--dims 128 1280]
            [--sizes 1000 2000 5000 10000 20000 40000] [--k 10] [--nprobe 8]
            [--sweep --seeds 0 1 2 --nprobes 1 2 4 8 16 --queries 1000]
        .venv/bin/python benchmarks/exact_vs_annoy.py --smoke   (300 and 600 items: seconds)
"""

from __future__ import annotations

import os

# One core per Spark task: BLAS must not use the other core (set before numpy loads).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lookalike.config import IndexSettings  # noqa: E402
from lookalike.core.ann import (  # noqa: E402
    ANNOY,
    EXACT,
    IVF,
    IVF_MAX_SCAN,
    METRIC,
    Shard,
    build_shard,
    ivf_lists,
    recall_of_shard,
    scanned_share,
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


def members_of(vectors: np.ndarray) -> pd.DataFrame:
    n = len(vectors)
    return pd.DataFrame(
        {
            "sku_id": [f"s{i:07d}" for i in range(n)],
            "is_active": np.ones(n, bool),
            "embedding": list(vectors),
        }
    )


def recall_against(exact_rows: pd.DataFrame, rows: pd.DataFrame) -> float:
    want = exact_rows.groupby("sku_id")["similar_sku_id"].apply(set)
    got = rows.groupby("sku_id")["similar_sku_id"].apply(set)
    hits = sum(len(want[s] & got.get(s, set())) for s in want.index)
    return hits / sum(len(v) for v in want)


def ivf_recalls(members, settings: IndexSettings, args, seed: int, nprobes_of):
    """((nlist, tuned nprobe, share of the vectors a query compares at it), recall@k at each
    of ``nprobes_of(nlist, tuned)`` lists) of one IVF shard of ``members``, by the index
    stage's recall sampling."""
    with tempfile.TemporaryDirectory() as folder:
        built = build_shard(
            members, shard_id="s", index_dir=Path(folder), settings=settings, kind=IVF
        )
        row = {"shard_id": "s", "category": "b", "metric": METRIC, "model_id": "m"}
        shard = Shard.open(row | built)
        nlist, tuned = shard.index.nlist, shard.index.nprobe
        scan = scanned_share(shard.index, shard.item_vectors(), seed=settings.seed)
        recalls = []
        for nprobe in nprobes_of(nlist, tuned):
            shard.index.nprobe = nprobe
            got = recall_of_shard(
                shard, k=args.k, search_k=settings.search_k, queries=args.queries, seed=seed
            )
            recalls.append(got["hits"] / max(1, got["wanted"]))
        shard.close()
    return (nlist, tuned, scan), recalls


def sweep(args, settings: IndexSettings) -> None:
    """IVF recall@k by nprobe, the index stage's recall sampling, one shard per seed."""
    print(f"\nIVF recall@{args.k} by nprobe (recall_of_shard, {args.queries} sampled queries)")
    print(f"{'dim':>5} {'n':>7} {'nlist':>6} {'seed':>5} " + " ".join(
        f"{'nprobe ' + str(p):>10}" for p in args.nprobes))  # fmt: skip
    for dim in args.dims:
        for n in args.sizes:
            for seed in args.seeds:
                members = members_of(clustered(n, dim, seed=seed))
                _, recalls = ivf_recalls(
                    members, settings, args, seed, lambda nlist, tuned: args.nprobes
                )
                print(f"{dim:>5} {n:>7} {ivf_lists(n):>6} {seed:>5} "
                      + " ".join(f"{r:>10.4f}" for r in recalls))  # fmt: skip


def real_sweep(args, settings: IndexSettings) -> None:
    """IVF recall@k by the share of lists scanned, on real photos' vectors: chosen on one half
    of the photos (the smallest share whose worst seed reaches --target), reported on the
    other half, each half one shard, for each seed (a seed draws the halves, the k-means
    sample and the sampled queries)."""
    from pca_real import synthetic_vectors_file
    from real_vectors import load_real_vectors

    if args.smoke:
        scratch = Path(tempfile.mkdtemp(prefix="lookalike-ivf-real-"))
        vectors, _ = load_real_vectors(synthetic_vectors_file(scratch / "vectors.npz", n=800))
    else:
        vectors, _ = load_real_vectors(Path(args.real))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    half = len(vectors) // 2
    print(
        f"\nIVF recall@{args.k} by share of lists scanned, real vectors ({len(vectors)} x "
        f"{vectors.shape[1]}; halves of {half}, {ivf_lists(half)} lists; {args.queries} "
        f"sampled queries): choose on half A, report on half B"
    )
    print(f"{'half':>5} {'seed':>5} " + " ".join(f"{'share ' + format(p, 'g'):>12}"
          for p in args.shares))  # fmt: skip
    worst: dict[str, list[float]] = {"A": [1.0] * len(args.shares), "B": [1.0] * len(args.shares)}
    for seed in args.seeds:
        order = np.random.default_rng(seed).permutation(len(vectors))
        for name, rows in (("A", order[:half]), ("B", order[half : 2 * half])):
            # The last count is what the build chose for index.target_recall.
            (nlist, tuned, scan), recalls = ivf_recalls(
                members_of(vectors[rows]),
                settings.model_copy(update={"seed": seed}),
                args,
                seed,
                lambda nlist, tuned: [max(1, math.ceil(p * nlist)) for p in args.shares] + [tuned],
            )
            tuned_recall = recalls.pop()
            worst[name] = [min(w, r) for w, r in zip(worst[name], recalls, strict=True)]
            print(
                f"{name:>5} {seed:>5} " + " ".join(f"{r:>12.4f}" for r in recalls)
                + f"   tuned: {tuned}/{nlist} lists, recall {tuned_recall:.4f}, scans "
                f"{scan:.3f} of the vectors (auto keeps IVF up to {IVF_MAX_SCAN:g}: "
                f"{'yes' if scan <= IVF_MAX_SCAN else 'no'})"
            )  # fmt: skip
    chosen = next((i for i, r in enumerate(worst["A"]) if r >= args.target), len(args.shares) - 1)
    print(
        f"chosen on half A: share {args.shares[chosen]:g} (worst seed {worst['A'][chosen]:.4f}, "
        f"target {args.target}); on half B, not used to choose: worst seed "
        f"{worst['B'][chosen]:.4f}; each shard's own tuning (index.target_recall "
        f"{settings.target_recall:g}, its 200 sampled members) is the 'tuned' column, measured "
        f"on other queries"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 1280])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1000, 2000, 5000, 10000, 20000, 40000]
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nprobe", type=int, default=None, help="IVF lists scanned per query")
    parser.add_argument("--kinds", nargs="+", default=[ANNOY, IVF], help="indexes timed")
    parser.add_argument("--sweep", action="store_true", help="IVF recall by nprobe, by seed")
    parser.add_argument("--sweep-only", action="store_true", help="only the nprobe sweep")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--nprobes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument(
        "--real",
        nargs="?",
        const="/tmp/lookalike-bench/real_vectors.npz",
        help="only the IVF share sweep on real vectors (benchmarks/real_vectors.py's file)",
    )
    parser.add_argument(
        "--shares", type=float, nargs="+", default=[1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4]
    )
    parser.add_argument("--target", type=float, default=0.97, help="recall@k the share must reach")
    parser.add_argument("--smoke", action="store_true", help="two small shards: seconds")
    args = parser.parse_args()
    if args.smoke:
        args.dims, args.sizes = [128, 1280], [300, 600]
    sys.stdout.reconfigure(line_buffering=True)
    settings = IndexSettings()
    if args.nprobe is not None:
        settings = settings.model_copy(update={"nprobe": args.nprobe})
    if args.real:
        real_sweep(args, settings)
        return 0
    if not args.sweep_only:
        table(args, settings)
    if args.sweep or args.sweep_only:
        sweep(args, settings)
    if args.smoke:
        real_sweep(args, settings)
    return 0


def table(args, settings: IndexSettings) -> None:
    print(
        f"one core, k={args.k}, Annoy n_trees={settings.n_trees} search_k={settings.search_k}, "
        f"IVF nlist ~4 sqrt(n) nprobe={settings.nprobe or 'tuned to'} target_recall="
        f"{settings.target_recall:g}; seconds for build + every item's top-K"
    )
    print(f"{'dim':>5} {'n':>7} {'exact s':>8} {'annoy s':>8} {'(build)':>8} {'ivf s':>8} "
          f"{'(build)':>8} {'annoy/exact':>11} {'ivf/exact':>9} {'annoy recall@k':>14} "
          f"{'ivf recall@k':>12}")  # fmt: skip
    for dim in args.dims:
        for n in args.sizes:
            members = members_of(clustered(n, dim))
            timed = {}
            with tempfile.TemporaryDirectory() as folder:
                exact_s, _, exact_rows, _ = run_shard(
                    members, Path(folder), EXACT, args.k, settings
                )
                for kind in args.kinds:
                    total_s, build_s, rows, _ = run_shard(
                        members, Path(folder), kind, args.k, settings
                    )
                    timed[kind] = (total_s, build_s, recall_against(exact_rows, rows))
            nan = (float("nan"),) * 3
            (annoy_s, annoy_build, annoy_recall) = timed.get(ANNOY, nan)
            (ivf_s, ivf_build, ivf_recall) = timed.get(IVF, nan)
            print(f"{dim:>5} {n:>7} {exact_s:>8.2f} {annoy_s:>8.2f} {annoy_build:>8.2f} "
                  f"{ivf_s:>8.2f} {ivf_build:>8.2f} {annoy_s / exact_s:>11.2f} "
                  f"{ivf_s / exact_s:>9.2f} {annoy_recall:>14.3f} {ivf_recall:>12.4f}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
