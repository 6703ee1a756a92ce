"""Merchandisers' decisions on duplicate pairs: the ``duplicate_reviews`` Delta table.

Merchandisers (or their tools) append to it; the nightly job only reads it, so a decision
survives every later run and every rerun. Each row says that two listings are
``not_duplicate`` (never propose this pair again) or ``confirmed`` (keep them in one cluster
whatever tonight's evidence says); the latest decision on a pair wins.

    lookalike review SKU-000123 SKU-000456 not_duplicate --reviewer ann
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from lookalike import tables
from lookalike.core.storage import Location
from lookalike.stages.duplicates import DECISIONS


def record_review(
    table: Path | Location,
    sku_id_a: str,
    sku_id_b: str,
    decision: str,
    reviewer: str | None = None,
    decided_at: datetime | None = None,
) -> None:
    """Append one decision (one Delta commit); the pair is stored in sku_id order."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    a, b = (s.strip() for s in (sku_id_a, sku_id_b))
    if not a or not b or a == b:
        raise ValueError(f"a review needs two different sku_ids, got {sku_id_a!r}, {sku_id_b!r}")
    a, b = sorted((a, b))
    row = {
        "sku_id_a": [a],
        "sku_id_b": [b],
        "decision": [decision],
        "reviewer": [reviewer],
        "decided_at": [decided_at or datetime.now(UTC)],
    }
    tables.append(table, pa.Table.from_pydict(row, schema=tables.REVIEWS_SCHEMA))
