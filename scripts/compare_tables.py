"""Compare the published tables of two output roots, row by row.

For a change that must not change behaviour (a refactor): run the nightly job before and after
on the same catalog and run date, each into its own output root, then

    .venv/bin/python scripts/compare_tables.py ROOT_BEFORE ROOT_AFTER

Every Delta table under ``tables/`` is read at its current version. What differs between two
honest runs is left out: timestamp columns (when a row was written) and, in text, each root's
own path (the bundled catalog and its images live under the output root), and index files'
checksums (they follow the vectors' last bits, which torch's CPU threads do not hold from run to
run: two runs of one commit differ by up to 1.4e-7 in a vector component). The ``runs`` table
is the record of a run (its timings), so only its row count is compared. Floats compare within
``--tolerance``. Prints one line per table; exits 1 when any table differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from deltalake import DeltaTable

RECORDS_ONLY = {"runs"}
VOLATILE = {"checksum"}


def load(root: Path, name: str) -> pd.DataFrame:
    """A table's current rows, without timestamps, the root's path made ``<root>``."""
    table = DeltaTable(str(root / "tables" / name)).to_pyarrow_table()
    keep = [
        f.name for f in table.schema if not pa.types.is_timestamp(f.type) and f.name not in VOLATILE
    ]
    frame = table.select(keep).to_pandas()
    prefixes = [str(root.resolve()), str(root)]
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].map(lambda v: _strip(v, prefixes))
    return frame


def _strip(value: object, prefixes: list[str]) -> object:
    if isinstance(value, str):
        for prefix in prefixes:
            value = value.replace(prefix, "<root>")
        return value
    if isinstance(value, np.ndarray):
        return tuple(value.tolist())
    if isinstance(value, list):
        return tuple(value)
    return value


def _sort_key(frame: pd.DataFrame) -> list[str]:
    """Columns that order the rows: every column of plain scalars (no floats, no arrays)."""
    return [
        c
        for c in frame.columns
        if not pd.api.types.is_float_dtype(frame[c])
        and not frame[c].map(lambda v: isinstance(v, tuple | bytes)).any()
    ]


def _same_list(x: tuple | None, y: tuple | None, tolerance: float) -> bool:
    """Lists of numbers within the tolerance, other lists equal."""
    if x is None or y is None or len(x) != len(y):
        return x == y
    if all(isinstance(v, float) for v in x + y):
        return bool(np.allclose(np.asarray(x), np.asarray(y), atol=tolerance))
    return x == y


def compare(before: pd.DataFrame, after: pd.DataFrame, tolerance: float) -> str | None:
    """None when the tables hold the same rows; else what differs first."""
    if list(before.columns) != list(after.columns):
        return f"columns differ: {list(before.columns)} vs {list(after.columns)}"
    if len(before) != len(after):
        return f"{len(before)} rows vs {len(after)}"
    key = _sort_key(before)
    before = before.sort_values(key, kind="mergesort").reset_index(drop=True)
    after = after.sort_values(key, kind="mergesort").reset_index(drop=True)
    for column in before.columns:
        a, b = before[column], after[column]
        if pd.api.types.is_float_dtype(a):
            close = np.isclose(a.to_numpy(float), b.to_numpy(float), atol=tolerance, equal_nan=True)
        elif a.map(lambda v: isinstance(v, tuple)).any():
            close = np.array([_same_list(x, y, tolerance) for x, y in zip(a, b, strict=True)])
        else:
            close = ((a == b) | (a.isna() & b.isna())).to_numpy()
        if not close.all():
            row = int(np.flatnonzero(~close)[0])
            return (
                f"{int((~close).sum())} rows differ in {column!r}, first: "
                f"{before.iloc[row].to_dict()} vs {after.iloc[row].to_dict()}"
            )
    return None


def table_names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "tables").iterdir() if (p / "_delta_log").is_dir())


def table_report(before: Path, after: Path, tolerance: float) -> dict[str, tuple[str, str | None]]:
    """Each table of two output roots: (its size, what differs or None)."""
    names = {root: table_names(root) for root in (before, after)}
    if names[before] != names[after]:
        raise ValueError(f"the tables differ: {names[before]} vs {names[after]}")
    report = {}
    for name in names[before]:
        a, b = load(before, name), load(after, name)
        if name in RECORDS_ONLY:
            same = len(a) == len(b)
            report[name] = (f"{len(a)} vs {len(b)} records", None if same else "record counts")
        else:
            report[name] = (f"{len(a)} rows", compare(a, b, tolerance))
    return report


def compare_roots(before: Path, after: Path, tolerance: float = 1e-5) -> dict[str, str]:
    """What differs between the tables of two output roots, by table; empty when nothing."""
    report = table_report(before, after, tolerance)
    return {name: difference for name, (_, difference) in report.items() if difference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args()
    try:
        report = table_report(args.before, args.after, args.tolerance)
    except ValueError as err:
        sys.exit(str(err))
    for name, (size, difference) in report.items():
        if name in RECORDS_ONLY:
            print(f"{name}: {size}" + ("" if difference is None else "  DIFFER"))
        else:
            print(
                f"{name}: {size} "
                + ("identical" if difference is None else f"DIFFER: {difference}")
            )
    sys.exit(1 if any(difference for _, difference in report.values()) else 0)


if __name__ == "__main__":
    main()
