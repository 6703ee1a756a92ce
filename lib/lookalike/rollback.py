"""Rollback: put published tables back to an earlier version, as a new Delta commit.

The storefront reads the current version of each table; restoring writes a new version whose
contents equal the chosen earlier one (history is kept, so a rollback can itself be undone).
A whole run restored (``--to-run`` without ``--table``) also marks the runs published after it
``rolled_back`` in the runs record, so that ``lookalike serve``, which serves the latest
published run at the versions that run recorded, goes back to it too; the next nightly run
publishes as usual.

    lookalike rollback --to-run 2026-11-22                 # every table as that run published it
    lookalike rollback --table similar_items --to-version 7
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from lookalike import tables
from lookalike.core.storage import Location

log = logging.getLogger(__name__)

# Tables a run replaces whole; the per-run tables (rejects, index_manifest, runs) keep every
# run's rows and are not rolled back.
RESTORABLE = (
    "catalog",
    "embeddings",
    "similar_items",
    "style_groups",
    "duplicate_clusters",
    "category_mismatches",
    "shared_photos",
)


class RollbackError(ValueError):
    """The requested version or run cannot be restored; the message says why."""


def restore_table(path: Path | Location, version: int) -> int:
    """Restore one table to ``version``; returns the new (current) version."""
    if not tables.is_table(path):
        raise RollbackError(f"{path} is not a Delta table")
    current = tables.version(path)
    if not 0 <= version <= current:
        raise RollbackError(f"{path.name}: no version {version} (versions 0..{current})")
    new = tables.restore(path, version)
    log.info("restored %s to version %d (now version %d)", path.name, version, new)
    return new


def versions_of_run(tables_dir: Path | Location, run_id: str) -> dict[str, int]:
    """The version each table was published at by ``run_id`` (from the runs record)."""
    runs_path = tables_dir / "runs"
    if not tables.is_table(runs_path):
        raise RollbackError(f"no runs table at {runs_path}: nothing was published yet")
    runs = tables.read_table(runs_path)
    rows = runs.filter(pc.equal(runs["run_id"], run_id)).to_pylist()
    if not rows:
        known = ", ".join(sorted(runs["run_id"].to_pylist())[-5:])
        raise RollbackError(f"no run {run_id} in the runs record (latest: {known})")
    row = rows[0]
    if row["status"] != "published" or not row.get("table_versions"):
        raise RollbackError(f"run {run_id} did not publish (status {row['status']})")
    return json.loads(row["table_versions"])


ROLLED_BACK = "rolled_back"


def rollback_to_run(
    tables_dir: Path | Location,
    run_id: str,
    names: tuple[str, ...] = RESTORABLE,
    *,
    retire_later_runs: bool | None = None,
) -> dict[str, int]:
    """Restore ``names`` to the versions ``run_id`` published; returns their new versions.

    ``retire_later_runs`` (default: when every restorable table is restored) marks the runs
    published after ``run_id`` as rolled back.
    """
    versions = versions_of_run(tables_dir, run_id)
    missing = [n for n in names if n not in versions]
    if missing == ["shared_photos"]:
        # Runs published before the table existed: the rest of that run is still restorable,
        # and its shared_photos (none were set apart then) has no version to go back to.
        log.warning("run %s predates the shared_photos table: left as it is", run_id)
        names = tuple(n for n in names if n != "shared_photos")
    elif missing:
        raise RollbackError(f"run {run_id} did not publish {missing}")
    restored = {name: restore_table(tables_dir / name, versions[name]) for name in names}
    if retire_later_runs if retire_later_runs is not None else names == RESTORABLE:
        retire_runs_after(tables_dir, run_id)
    return restored


def retire_runs_after(tables_dir: Path | Location, run_id: str) -> list[str]:
    """Mark the runs published after ``run_id`` as rolled back; returns their ids."""
    runs_path = tables_dir / "runs"
    runs = tables.read_table(runs_path)
    target = runs.filter(pc.equal(runs["run_id"], run_id)).to_pylist()[0]
    later = [
        row
        for row in runs.to_pylist()
        if row["status"] == "published" and row["finished_at"] > target["finished_at"]
    ]
    for row in later:
        row["status"] = ROLLED_BACK
        tables.write_table(
            runs_path,
            pa.Table.from_pylist([row], schema=runs.schema),
            replace_where=f"run_id = '{row['run_id']}'",
        )
        log.info("run %s marked %s: %s is served again", row["run_id"], ROLLED_BACK, run_id)
    return [row["run_id"] for row in later]
