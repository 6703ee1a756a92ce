"""scripts/compare_tables.py: what a refactor's before/after check relies on (real Delta tables
written with delta-rs)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_tables.py"


def _root(folder: Path, *, score: float, hour: int, neighbors: list[str]) -> Path:
    """An output root with a similar_items table and a runs record; image paths under it."""
    write_deltalake(
        str(folder / "tables" / "similar_items"),
        pa.table(
            {
                "sku_id": ["b", "a"],
                "score": pa.array([0.5, score], pa.float32()),
                "image_uri": [str(folder / "img" / "b.jpg"), str(folder / "img" / "a.jpg")],
                "neighbors": [neighbors, ["x"]],
                "vector": [[0.1, 0.2], [0.3, 0.4]],
                "published_at": [dt.datetime(2026, 1, 1, hour)] * 2,
            }
        ),
    )
    write_deltalake(str(folder / "tables" / "runs"), pa.table({"seconds": [float(hour)]}))
    return folder


def _compare(a: Path, b: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True, check=False
    )


def test_equal_rows_in_another_order_root_and_time_are_identical(tmp_path):
    a = _root(tmp_path / "a", score=0.9, hour=1, neighbors=["y", "z"])
    b = _root(tmp_path / "b", score=0.9 + 1e-7, hour=5, neighbors=["y", "z"])
    result = _compare(a, b)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "similar_items: 2 rows identical" in result.stdout
    assert "runs: 1 vs 1 records" in result.stdout


def test_a_changed_score_or_list_is_named(tmp_path):
    a = _root(tmp_path / "a", score=0.9, hour=1, neighbors=["y", "z"])
    b = _root(tmp_path / "b", score=0.91, hour=1, neighbors=["y", "z"])
    c = _root(tmp_path / "c", score=0.9, hour=1, neighbors=["z", "y"])
    for other, column in [(b, "'score'"), (c, "'neighbors'")]:
        result = _compare(a, other)
        assert result.returncode == 1
        assert f"similar_items: 2 rows DIFFER: 1 rows differ in {column}" in result.stdout
