"""Merchandisers' decisions: the ``duplicate_reviews`` and ``mismatch_reviews`` Delta tables.

Merchandisers (or their tools: ``lookalike review``, the review app) append to them; the
nightly job only reads them, so a decision survives every later run and every rerun.

A ``duplicate_reviews`` row says that two listings are ``not_duplicate`` (never propose this
pair again) or ``confirmed`` (keep them in one cluster whatever tonight's evidence says), or
names one listing twice as ``canonical`` (the listing its cluster shows first); the latest
decision wins.

    lookalike review SKU-000123 SKU-000456 not_duplicate --reviewer ann

A ``mismatch_reviews`` row answers a category-mismatch flag: ``wrong_category`` (agreed; the
listing stays flagged until the catalog changes its category) or ``category_ok`` (a false
alarm; not flagged again while it keeps the category it had when decided). The category and
the suggestion of that night are kept with the decision.

Each function appends one row in one Delta commit and returns the table's new version.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from lookalike import tables
from lookalike.core.storage import Location
from lookalike.stages.duplicates import ALL_DECISIONS, CANONICAL
from lookalike.stages.mismatches import MISMATCH_DECISIONS


def record_review(
    table: Path | Location,
    sku_id_a: str,
    sku_id_b: str,
    decision: str,
    reviewer: str | None = None,
    decided_at: datetime | None = None,
) -> int:
    """Append one decision; the pair is stored in sku_id order.

    A pair decision needs two different listings; ``canonical`` needs the same one twice (the
    table has one shape for both, and a canonical row that named a second listing would say
    nothing about it).
    """
    if decision not in ALL_DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(ALL_DECISIONS)}, got {decision!r}")
    a, b = (s.strip() for s in (sku_id_a, sku_id_b))
    if decision == CANONICAL and (not a or a != b):
        raise ValueError(
            f"a canonical decision names one sku_id twice, got {sku_id_a!r}, {sku_id_b!r}"
        )
    if decision != CANONICAL and (not a or not b or a == b):
        raise ValueError(f"a review needs two different sku_ids, got {sku_id_a!r}, {sku_id_b!r}")
    a, b = sorted((a, b))
    row = {
        "sku_id_a": [a],
        "sku_id_b": [b],
        "decision": [decision],
        "reviewer": [reviewer],
        "decided_at": [decided_at or datetime.now(UTC)],
    }
    return tables.append(table, pa.Table.from_pydict(row, schema=tables.REVIEWS_SCHEMA))


def record_canonical(
    table: Path | Location,
    sku_id: str,
    reviewer: str | None = None,
    decided_at: datetime | None = None,
) -> int:
    """Make ``sku_id`` its cluster's canonical listing from the next run on."""
    return record_review(table, sku_id, sku_id, CANONICAL, reviewer, decided_at)


def record_mismatch_review(
    table: Path | Location,
    sku_id: str,
    category: str,
    suggested_category: str | None,
    decision: str,
    reviewer: str | None = None,
    decided_at: datetime | None = None,
) -> int:
    """Append one decision on a flagged listing, with the category it was flagged in.

    The category is what makes ``category_ok`` expire: once the catalog moves the listing,
    the old answer is about another question.
    """
    if decision not in MISMATCH_DECISIONS:
        raise ValueError(
            f"decision must be one of {', '.join(MISMATCH_DECISIONS)}, got {decision!r}"
        )
    sku, listed_in = (s.strip() if isinstance(s, str) else "" for s in (sku_id, category))
    if not sku:
        raise ValueError(f"a mismatch review needs a sku_id, got {sku_id!r}")
    if not listed_in:
        raise ValueError(f"a mismatch review needs the listing's category, got {category!r}")
    row = {
        "sku_id": [sku],
        "category": [listed_in],
        "suggested_category": [suggested_category.strip() if suggested_category else None],
        "decision": [decision],
        "reviewer": [reviewer],
        "decided_at": [decided_at or datetime.now(UTC)],
    }
    return tables.append(table, pa.Table.from_pydict(row, schema=tables.MISMATCH_REVIEWS_SCHEMA))
