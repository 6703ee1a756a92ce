"""A nightly run killed with SIGKILL mid-way never leaves a published table half-written.

Real processes: `python -m lookalike nightly` in its own process group, stopped at a named
point (lookalike.faults) and killed with SIGKILL, like a lost node. A reader polls the
published tables the whole time. Then the same date is rerun without any clean-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable

from demo.catalog import generate_demo_catalog
from lookalike.tables import STAGING

pytestmark = pytest.mark.slow

STOREFRONT = ("similar_items", "duplicate_clusters", "embeddings", "catalog")


def _nightly(conf: Path, run_date: str, catalog: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lookalike",
            "nightly",
            "--conf",
            str(conf),
            "--run-date",
            run_date,
            "--catalog",
            str(catalog),
        ],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the JVM and Python workers die too
    )


def _snapshot(tables: Path) -> dict[str, tuple[int, list]]:
    """(version, sorted rows) of each storefront table."""
    out = {}
    for name in STOREFRONT:
        table = DeltaTable(str(tables / name))
        rows = table.to_pyarrow_table().drop_columns(
            [c for c in ("embedding", "embedded_at") if c in table.schema().to_arrow().names]
        )
        out[name] = (table.version(), sorted(map(str, rows.to_pylist())))
    return out


def _kill_at(conf, run_date, catalog, point: str, tmp: Path) -> None:
    ready = tmp / f"ready-{point}"
    process = _nightly(
        conf, run_date, catalog, LOOKALIKE_FAULT_POINT=point, LOOKALIKE_FAULT_READY=str(ready)
    )
    deadline = time.monotonic() + 600
    while not ready.exists():
        assert process.poll() is None, f"the run ended before {point}:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, f"never reached {point}"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


class _Reader(threading.Thread):
    """Reads every storefront table again and again, keeping the row counts it saw."""

    def __init__(self, tables: Path) -> None:
        super().__init__(daemon=True)
        self.tables = tables
        self.errors: list[str] = []
        self.seen: dict[str, set[int]] = {name: set() for name in STOREFRONT}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for name in STOREFRONT:
                try:
                    dataset = DeltaTable(str(self.tables / name)).to_pyarrow_dataset()
                    self.seen[name].add(dataset.count_rows())
                except Exception as err:  # a torn table would show up here
                    self.errors.append(f"{name}: {type(err).__name__}: {err}")
            # Often enough to read each table many times per commit window, seldom enough
            # not to take a core from the runs it watches (2 cores: the JVM, the workers).
            time.sleep(0.25)


def _rows(tables: Path, name: str) -> int:
    return DeltaTable(str(tables / name)).to_pyarrow_dataset().count_rows()


def test_sigkill_during_index_build_and_publish_then_rerun(tmp_path: Path, pretrained_weights):
    demo = generate_demo_catalog(tmp_path / "demo", n_products=24)
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        "spark:\n  master: local[2]\n  conf:\n    spark.ui.enabled: 'false'\n"
        f"output:\n  root: {tmp_path / 'out'}\nneighbors:\n  k: 2\n"
        # Three products per category (some SKUs cannot have K similar items) and the
        # demo's eight broken rows among 35: gates for a real catalogue would stop it.
        "gates:\n  min_full_topk_share: 0.5\n  max_reject_rate: 0.5\n"
    )
    tables = tmp_path / "out" / "tables"
    day1, day2 = "2026-11-22", "2026-11-23"
    first = _nightly(conf, day1, demo.catalog_path)
    output = first.communicate(timeout=900)[0]
    assert first.returncode == 0, output
    before = _snapshot(tables)
    counts_before = {name: _rows(tables, name) for name in STOREFRONT}
    # The second night's catalogue lost a few listings, so its tables differ from the first's.
    lines = demo.catalog_path.read_text().splitlines()
    catalog = demo.catalog_path.parent / "night2.csv"
    catalog.write_text("\n".join(lines[:1] + lines[7:]) + "\n")

    reader = _Reader(tables)
    reader.start()
    try:
        # Killed while an index shard is being written: nothing published has moved.
        _kill_at(conf, day2, catalog, "index.shard_saved", tmp_path)
        assert _snapshot(tables) == before
        # Killed with the run's files staged inside the catalog table, before its commit.
        _kill_at(conf, day2, catalog, "publish.staged", tmp_path)
        assert _snapshot(tables) == before
        assert any((tables / "catalog" / STAGING).iterdir())  # left behind by the kill
        # Killed between two tables' commits: each table is old or new, never a mix.
        _kill_at(conf, day2, catalog, "publish.after.embeddings", tmp_path)
        middle = _snapshot(tables)
        assert middle["catalog"][0] == before["catalog"][0] + 1
        assert middle["catalog"] != before["catalog"]
        assert middle["similar_items"] == before["similar_items"]
        # The rerun needs no clean-up, succeeds, and replaces the date's outputs.
        rerun = _nightly(conf, day2, catalog)
        output = rerun.communicate(timeout=900)[0]
        assert rerun.returncode == 0, output
    finally:
        reader.stop.set()
        reader.join(timeout=30)

    after = _snapshot(tables)
    counts_after = {name: _rows(tables, name) for name in STOREFRONT}
    assert reader.errors == []
    for name in STOREFRONT:
        # Readable at every moment, and only ever the old or the new contents.
        assert reader.seen[name] and reader.seen[name] <= {counts_before[name], counts_after[name]}
        assert after[name][0] > before[name][0], name
    similar = DeltaTable(str(tables / "similar_items")).to_pandas()
    assert not similar.duplicated(["sku_id", "rank"]).any()
    assert set(similar["run_id"]) == {day2}
    assert not DeltaTable(str(tables / "catalog")).to_pandas()["sku_id"].duplicated().any()
    assert counts_after["catalog"] == counts_before["catalog"] - 6
    # The killed publish's staging folder was removed by the rerun; the rest are committed.
    for name in STOREFRONT:
        log = "".join(p.read_text() for p in (tables / name / "_delta_log").glob("*.json"))
        staging = tables / name / STAGING
        for folder in staging.iterdir() if staging.exists() else []:
            assert f"{STAGING}/{folder.name}/" in log, (name, folder.name)
