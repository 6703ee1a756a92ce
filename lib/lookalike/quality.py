"""Quality gates: measured before publishing; one failing gate publishes nothing.

Each gate is one number from this run's outputs (compared with the previous published run
where that is the point), a threshold from the ``gates`` section of the configuration, and a
verdict. All of them go into the ``runs`` record, passing or not, so the on-call engineer sees
the measured values next to the limits.

- ``full_topk_share``: active embedded SKUs with all K similar items / active embedded SKUs.
- ``reject_rate``: rejected catalog rows (ingest + embed) / catalog rows read.
- ``top1_score_spread``: standard deviation of each SKU's best score; a model that returns
  (nearly) constant vectors gives every SKU a best score of 1.0 and a spread of 0.
- ``top1_score_shift``: |median best score - the previous published run's|.
- ``recall_at_k``: recall@K of the neighbors stage's Annoy search against exact answers, on
  queries it sampled per shard (``neighbors.recall_queries``), all shards pooled.
- ``topk_churn``: mean share of a SKU's similar items that were not among them in the previous
  published run (SKUs present in both).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lookalike.config import GateSettings
from lookalike.storage import Location


class GateFailed(RuntimeError):
    """A quality gate failed: the run was not published."""

    def __init__(self, results: list[GateResult]) -> None:
        failed = [r for r in results if not r.passed]
        super().__init__(
            "quality gate(s) failed, nothing published: "
            + "; ".join(f"{r.gate} = {r.value:.4g} (limit {r.limit_text})" for r in failed)
        )
        self.results = results


@dataclass(frozen=True)
class GateResult:
    gate: str
    value: float
    threshold: float
    kind: str  # "min" or "max"
    passed: bool

    @property
    def limit_text(self) -> str:
        return f"{'>=' if self.kind == 'min' else '<='} {self.threshold:g}"


def _gate(gate: str, value: float | None, threshold: float, kind: str) -> GateResult | None:
    if value is None:  # nothing to compare with (first run, no active SKU)
        return None
    passed = value >= threshold if kind == "min" else value <= threshold
    return GateResult(gate, float(value), float(threshold), kind, bool(passed))


def published_similar_items(spark: SparkSession, table: Path | Location) -> DataFrame | None:
    """The storefront's current similar_items (the previous published run), if any."""
    if not DeltaTable.is_deltatable(str(table)):
        return None
    files = DeltaTable(str(table)).file_uris()
    return spark.read.parquet(*files) if files else None


def evaluate_gates(
    settings: GateSettings,
    *,
    k: int,
    similar_df: DataFrame,
    embeddings_df: DataFrame,
    previous_df: DataFrame | None,
    rows_read: int,
    rows_rejected: int,
    recall: float | None = None,
) -> list[GateResult]:
    """Every configured gate's measured value and verdict."""
    per_sku = similar_df.groupBy("sku_id").agg(
        F.count(F.lit(1)).alias("n"), F.max("score").alias("top1")
    )
    active = embeddings_df.filter("is_active").select("sku_id")
    coverage = (
        active.join(per_sku, "sku_id", "left")
        .agg(
            F.count(F.lit(1)).alias("active"),
            F.count_if(F.col("n") >= k).alias("full"),
            F.stddev_pop("top1").alias("spread"),
            F.percentile_approx("top1", 0.5).alias("median"),
        )
        .first()
    )
    results = [
        _gate(
            "full_topk_share",
            coverage["full"] / coverage["active"] if coverage["active"] else None,
            settings.min_full_topk_share,
            "min",
        ),
        _gate(
            "reject_rate",
            rows_rejected / rows_read if rows_read else None,
            settings.max_reject_rate,
            "max",
        ),
        _gate("top1_score_spread", coverage["spread"], settings.min_top1_score_spread, "min"),
        # Measured by the neighbors stage (sampled queries against exact answers); absent
        # when it was not measured.
        _gate("recall_at_k", recall, settings.min_recall, "min"),
    ]
    if previous_df is not None:
        before = previous_df.groupBy("sku_id").agg(F.max("score").alias("top1"))
        previous_median = before.agg(F.percentile_approx("top1", 0.5)).first()[0]
        shift = (
            None
            if previous_median is None or coverage["median"] is None
            else abs(coverage["median"] - previous_median)
        )
        results.append(_gate("top1_score_shift", shift, settings.max_top1_score_shift, "max"))
        kept = (
            similar_df.select("sku_id", "similar_sku_id")
            .join(previous_df.select("sku_id", "similar_sku_id"), ["sku_id", "similar_sku_id"])
            .groupBy("sku_id")
            .count()
        )
        churn = (
            similar_df.groupBy("sku_id")
            .agg(F.count(F.lit(1)).alias("n"))
            .join(previous_df.select("sku_id").distinct(), "sku_id")
            .join(kept, "sku_id", "left")
            .agg(F.avg(1 - F.coalesce(F.col("count"), F.lit(0)) / F.col("n")))
            .first()[0]
        )
        results.append(_gate("topk_churn", churn, settings.max_topk_churn, "max"))
    return [r for r in results if r is not None]


def results_json(results: list[GateResult]) -> str:
    return json.dumps({r.gate: asdict(r) for r in results}, sort_keys=True)
