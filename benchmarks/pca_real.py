"""PCA before indexing, on real embeddings: recall, speed, index size, retrieval quality.

Reads the real MobileNet-V2 vectors of clothing-small + grocery-store (written by
``benchmarks/real_vectors.py``), and for each setting (no PCA; PCA to 256 / 128 axes, with and
without whitening, fitted on a sample of 5,000 of the vectors) builds one Annoy shard through
the index stage's ``build_shard`` and asks it, through ``Shard.search`` as the neighbors stage
does, for the top-10 of 1,000 sampled photos. Printed per setting:

- Annoy recall@10 against exact search in the same (projected) space: what the index loses;
- recall@10 against exact search on the original 1280-d vectors: what PCA itself changes;
- same-category precision@10 of the answers (a photo's category is its folder / coarse class):
  whether the neighbors got better or worse for the shop;
- build seconds, query milliseconds, index file size.

Then a search_k x n_trees grid of Annoy recall@10 on the real vectors, from which the
defaults of ``index.n_trees`` and ``index.search_k`` are chosen (recall@10 >= 0.95).

Usage:  .venv/bin/python benchmarks/pca_real.py [--vectors /tmp/lookalike-bench/real_vectors.npz]
        .venv/bin/python benchmarks/pca_real.py --smoke   (1,000 synthetic 1280-d vectors in 10
            categories, saved and read as real_vectors.py's file, 100 queries: seconds, to
            show the code still runs; the figures say nothing about real photos)
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core, as one Spark task

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lookalike.config import IndexSettings  # noqa: E402
from lookalike.core.ann import ANNOY, METRIC, Shard, build_shard, top_k  # noqa: E402
from lookalike.core.projection import Projection  # noqa: E402
from real_vectors import DEFAULT_OUT, load_real_vectors  # noqa: E402

K = 10
QUERIES = 1000


def fit_pca(vectors: np.ndarray, dim: int, whiten: bool, sample: int, seed: int) -> Projection:
    """The same arithmetic as ``index.fit_projection`` (which sums on Spark), in numpy."""
    rng = np.random.default_rng(seed)
    x = vectors[rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)]
    x = x.astype(np.float64)
    mean = x.mean(0)
    values, axes = np.linalg.eigh(np.cov(x, rowvar=False, bias=True))
    top = np.argsort(values)[::-1][:dim]
    scale = 1 / np.sqrt(values[top]) if whiten else np.ones(dim)
    return Projection(
        mean.astype(np.float32),
        axes[:, top].T.astype(np.float32),
        scale.astype(np.float32),
        "mobilenet_v2",
    )


def annoy_answers(vectors, queries, folder: Path, settings: IndexSettings, kind: str = ANNOY):
    """(answers, build s, query ms, file bytes) of one shard of ``kind`` (Annoy unless told)."""
    members = pd.DataFrame(
        {
            "sku_id": [f"s{i:06d}" for i in range(len(vectors))],
            "is_active": np.ones(len(vectors), bool),
            "embedding": list(vectors),
        }
    )
    started = time.perf_counter()
    built = build_shard(members, shard_id="real", index_dir=folder, settings=settings, kind=kind)
    build_s = time.perf_counter() - started
    shard = Shard.open(
        {"shard_id": "real", "category": "real", "metric": METRIC, "model_id": "m", **built}
    )
    started = time.perf_counter()
    found = shard.search(
        shard.item_vectors(queries),
        K,
        search_k=settings.search_k,
        active_only=True,
        exclude=queries,
    )
    query_ms = (time.perf_counter() - started) / len(queries) * 1000
    shard.close()
    return [ids for ids, _ in found], build_s, query_ms, Path(built["path"]).stat().st_size


def recall(found, exact) -> float:
    return float(
        np.mean([len(np.intersect1d(f, e)) / len(e) for f, e in zip(found, exact, strict=True)])
    )


def synthetic_vectors_file(path: Path, n: int = 1000, dim: int = 1280) -> Path:
    """A file like real_vectors.py's: clustered vectors, ten categories of styles."""
    rng = np.random.default_rng(0)
    category = rng.integers(0, 10, n)
    styles = rng.integers(0, 20, n)
    centres = rng.standard_normal((10, 20, dim)).astype(np.float32)
    vectors = centres[category, styles] + 0.8 * rng.standard_normal((n, dim)).astype(np.float32)
    np.savez(path, vectors=vectors, category=np.array([f"c{c}" for c in category]))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", default=DEFAULT_OUT)
    parser.add_argument("--smoke", action="store_true", help="synthetic vectors: seconds")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    n_queries = QUERIES
    with tempfile.TemporaryDirectory() as scratch:
        if args.smoke:
            args.vectors = synthetic_vectors_file(Path(scratch) / "vectors.npz")
            n_queries = 100
        vectors, category = load_real_vectors(args.vectors)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    queries = np.sort(rng.choice(len(vectors), size=n_queries, replace=False))
    exact_original = [ids for ids, _ in top_k(vectors, vectors[queries], K, exclude=queries)]
    kind = "synthetic vectors (%d-d)" if args.smoke else "real photos (%d-d MobileNet-V2)"
    print(f"{len(vectors):,} {kind % vectors.shape[1]}, "
          f"{len(set(category))} categories; {n_queries} queries; k={K}; one core")  # fmt: skip
    settings = IndexSettings()
    print(f"Annoy n_trees={settings.n_trees}, search_k={settings.search_k}")
    header = ("setting", "dim", "annoy recall", "recall vs 1280-d", "same-cat p@10",
              "build s", "query ms", "index MB")  # fmt: skip
    print("{:<22}{:>5}{:>14}{:>18}{:>15}{:>9}{:>10}{:>10}".format(*header))
    for name, dim, whiten in [
        ("none", 0, False),
        ("pca 256", 256, False),
        ("pca 256 + whitening", 256, True),
        ("pca 128", 128, False),
        ("pca 128 + whitening", 128, True),
    ]:
        if dim:
            projected = fit_pca(vectors, dim, whiten, sample=5000, seed=0).apply(vectors)
        else:
            projected = vectors
        exact_here = [ids for ids, _ in top_k(projected, projected[queries], K, exclude=queries)]
        with tempfile.TemporaryDirectory() as folder:
            found, build_s, query_ms, size = annoy_answers(
                projected, queries, Path(folder), settings
            )
        same_category = np.mean(
            [np.mean(category[f] == category[q]) for f, q in zip(found, queries, strict=True)]
        )
        print(
            f"{name:<22}{projected.shape[1]:>5}{recall(found, exact_here):>14.3f}"
            f"{recall(found, exact_original):>18.3f}{same_category:>15.3f}{build_s:>9.2f}"
            f"{query_ms:>10.3f}{size / 2**20:>10.1f}"
        )
    exact_p = np.mean(
        [np.mean(category[e] == category[q]) for e, q in zip(exact_original, queries, strict=True)]
    )
    print(f"(exact search on the 1280-d vectors: same-category p@10 {exact_p:.3f})")

    print("\nAnnoy recall@10 against exact, no PCA (search_k -1: n_trees x 2(k+1) nodes):")
    grid_trees, grid_search_k = (10, 20, 50), (-1, 1000, 2000, 5000, 10000)
    if args.smoke:
        grid_trees, grid_search_k = (10, 20), (-1, 5000)
    print("n_trees" + "".join(f"{f'search_k {s}':>16}" for s in grid_search_k))
    with tempfile.TemporaryDirectory() as folder:
        for n_trees in grid_trees:
            cells = []
            for search_k in grid_search_k:
                found, _, query_ms, _ = annoy_answers(
                    vectors,
                    queries,
                    Path(folder),
                    IndexSettings(n_trees=n_trees, search_k=search_k),
                )
                cells.append(f"{recall(found, exact_original):.3f} {query_ms:5.2f}ms")
            print(f"{n_trees:<7}" + "".join(f"{c:>16}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
