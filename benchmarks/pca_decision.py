"""Should PCA before indexing be the default at 1280-d? Measured on real photos, decided in numbers.

Reads the real MobileNet-V2 vectors of clothing-small + grocery-store (written by
``benchmarks/real_vectors.py``), plants copies of real photos as
``benchmarks/duplicates_quality.py`` makes them (its ``build_set``: crops, re-encodes, pads,
watermarks, ...) and embeds them with the same model through the embedding stage's code.
The corpus is every photo and every copy, one shard per category as the job builds them.

For no PCA, then PCA to 256 and 128 axes, each fitted by the index stage's own
``fit_projection`` (on Spark) on a sample of the corpus drawn with each of several seeds
(the job's sample is ``index.pca_sample`` = 20,000 of a larger catalogue; this corpus is
smaller, so the sample is ``--pca-sample`` of it, or every seed would fit the same axes),
printed per setting and seed:

1. Similar items, exact search in each space (the index does not confound it), through
   ``lookalike.model.evaluate.evaluate_vectors``: clothing-small same-category precision@10
   on its test split (the split ``clothing_precision.py`` reports) and on all its photos;
   grocery-store same-product precision@10 and Recall@1 on its val split (the split
   ``grocery_finetune.py`` reports) and on train + val.
2. Duplicates' candidates, through ``near_duplicate_pairs_across`` on exact category shards
   built by ``build_shard`` with the projection (what the duplicates stage asks; shards of
   this size are exact in the job too): the share of planted pairs (original-copy and
   copy-copy) among each SKU's ``duplicates.candidates_per_sku`` nearest with a cosine of at
   least ``duplicates.candidate_min_similarity``. The photos are split in two halves (copies
   go with their original): a threshold is recalibrated on half A -- for each dimension,
   one threshold for every seed (a config value must hold whatever sample a night draws):
   the highest at which every seed keeps at least the share that no PCA keeps at the current
   threshold on half A -- and every share and false-candidate load (non-planted candidate
   pairs per SKU, the descriptor comparisons the stage then pays) is reported on half B.
3. Speed and size, first seed only: exact and IVF shards of the whole corpus (build, the
   top-10 of 1,000 queries, file size) at 1280-d and projected.

Then a verdict per dimension, computed from the figures against the tolerances below.

Usage:  .venv/bin/python benchmarks/pca_decision.py
            [--vectors /tmp/lookalike-bench/real_vectors.npz] [--seeds 42,1,2]
            [--pca-sample 5000] [--originals 300] [--planted-seed 11] [--threads 2]
        .venv/bin/python benchmarks/pca_decision.py --smoke   (a few photos of each set embedded
            here, 6 originals per set, two seeds: seconds, to show it runs; the figures say
            nothing)
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core, as one Spark task

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import duplicates_quality as planting  # noqa: E402
from lookalike.config import Config, DuplicatesSettings, IndexSettings, ModelSettings  # noqa: E402
from lookalike.core.ann import EXACT, IVF, METRIC, Shard, build_shard  # noqa: E402
from lookalike.core.projection import Projection  # noqa: E402
from lookalike.model.evaluate import evaluate_vectors  # noqa: E402
from lookalike.stages.duplicate_pairs import near_duplicate_pairs_across  # noqa: E402
from pca_real import annoy_answers  # noqa: E402
from real_vectors import DATASETS as DATASETS_ROOT  # noqa: E402
from real_vectors import DEFAULT_OUT, load_real_rows  # noqa: E402

DIMS = (256, 128)
# The verdict's tolerances. Similar items: no quality figure (any seed) may fall by more than
# a point. Duplicates: at the recalibrated threshold, every seed keeps the planted candidates
# that no PCA keeps, to within one point, at no more than 1.5x the descriptor comparisons.
MAX_QUALITY_DROP = 0.01
MAX_CANDIDATE_LOSS = 0.01
MAX_LOAD_RATIO = 1.5
SPEED_QUERIES = 1000
K = 10
SMOKE_ORIGINALS = 6


@dataclass
class Corpus:
    """Every vector (dataset photos, then planted copies), its row, its half and the truth."""

    vectors: np.ndarray
    rows: pd.DataFrame  # sku_id, image_uri, product_id, category, split, dataset, half
    truth: set[tuple[str, str]]  # planted pairs (sku_id_a < sku_id_b)


def _split_of(uri: str) -> str:
    """clothing-small/<split>/..., grocery-store/dataset/<split>/...: the dataset's split."""
    parts = Path(uri).parts
    for name in ("clothing-small", "dataset"):
        if name in parts:
            return parts[parts.index(name) + 1]
    return ""


def with_dataset_columns(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.copy()
    rows["dataset"] = np.where(rows["product_id"].isna(), "clothing", "grocery")
    rows["split"] = [_split_of(u) for u in rows["image_uri"]]
    return rows


def smoke_rows(embedder) -> tuple[np.ndarray, pd.DataFrame]:
    """A few real photos of each set embedded here, in the shape of real_vectors.py's file."""
    from lookalike.model.labelled import embed_labelled, grocery_store, image_folders

    clothing = pd.concat(
        image_folders(DATASETS_ROOT / "clothing-small" / s).groupby("category").head(3)
        for s in ("train", "test")
    )
    grocery = grocery_store(DATASETS_ROOT / "grocery-store", "val", with_references=False)
    grocery = grocery[grocery["product_id"].isin(sorted(grocery["product_id"].unique())[:8])]
    grocery = grocery.groupby("product_id").head(3)
    vectors, rows = embed_labelled(pd.concat([clothing, grocery], ignore_index=True), embedder)
    return vectors, rows[["image_uri", "product_id", "category"]]


def plant_copies(
    rows: pd.DataFrame, n_originals: int, seed: int, image_dir: Path, embedder
) -> tuple[pd.DataFrame, np.ndarray, set[tuple[str, str]]]:
    """duplicates_quality's planted copies of the corpus's own photos: (copies: sku_id,
    image_uri, original (the original's corpus sku_id); their vectors; the planted pairs)."""
    from lookalike.model.labelled import embed_labelled

    sku_of_path = dict(zip(rows["image_uri"], rows["sku_id"], strict=True))
    copies, truth = [], set()
    for name in ("clothing", "grocery"):
        dataset = planting.DATASETS[name]
        # Only photos the corpus holds (all of them in a real run; the smoke run's few).
        paths = sorted(
            p
            for pattern in dataset.patterns
            for p in dataset.root.glob(pattern)
            if str(p) in sku_of_path
        )
        photos, n_dropped = planting.distinct_photos(
            [planting.describe_photo(p, dataset) for p in paths]
        )
        folder = image_dir / name
        folder.mkdir(parents=True)
        planted = planting.build_set(
            n_originals, seed, folder, planting.PhotoPool(dataset, photos, n_dropped, len(paths))
        )
        # A copy is a new SKU; every other listing is a photo of the corpus.
        own = {
            item.sku_id: f"{name}-copy-{item.sku_id}"
            if item.role == "copy"
            else sku_of_path[str(item.path)]
            for item in planted.listings
        }
        copies += [
            {"sku_id": own[i.sku_id], "image_uri": str(i.path), "original": own[i.original]}
            for i in planted.listings
            if i.role == "copy"
        ]
        truth |= {tuple(sorted((own[a], own[b]))) for a, b in planted.truth}
    copies_df = pd.DataFrame(copies)
    vectors, embedded = embed_labelled(
        copies_df[["image_uri"]].assign(product_id=None, category=None), embedder
    )
    if len(embedded) != len(copies_df):
        sys.exit(f"{len(copies_df) - len(embedded)} planted copies did not embed")
    return copies_df, vectors, truth


def build_corpus(
    vectors: np.ndarray, rows: pd.DataFrame, copies_df: pd.DataFrame, copy_vectors, truth, seed
) -> Corpus:
    """Photos and copies in one table; each photo in half A or B, a copy in its original's
    half, category and product."""
    rows = with_dataset_columns(rows).reset_index(drop=True)
    rows["half"] = np.where(np.random.default_rng(seed).permutation(len(rows)) % 2, "B", "A")
    original = rows.set_index("sku_id").loc[copies_df["original"]].reset_index(drop=True)
    copy_rows = original[["product_id", "category", "dataset", "half"]].assign(
        sku_id=copies_df["sku_id"].to_numpy(),
        image_uri=copies_df["image_uri"].to_numpy(),
        split="copy",
    )
    return Corpus(
        np.concatenate([vectors, copy_vectors]).astype(np.float32),
        pd.concat([rows, copy_rows], ignore_index=True),
        truth,
    )


# --- the projections ------------------------------------------------------------------------


def fit_projections(
    corpus: Corpus, dims: tuple[int, ...], seeds: list[int], sample: int, model_id: str
) -> dict[tuple[int, int], Projection]:
    """The index stage's fit_projection on a Spark frame of the corpus, per (dim, seed)."""
    from lookalike.session import build_session
    from lookalike.stages.index import fit_projection

    config = Config().with_overrides(
        spark={
            "master": "local[2]",
            "app_name": "lookalike-pca-decision",
            "conf": {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2"},
        }
    )
    spark = build_session(config)
    try:
        embeddings_df = spark.createDataFrame(
            pd.DataFrame(
                {
                    "sku_id": corpus.rows["sku_id"],
                    "model_id": model_id,
                    "embedding": [v.tolist() for v in corpus.vectors],
                }
            ),
            schema="sku_id string, model_id string, embedding array<float>",
        ).cache()
        return {
            (dim, seed): fit_projection(
                embeddings_df, dim=dim, whiten=False, sample=sample, seed=seed
            )
            for seed in seeds
            for dim in dims
        }
    finally:
        spark.stop()


def projected(corpus: Corpus, projection: Projection | None) -> np.ndarray:
    if projection is None:
        return corpus.vectors / np.linalg.norm(corpus.vectors, axis=1, keepdims=True)
    return projection.apply(corpus.vectors)


# --- 1. similar items -----------------------------------------------------------------------

QUALITY = (
    # (column, dataset, splits, task/metric)
    ("cloth test p@10", "clothing", ("test",), "same_category/precision@10"),
    ("cloth all p@10", "clothing", ("train", "validation", "test"), "same_category/precision@10"),
    ("groc val p@10", "grocery", ("val",), "same_product/precision@10"),
    ("groc val R@1", "grocery", ("val",), "same_product/recall@1"),
    ("groc all p@10", "grocery", ("train", "val"), "same_product/precision@10"),
    ("groc all R@1", "grocery", ("train", "val"), "same_product/recall@1"),
)


def similar_items(corpus: Corpus, space: np.ndarray) -> dict[str, float]:
    figures = {}
    for column, dataset, splits, metric in QUALITY:
        chosen = (corpus.rows["dataset"] == dataset) & corpus.rows["split"].isin(splits)
        labels = corpus.rows.loc[chosen, ["product_id", "category"]]
        if dataset == "clothing":
            labels = labels.assign(product_id=None)
        evaluation = evaluate_vectors(
            space[chosen.to_numpy()],
            labels.assign(is_reference=False),
            model_id="m",
            dataset=dataset,
            split="+".join(splits),
            ks=(1, K),
        )
        figures[column] = evaluation.metric(metric)
    return figures


# --- 2. duplicates' candidates --------------------------------------------------------------


def candidate_pairs(corpus: Corpus, projection: Projection | None, folder: Path) -> pd.DataFrame:
    """Every SKU's candidates_per_sku nearest in its category's exact shard, with their
    cosine (no threshold yet): near_duplicate_pairs_across at min_similarity -1."""
    candidates = DuplicatesSettings().candidates_per_sku
    frames = []
    for category, members in corpus.rows.groupby("category"):
        shard_members = pd.DataFrame(
            {
                "sku_id": members["sku_id"].to_numpy(),
                "is_active": True,
                "embedding": list(corpus.vectors[members.index.to_numpy()]),
            }
        )
        shard_id = f"c{len(frames):03d}"
        built = build_shard(
            shard_members,
            shard_id=shard_id,
            index_dir=folder,
            settings=IndexSettings(),
            kind=EXACT,
            projection=projection,
        )
        shard = Shard.open(
            {"shard_id": shard_id, "category": category, "metric": METRIC, "model_id": "m"} | built
        )
        frames.append(
            near_duplicate_pairs_across(
                shard, shard, min_similarity=-1.0, candidates=candidates, search_k=-1
            )
        )
        shard.close()
    return pd.concat(frames, ignore_index=True)


def half_of(corpus: Corpus) -> dict[str, str]:
    return dict(zip(corpus.rows["sku_id"], corpus.rows["half"], strict=True))


def planted_scores(corpus: Corpus, pairs: pd.DataFrame, half: str) -> np.ndarray:
    """The cosine of each planted pair of that half (-inf: not among the nearest)."""
    halves = half_of(corpus)
    keys = zip(pairs["sku_id_a"], pairs["sku_id_b"], strict=True)
    score = dict(zip(keys, pairs["score"], strict=True))
    return np.array(
        [score.get(p, -np.inf) for p in sorted(corpus.truth) if halves[p[0]] == half], np.float64
    )


def kept(scores: np.ndarray, threshold: float) -> float:
    return float(np.mean(scores >= threshold))


def false_load(corpus: Corpus, pairs: pd.DataFrame, threshold: float, half: str) -> float:
    """Non-planted candidate pairs per SKU of the half (a pair counts for each of its SKUs)."""
    halves = half_of(corpus)
    above = pairs[pairs["score"] >= threshold]
    keys = zip(above["sku_id_a"], above["sku_id_b"], strict=True)
    false = [(a, b) for a, b in keys if (a, b) not in corpus.truth]
    touching = sum((halves[a] == half) + (halves[b] == half) for a, b in false)
    return touching / int((corpus.rows["half"] == half).sum())


def highest_threshold(scores: np.ndarray, share: float) -> float:
    """The highest threshold at which at least ``share`` of these pairs are candidates."""
    found = np.sort(scores[np.isfinite(scores)])[::-1]
    needed = int(np.ceil(share * len(scores) - 1e-9))
    if needed == 0:
        return 1.0
    # Out of reach (pairs not among the nearest at all): the lowest score still found.
    return float(found[min(needed, len(found)) - 1]) if len(found) else -1.0


# --- 3. speed and size ----------------------------------------------------------------------


def speed(
    space: np.ndarray, queries: np.ndarray, folder: Path
) -> list[tuple[str, float, float, float]]:
    """(kind, build s, query ms, MB) of an exact and an IVF shard of the whole corpus."""
    out = []
    for kind in (EXACT, IVF):
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            _, build_s, query_ms, size = annoy_answers(
                space, queries, Path(scratch), IndexSettings(), kind=kind
            )
        out.append((kind, build_s, query_ms, size / 2**20))
    return out


# --- the report -----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", default=DEFAULT_OUT)
    parser.add_argument(
        "--seeds", default="42,1,2", help="seeds of the PCA fit sample (42: index.seed)"
    )
    parser.add_argument("--pca-sample", type=int, default=5000)
    parser.add_argument("--originals", type=int, default=300, help="photos per set that get copies")
    parser.add_argument("--planted-seed", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="a few photos: seconds")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.smoke:
        seeds, args.originals, args.pca_sample = seeds[:2], SMOKE_ORIGINALS, 100
    if len(seeds) < 1:
        sys.exit("--seeds: no seed given")
    import torch

    from lookalike.core.backbones import load_embedder

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    embedder = load_embedder(ModelSettings(device="cpu"))
    if args.smoke:
        vectors, rows = smoke_rows(embedder)
    else:
        vectors, rows = load_real_rows(args.vectors)
    rows = rows.assign(sku_id=[f"P{i:06d}" for i in range(len(rows))]).reset_index(drop=True)
    work = Path(tempfile.mkdtemp(prefix="lookalike-pca-decision-"))
    try:
        copies, copy_vectors, truth = plant_copies(
            rows, args.originals, args.planted_seed, work / "copies", embedder
        )
        corpus = build_corpus(vectors, rows, copies, copy_vectors, truth, seed=0)
        n_half = corpus.rows["half"].value_counts()
        print(
            f"corpus: {len(rows):,} real photos (1280-d MobileNet-V2) + {len(copies)} planted "
            f"copies = {len(corpus.rows):,} vectors in {corpus.rows['category'].nunique()} "
            f"category shards; {len(truth)} planted pairs (planted seed {args.planted_seed}); "
            f"halves A {n_half.get('A', 0):,} / B {n_half.get('B', 0):,} SKUs; prepared in "
            f"{time.perf_counter() - started:.0f} s"
        )
        fit_started = time.perf_counter()
        projections = fit_projections(corpus, DIMS, seeds, args.pca_sample, embedder.model_id)
        print(
            f"PCA fitted by index.fit_projection on ~{args.pca_sample:,} sampled vectors, seeds "
            f"{', '.join(map(str, seeds))}, no whitening: {len(projections)} fits in "
            f"{time.perf_counter() - fit_started:.0f} s"
        )
        settings = [("none", 1280, None)] + [
            (f"pca {dim}", dim, seed) for dim in DIMS for seed in seeds
        ]
        threshold = DuplicatesSettings().candidate_min_similarity
        quality, scores, pair_sets = {}, {}, {}
        for name, dim, seed in settings:
            projection = projections.get((dim, seed))
            space = projected(corpus, projection)
            quality[(name, seed)] = similar_items(corpus, space)
            with tempfile.TemporaryDirectory(dir=work) as folder:
                pairs = candidate_pairs(corpus, projection, Path(folder))
            pair_sets[(name, seed)] = pairs
            scores[(name, seed)] = {h: planted_scores(corpus, pairs, h) for h in "AB"}

        print("\n1. similar items, exact search in each space")
        columns = [c for c, *_ in QUALITY]
        print(f"{'setting':<10}{'seed':>5}" + "".join(f"{c:>16}" for c in columns))
        for name, _, seed in settings:
            row = quality[(name, seed)]
            seed_text = "-" if seed is None else str(seed)
            print(f"{name:<10}{seed_text:>5}" + "".join(f"{row[c]:>16.3f}" for c in columns))

        base = scores[("none", None)]
        base_share_a = kept(base["A"], threshold)
        base_share_b = kept(base["B"], threshold)
        base_load_b = false_load(corpus, pair_sets[("none", None)], threshold, "B")
        chosen: dict[int, float] = {}
        for dim in DIMS:
            # One threshold for every seed: the lowest of the seeds' highest that keep, on
            # half A, the share no PCA keeps at the current threshold.
            chosen[dim] = min(
                highest_threshold(scores[(f"pca {dim}", s)]["A"], base_share_a) for s in seeds
            )
        print(
            f"\n2. duplicates' candidates: top {DuplicatesSettings().candidates_per_sku} of each "
            f"SKU in its category, cosine >= threshold; thresholds chosen on half A "
            f"({len(base['A'])} planted pairs), figures on half B ({len(base['B'])} planted pairs)"
        )
        header = ("setting", "seed", "in top-K", f"kept@{threshold:.2f}", "false/SKU",
                  "recalibrated", "kept@recal", "false/SKU")  # fmt: skip
        print("{:<10}{:>5}{:>10}{:>11}{:>11}{:>14}{:>12}{:>11}".format(*header))
        verdict_rows: dict[int, list[dict]] = {dim: [] for dim in DIMS}
        for name, dim, seed in settings:
            b = scores[(name, seed)]["B"]
            pairs = pair_sets[(name, seed)]
            recal = chosen.get(dim, threshold)
            figures = {
                "top_k": float(np.mean(np.isfinite(b))),
                "kept": kept(b, threshold),
                "load": false_load(corpus, pairs, threshold, "B"),
                "kept_recal": kept(b, recal),
                "load_recal": false_load(corpus, pairs, recal, "B"),
            }
            if seed is not None:
                verdict_rows[dim].append(figures | {"quality": quality[(name, seed)]})
            seed_text = "-" if seed is None else str(seed)
            print(
                f"{name:<10}{seed_text:>5}{figures['top_k']:>10.3f}{figures['kept']:>11.3f}"
                f"{figures['load']:>11.2f}{recal:>14.3f}{figures['kept_recal']:>12.3f}"
                f"{figures['load_recal']:>11.2f}"
            )
        print(
            f"(half A: no PCA keeps {base_share_a:.3f} at {threshold:.2f}; the recalibrated "
            f"threshold of each dimension is the highest at which every seed keeps as much there)"
        )

        print(
            f"\n3. speed and size: the whole corpus as one shard, top-{K} of {SPEED_QUERIES} "
            "queries, one core"
        )
        queries = np.sort(
            np.random.default_rng(0).choice(
                len(corpus.rows), size=min(SPEED_QUERIES, len(corpus.rows)), replace=False
            )
        )
        print(f"{'setting':<10}{'dim':>5}{'kind':>7}{'build s':>9}{'query ms':>10}{'MB':>8}")
        for name, dim, seed in settings:
            if seed not in (None, seeds[0]):
                continue
            space = projected(corpus, projections.get((dim, seed)))
            for kind, build_s, query_ms, size in speed(space, queries, work):
                print(f"{name:<10}{dim:>5}{kind:>7}{build_s:>9.2f}{query_ms:>10.3f}{size:>8.1f}")

        print()
        base_quality = quality[("none", None)]
        n_b = len(base["B"])
        for dim in DIMS:
            rows_of = verdict_rows[dim]
            drop = max(base_quality[c] - r["quality"][c] for r in rows_of for c in columns)
            loss = max(base_share_b - r["kept"] for r in rows_of)
            loss_recal = max(base_share_b - r["kept_recal"] for r in rows_of)
            load = max(r["load"] for r in rows_of) / max(base_load_b, 1e-9)
            load_recal = max(r["load_recal"] for r in rows_of) / max(base_load_b, 1e-9)
            ok = (
                drop <= MAX_QUALITY_DROP
                and loss_recal <= MAX_CANDIDATE_LOSS
                and load_recal <= MAX_LOAD_RATIO
            )
            print(
                f"verdict PCA {dim}: similar items at most {drop:.3f} worse (worst figure of "
                f"{len(rows_of)} seeds; limit {MAX_QUALITY_DROP}); planted candidates lost on "
                f"half B (worst seed): {loss:.3f} ({round(loss * n_b)} of {n_b}) at the unchanged "
                f"{threshold:.2f} ({load:.2f}x the false candidates), {loss_recal:.3f} "
                f"({round(loss_recal * n_b)} of {n_b}) at {chosen[dim]:.3f} recalibrated on half "
                f"A (limit {MAX_CANDIDATE_LOSS}; {load_recal:.2f}x the false candidates, limit "
                f"{MAX_LOAD_RATIO}x) -> {'default' if ok else 'stays off'}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
