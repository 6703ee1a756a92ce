"""Evaluation: how good are a model's neighbors, in numbers that can be compared over time.

Given vectors and labels it measures retrieval the way the storefront uses it (every photo
asks for its nearest neighbors):

- ``same_product``: the other photos of the same product (``product_id``), leave-one-out:
  Recall@K, mAP@K, NDCG@K, precision@K;
- ``same_category``: the other photos of the same category: precision@K (and the rest);
- ``to_reference``: photo -> its product's reference (studio, "iconic") image, the gallery
  being the references alone: Recall@K and the rest;
- ``ann``: how much of the exact top-K an approximate index (Annoy) returns.

Metric definitions (binary relevance; a query whose gallery holds nothing relevant is left
out of every metric and counted in ``queries_without_match``):

- Recall@K: share of queries with at least one relevant item among their first K answers
  (the metric-learning literature's Recall@K);
- precision@K: relevant answers among the first K, over K, averaged over queries;
- AP@K: sum over the relevant ranks i <= K of precision@i, over min(K, relevant items);
  mAP@K its mean;
- NDCG@K: sum over relevant ranks i <= K of 1/log2(i+1), over the same sum for an ideal
  ranking of min(K, relevant items) hits;
- ANN recall@K: share of the exact top-K ids that the approximate top-K holds.

``write_report`` writes ``metrics.json`` and PNG plots (Recall@K curves, similarity histograms
of matching vs non-matching pairs); ``record_evaluation`` appends a row to the
``model_evaluations`` Delta table. ``lookalike evaluate`` (``lookalike.model.commands``)
does all of it for a labelled image set or for stored vectors. The metrics themselves are in
``lookalike.model.metrics``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from lookalike.config import IndexSettings, ModelSettings
from lookalike.core.ann import unit_rows
from lookalike.core.storage import Location
from lookalike.model.metrics import (
    ann_recall_within,
    exact_top_k,
    map_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)

log = logging.getLogger(__name__)

DEFAULT_KS = (1, 5, 10)
# The Recall@K curve is drawn up to this K.
CURVE_MAX_K = 20
# Histograms use at most this many non-matching pairs (a seeded sample): n^2 grows fast.
MAX_HISTOGRAM_PAIRS = 2_000_000


# --- one retrieval task ---------------------------------------------------------------------------


@dataclass
class TaskResult:
    """The metrics of one retrieval task, its Recall@K curve and its pair similarities."""

    name: str
    metrics: dict[str, float]
    recall_curve: list[float]
    matching: np.ndarray = field(repr=False)
    non_matching: np.ndarray = field(repr=False)


def retrieval_task(
    name: str,
    query_vectors: np.ndarray,
    query_labels: Sequence,
    gallery_vectors: np.ndarray | None = None,
    gallery_labels: Sequence | None = None,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    seed: int = 0,
) -> TaskResult:
    """Rank the gallery (or, without one, the other queries) for every query and score it.

    A gallery item is relevant when its label equals the query's.
    """
    query_labels = np.asarray(query_labels, dtype=object)
    self_search = gallery_vectors is None
    gallery_labels = query_labels if self_search else np.asarray(gallery_labels, dtype=object)
    if len(query_labels) != len(query_vectors):
        raise ValueError(f"{name}: {len(query_vectors)} vectors but {len(query_labels)} labels")
    if not self_search and len(gallery_labels) != len(gallery_vectors):
        raise ValueError(
            f"{name}: gallery of {len(gallery_vectors)} vectors, {len(gallery_labels)} labels"
        )
    max_k = max(max(ks), CURVE_MAX_K)
    ids, _ = exact_top_k(query_vectors, gallery_vectors, max_k)
    padded = ids < 0
    relevant = (gallery_labels[np.where(padded, 0, ids)] == query_labels[:, None]) & ~padded
    # How many relevant items each query's gallery holds (itself excluded when self-searching).
    codes = pd.Series(gallery_labels).value_counts()
    n_relevant = pd.Series(query_labels).map(codes).fillna(0).to_numpy(dtype=np.int64)
    if self_search:
        n_relevant -= 1
    answerable = n_relevant > 0
    metrics: dict[str, float] = {
        "queries": int(len(query_labels)),
        "queries_without_match": int((~answerable).sum()),
        "gallery": int(len(gallery_labels)),
    }
    if not answerable.any():
        raise ValueError(f"{name}: no query has a relevant item in its gallery")
    rel, n_rel = relevant[answerable], n_relevant[answerable]
    for k in sorted(set(ks)):
        metrics[f"recall@{k}"] = recall_at_k(rel, k)
        metrics[f"precision@{k}"] = precision_at_k(rel, k)
        metrics[f"map@{k}"] = map_at_k(rel, n_rel, k)
        metrics[f"ndcg@{k}"] = ndcg_at_k(rel, n_rel, k)
    curve = [recall_at_k(rel, k) for k in range(1, CURVE_MAX_K + 1)]
    matching, non_matching = _pair_similarities(
        query_vectors, query_labels, gallery_vectors, gallery_labels, seed
    )
    return TaskResult(name, metrics, curve, matching, non_matching)


def _pair_similarities(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray | None,
    gallery_labels: np.ndarray,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of all matching pairs and of (a seeded sample of) the others."""
    queries = unit_rows(queries)
    self_search = gallery is None
    gallery = queries if self_search else unit_rows(gallery)
    rng = np.random.default_rng(seed)
    matching, non_matching = [], []
    # Every block keeps the same share of its non-matching pairs, so that the sample holds
    # about MAX_HISTOGRAM_PAIRS of them in all.
    q_counts = pd.Series(query_labels).value_counts()
    if self_search:
        total = len(queries) * (len(queries) - 1) // 2 - int((q_counts * (q_counts - 1) // 2).sum())
    else:
        g_counts = pd.Series(gallery_labels).value_counts()
        n_matching = int(q_counts.mul(g_counts, fill_value=0).sum())
        total = len(queries) * len(gallery) - n_matching
    share = min(1.0, MAX_HISTOGRAM_PAIRS / max(total, 1))
    for start in range(0, len(queries), 512):
        sims = queries[start : start + 512] @ gallery.T
        same = query_labels[start : start + 512, None] == gallery_labels[None, :]
        valid = np.ones_like(same)
        if self_search:
            # Each unordered pair once, never a photo with itself.
            valid = np.arange(len(gallery))[None, :] > np.arange(start, start + len(sims))[:, None]
        matching.append(sims[same & valid])
        others = sims[~same & valid]
        if share < 1.0:
            others = rng.choice(others, round(share * len(others)), replace=False)
        non_matching.append(others)
    return np.concatenate(matching), np.concatenate(non_matching)


# --- a whole evaluation ---------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Every task's metrics for one model on one labelled set."""

    model_id: str
    dataset: str
    split: str
    tasks: dict[str, TaskResult]
    ann: dict[str, float] = field(default_factory=dict)
    evaluated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def metric(self, name: str) -> float | None:
        """``task/metric`` (``to_reference/recall@1``) or an ANN metric (``ann/recall@10``)."""
        task, _, metric = name.partition("/")
        if task == "ann":
            return self.ann.get(metric)
        result = self.tasks.get(task)
        return None if result is None else result.metrics.get(metric)

    def to_json(self) -> dict:
        return {
            "model_id": self.model_id,
            "dataset": self.dataset,
            "split": self.split,
            "evaluated_at": self.evaluated_at.isoformat(),
            "metrics": {name: task.metrics for name, task in self.tasks.items()},
            "ann": self.ann,
            "recall_curves": {name: task.recall_curve for name, task in self.tasks.items()},
        }


def evaluate_vectors(
    vectors: np.ndarray,
    labels: pd.DataFrame,
    *,
    model_id: str,
    dataset: str,
    split: str,
    ks: Sequence[int] = DEFAULT_KS,
    index: IndexSettings | None = None,
) -> Evaluation:
    """Evaluate vectors of a labelled set (rows of ``labels``: product_id, category, is_reference).

    Tasks run where their labels exist: ``same_product`` and ``same_category`` over the
    non-reference rows, ``to_reference`` from those photos to the reference rows.
    With ``index`` (the index stage's settings), ``ann/recall@K`` (K the largest of ``ks``)
    compares Annoy's answer with exact search, within each category like the neighbors stage.
    """
    if len(vectors) != len(labels):
        raise ValueError(f"{len(vectors)} vectors but {len(labels)} labelled rows")
    labels = labels.reset_index(drop=True)
    is_reference = labels.get("is_reference", pd.Series(False, index=labels.index)).astype(bool)
    photos = labels[~is_reference]
    photo_vectors = vectors[photos.index.to_numpy()]
    tasks: dict[str, TaskResult] = {}
    for name, column in (("same_product", "product_id"), ("same_category", "category")):
        if column not in photos or photos[column].isna().all():
            continue
        has = photos[column].notna().to_numpy()
        try:
            tasks[name] = retrieval_task(
                name, photo_vectors[has], photos[column][has].to_numpy(), ks=ks
            )
        except ValueError as err:
            log.warning("%s skipped: %s", name, err)
    references = (
        labels[is_reference & labels["product_id"].notna()]
        if "product_id" in labels
        else labels[:0]
    )
    if len(references) and photos["product_id"].notna().any():
        has = photos["product_id"].notna().to_numpy()
        tasks["to_reference"] = retrieval_task(
            "to_reference",
            photo_vectors[has],
            photos["product_id"][has].to_numpy(),
            vectors[references.index.to_numpy()],
            references["product_id"].to_numpy(),
            ks=[k for k in ks if k <= len(references)] or [1],
        )
    if not tasks:
        raise ValueError("nothing to evaluate: no product_id, category or reference labels")
    ann: dict[str, float] = {}
    if index is not None:
        k = max(ks)
        groups = photos["category"].to_numpy() if "category" in photos else None
        ann[f"recall@{k}"] = ann_recall_within(
            photo_vectors,
            k,
            groups,
            n_trees=index.n_trees,
            search_k=index.search_k,
            seed=index.seed,
        )
    return Evaluation(model_id, dataset, split, tasks, ann)


# --- outputs --------------------------------------------------------------------------------------


def write_report(evaluations: Evaluation | Sequence[Evaluation], folder: str | Path) -> list[Path]:
    """``metrics.json``, ``recall_at_k.png`` and ``similarity_histograms.png`` in ``folder``.

    Several evaluations (models on the same set) share each plot, so they read side by side.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluations = [evaluations] if isinstance(evaluations, Evaluation) else list(evaluations)
    if not evaluations:
        raise ValueError("no evaluation to report")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metrics_path = folder / "metrics.json"
    metrics_path.write_text(
        json.dumps({"evaluations": [e.to_json() for e in evaluations]}, indent=2) + "\n"
    )

    task_names = list(dict.fromkeys(name for e in evaluations for name in e.tasks))
    fig, axes = plt.subplots(
        1, len(task_names), figsize=(4.5 * len(task_names), 3.8), squeeze=False
    )
    for ax, task in zip(axes[0], task_names, strict=True):
        for evaluation in evaluations:
            if task in evaluation.tasks:
                curve = evaluation.tasks[task].recall_curve
                ax.plot(
                    range(1, len(curve) + 1), curve, marker=".", label=_short(evaluation.model_id)
                )
        ax.set(title=task, xlabel="K", ylabel="Recall@K", ylim=(0, 1.02))
        ax.set_xticks([1, *range(5, CURVE_MAX_K + 1, 5)])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{evaluations[0].dataset} ({evaluations[0].split})")
    fig.tight_layout()
    curves_path = folder / "recall_at_k.png"
    fig.savefig(curves_path, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(
        len(evaluations),
        len(task_names),
        figsize=(4.5 * len(task_names), 3.2 * len(evaluations)),
        squeeze=False,
    )
    lowest = min(
        (float(v.min()) for e in evaluations for t in e.tasks.values()
         for v in (t.matching, t.non_matching) if len(v)),
        default=0.0,
    )  # fmt: skip
    bins = np.linspace(min(np.floor(lowest * 10) / 10, 0.0), 1.0, 61)
    for row, evaluation in zip(axes, evaluations, strict=True):
        for ax, task in zip(row, task_names, strict=True):
            result = evaluation.tasks.get(task)
            if result is None:
                ax.axis("off")
                continue
            for values, label in (
                (result.non_matching, "non-matching"),
                (result.matching, "matching"),
            ):
                if len(values):
                    ax.hist(
                        values,
                        bins=bins,
                        density=True,
                        alpha=0.55,
                        label=f"{label} ({len(values):,})",
                    )
            ax.set_title(f"{task}\n{_short(evaluation.model_id)}", fontsize=9)
            ax.set_xlabel("cosine similarity")
            ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    histograms_path = folder / "similarity_histograms.png"
    fig.savefig(histograms_path, dpi=110)
    plt.close(fig)
    return [metrics_path, curves_path, histograms_path]


def _short(model_id: str) -> str:
    return model_id if len(model_id) <= 48 else model_id[:45] + "..."


# The model_evaluations table: fixed columns for the headline metrics (comparable across rows
# with plain SQL), every metric in metrics_json.
TABLE_METRICS = (
    ("same_product", "recall@1"),
    ("same_product", "recall@5"),
    ("same_product", "recall@10"),
    ("same_product", "map@10"),
    ("same_product", "ndcg@10"),
    ("same_category", "precision@10"),
    ("to_reference", "recall@1"),
    ("to_reference", "recall@5"),
    ("ann", "recall@10"),
)


def _column(task: str, metric: str) -> str:
    return f"{task}_{metric.replace('@', '_at_')}"


MODEL_EVALUATIONS_SCHEMA = pa.schema(
    [
        pa.field("evaluated_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("run_id", pa.string()),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("queries", pa.int64()),
        *[pa.field(_column(t, m), pa.float64()) for t, m in TABLE_METRICS],
        pa.field("metrics_json", pa.string(), nullable=False),
    ]
)


def evaluation_row(evaluation: Evaluation, run_id: str | None = None) -> pa.Table:
    first = next(iter(evaluation.tasks.values()))
    values: dict[str, list] = {
        "evaluated_at": [evaluation.evaluated_at],
        "run_id": [run_id],
        "model_id": [evaluation.model_id],
        "dataset": [evaluation.dataset],
        "split": [evaluation.split],
        "queries": [int(first.metrics["queries"])],
        **{_column(t, m): [evaluation.metric(f"{t}/{m}")] for t, m in TABLE_METRICS},
        "metrics_json": [json.dumps(evaluation.to_json(), sort_keys=True)],
    }
    return pa.Table.from_pydict(values, schema=MODEL_EVALUATIONS_SCHEMA)


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def record_evaluation(
    table: str | Path | Location, evaluation: Evaluation, run_id: str | None = None
) -> int:
    """Add the evaluation's row to the ``model_evaluations`` Delta table; returns its version.

    Without a run id the row is appended (a history of manual evaluations). With one, a rerun
    of the same run replaces its row for this model, dataset and split instead of adding a
    second one (the nightly job's idempotency).
    """
    from lookalike import tables

    row = evaluation_row(evaluation, run_id)
    if run_id is not None and tables.is_table(table):
        predicate = " AND ".join(
            f"{column} = {_sql_string(value)}"
            for column, value in (
                ("run_id", run_id),
                ("model_id", evaluation.model_id),
                ("dataset", evaluation.dataset),
                ("split", evaluation.split),
            )
        )
        return tables.write_table(table, row, replace_where=predicate)
    Location.of(table).parent.mkdir()
    return tables.append(table, row)


def format_evaluation(evaluation: Evaluation, ks: Sequence[int] = DEFAULT_KS) -> str:
    """A small text table of the headline metrics, for the terminal."""
    lines = [f"{evaluation.model_id}  ({evaluation.dataset}, {evaluation.split})"]
    for name, task in evaluation.tasks.items():
        shown = [
            f"recall@{k} {task.metrics[f'recall@{k}']:.3f}"
            for k in ks
            if f"recall@{k}" in task.metrics
        ]
        k = max(k for k in ks if f"map@{k}" in task.metrics)
        shown += [
            f"map@{k} {task.metrics[f'map@{k}']:.3f}",
            f"ndcg@{k} {task.metrics[f'ndcg@{k}']:.3f}",
            f"precision@{k} {task.metrics[f'precision@{k}']:.3f}",
        ]
        lines.append(f"  {name:<14} n={task.metrics['queries']:<6} " + "  ".join(shown))
    for name, value in evaluation.ann.items():
        lines.append(f"  {'ann':<14} {name} {value:.3f}")
    return "\n".join(lines)


# --- evaluating a model or stored vectors ---------------------------------------------------------


def evaluate_model(
    model: ModelSettings,
    frame: pd.DataFrame,
    *,
    dataset: str,
    split: str,
    ks: Sequence[int] = DEFAULT_KS,
    index: IndexSettings | None = None,
) -> Evaluation:
    """Embed a labelled set with a configured model (the embedding stage's code) and evaluate."""
    from lookalike.core.backbones import load_embedder
    from lookalike.model.labelled import embed_labelled

    embedder = load_embedder(model)
    vectors, kept = embed_labelled(frame, embedder)
    return evaluate_vectors(
        vectors, kept, model_id=embedder.model_id, dataset=dataset, split=split, ks=ks, index=index
    )


def stored_vectors(
    table: str | Path, labels: pd.DataFrame | None = None, model_id: str | None = None
) -> tuple[np.ndarray, pd.DataFrame, str]:
    """(vectors, labelled rows, model id) of an ``embeddings`` Delta table.

    The category comes from the table; ``labels`` (sku_id, product_id) adds product groups.
    A table holding several model ids needs ``model_id``: vectors of different models are
    never compared.
    """
    from lookalike.tables import read_table

    stored = read_table(table, columns=["sku_id", "category", "model_id", "embedding"]).to_pandas()
    ids = sorted(stored["model_id"].unique())
    if model_id is None:
        if len(ids) != 1:
            raise ValueError(f"{table} holds vectors of {len(ids)} models {ids}: name one")
        model_id = ids[0]
    stored = stored[stored["model_id"] == model_id].reset_index(drop=True)
    if stored.empty:
        raise ValueError(f"{table} holds no vector of model {model_id} (it has {ids})")
    if labels is not None:
        missing = {"sku_id", "product_id"} - set(labels.columns)
        if missing:
            raise ValueError(
                f"labels need columns sku_id and product_id; missing {sorted(missing)}"
            )
        stored = stored.merge(labels[["sku_id", "product_id"]].astype(str), on="sku_id", how="left")
    else:
        stored["product_id"] = None
    rows = stored[["category", "product_id"]].assign(is_reference=False)
    return np.stack(stored["embedding"].to_list()).astype(np.float32), rows, model_id
