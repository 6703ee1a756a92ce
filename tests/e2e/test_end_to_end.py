"""The whole nightly run on a small demo catalog of real photos: real Spark, model, Annoy, Delta."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from deltalake import DeltaTable

from demo.catalog import LONG_TAIL, generate_demo_catalog
from lookalike.config import Config
from lookalike.layout import STAGES
from lookalike.pipeline import RunContext, run_nightly
from lookalike.stages.common import read_stats

pytestmark = pytest.mark.slow

K = 3
RUN_DATE = dt.date(2026, 11, 23)
REPO = Path(__file__).resolve().parents[2]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _table(root: Path, name: str):
    return DeltaTable(str(root / "tables" / name)).to_pyarrow_table().to_pandas()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return generate_demo_catalog(tmp_path_factory.mktemp("catalog") / "demo", n_products=60)


@pytest.fixture(scope="module")
def night(spark, demo, tmp_path_factory, pretrained_weights):
    """One nightly run, published; the tests below read what it wrote."""
    output = tmp_path_factory.mktemp("output")
    config = Config().with_overrides(
        catalog={"path": str(demo.catalog_path)},
        output={"root": str(output)},
        neighbors={"k": K},
    )
    ctx = RunContext(config, RUN_DATE)
    results = run_nightly(spark, ctx)
    return ctx, output, results


def test_every_active_sku_with_a_valid_image_gets_k_similar_items(night, demo):
    _, output, _ = night
    catalog = _table(output, "catalog").set_index("sku_id")
    embedded = set(_table(output, "embeddings")["sku_id"])
    similar = _table(output, "similar_items")

    assert not similar.empty
    # Same category, not itself, not inactive.
    assert (similar["sku_id"] != similar["similar_sku_id"]).all()
    own = similar[similar["source"] == "category"]
    assert (
        catalog.loc[own["similar_sku_id"], "category"].to_numpy() == own["category"].to_numpy()
    ).all()
    assert (catalog.loc[similar["sku_id"], "category"].to_numpy() == similar["category"]).all()
    # The long tail (one to three listings) fills K from the categories under its parent
    # (Clothing > Bottoms: trousers, shorts), after its own; no other category needs to.
    borrowed = similar[similar["source"] != "category"]
    assert set(borrowed["category"]) == {LONG_TAIL}
    parent = catalog.loc[borrowed["sku_id"], "category_path"].str.rsplit(" > ", n=1).str[0]
    assert (borrowed["source"].to_numpy() == parent.to_numpy()).all()
    lender = catalog.loc[borrowed["similar_sku_id"]]
    assert (lender["category"] != LONG_TAIL).all()
    assert all(
        path.startswith(f"{src} > ")
        for path, src in zip(lender["category_path"], borrowed["source"], strict=True)
    )
    assert catalog.loc[similar["similar_sku_id"], "is_active"].all()
    assert catalog.loc[similar["sku_id"], "is_active"].all()
    assert set(similar["similar_sku_id"]) <= embedded

    active = catalog[catalog["is_active"] & catalog.index.isin(embedded)]
    per_category = active.groupby("category").size()
    rows_per_sku = similar.groupby("sku_id").size()
    for sku_id, _ in active.iterrows():
        assert rows_per_sku.get(sku_id, 0) == K, sku_id
    # The demo's categories are large enough for every active SKU to get all K; the long tail
    # gets them by borrowing.
    assert (per_category.drop(LONG_TAIL) > K).all()
    assert 1 <= per_category[LONG_TAIL] <= K
    # Ranks 1..K: own-category rows first, then borrowed ones; each in order of non-increasing
    # cosine similarity.
    for _, rows in similar.sort_values(["sku_id", "rank"]).groupby("sku_id"):
        assert list(rows["rank"]) == list(range(1, len(rows) + 1))
        own_first = (rows["source"] != "category").astype(int)
        assert (own_first.diff().dropna() >= 0).all()
        for _, part in rows.groupby("source"):
            assert (part["score"].diff().dropna() <= 1e-6).all()
        assert rows["score"].between(-1.0, 1.0001).all()


def test_planted_exact_duplicates_share_a_cluster_with_their_original(night, demo):
    _, output, _ = night
    clusters = _table(output, "duplicate_clusters").set_index("sku_id")
    planted = _read_csv(demo.planted_duplicates)
    exact = [p for p in planted if p["transform"] == "exact"]
    assert exact, "the demo catalog plants exact copies"
    for pair in exact:
        assert pair["sku_id"] in clusters.index, pair
        assert pair["original_sku_id"] in clusters.index, pair
        copy, original = clusters.loc[pair["sku_id"]], clusters.loc[pair["original_sku_id"]]
        assert copy["cluster_id"] == original["cluster_id"], pair
        assert "content_hash" in copy["evidence"]
    # One canonical listing per cluster, and it is a member of that cluster.
    for cluster_id, members in clusters.reset_index().groupby("cluster_id"):
        assert members["canonical_sku_id"].nunique() == 1, cluster_id
        assert members["is_canonical"].sum() == 1, cluster_id
        assert members["canonical_sku_id"].iloc[0] in set(members["sku_id"])


def test_every_planted_near_duplicate_is_found_and_nothing_else(night, demo):
    _, output, _ = night
    clusters = _table(output, "duplicate_clusters").set_index("sku_id")
    planted = _read_csv(demo.planted_duplicates)
    assert {p["transform"] for p in planted} >= {
        "exact",
        "reencoded",
        "resized",
        "cropped",
        "padded",
        "watermarked",
        "mirrored",
    }
    for pair in planted:
        assert pair["sku_id"] in clusters.index, pair
        copy, original = clusters.loc[pair["sku_id"]], clusters.loc[pair["original_sku_id"]]
        assert copy["cluster_id"] == original["cluster_id"], pair
    # Precision: every cluster is one original with its planted copies, no other product.
    originals = {p["sku_id"]: p["original_sku_id"] for p in planted}
    for cluster_id, members in clusters.reset_index().groupby("cluster_id"):
        roots = {originals.get(s, s) for s in members["sku_id"]}
        assert len(roots) == 1, (cluster_id, sorted(members["sku_id"]))


def test_every_bad_row_is_a_reject_with_its_reason(night, demo):
    ctx, output, _ = night
    rejects = _table(output, "rejects")
    assert rejects["reason"].notna().all() and (rejects["reason"] != "").all()
    assert rejects["detail"].notna().all()
    assert (rejects["run_id"] == ctx.run_id).all()
    got = {(r.sku_id, r.stage, r.reason) for r in rejects.itertuples()}
    for expected in _read_csv(demo.expected_rejects):
        assert (expected["sku_id"], expected["stage"], expected["reason"]) in got, expected
    # The rest of the catalog is published: every input row is accounted for, none twice.
    rows_in = len(_read_csv(demo.catalog_path))
    catalog = _table(output, "catalog")
    embed_rejects = rejects[rejects["stage"] == "embed"]
    ingest_rejects = rejects[rejects["stage"] == "ingest"]
    assert len(catalog) + len(ingest_rejects) == rows_in
    assert len(_table(output, "embeddings")) + len(embed_rejects) == len(catalog)
    assert set(embed_rejects["sku_id"]) <= set(catalog["sku_id"])


def test_published_tables_match_the_runs_record(night):
    ctx, output, results = night
    runs = _table(output, "runs")
    assert list(runs["run_id"]) == [ctx.run_id]
    record = runs.iloc[0]
    assert record["status"] == "published"
    counts = json.loads(record["counts"])
    seconds = json.loads(record["stage_seconds"])
    assert set(seconds) >= {"ingest", "embed", "index", "neighbors", "duplicates", "report"}
    published = counts["published"]
    for name, n_rows in published.items():
        assert len(_table(output, name)) == n_rows, name
    assert published["catalog"] == counts["ingest"]["valid"]
    assert published["embeddings"] == counts["embed"]["vectors"]
    assert published["similar_items"] == counts["neighbors"]["rows"]
    assert published["duplicate_clusters"] == counts["duplicates"]["listings_in_clusters"]
    assert published["rejects"] == counts["ingest"]["rejected"] + counts["embed"]["rejected"]
    assert published["category_mismatches"] == counts["mismatches"]["flagged"]
    assert record["model_id"].startswith("mobilenet_v2.IMAGENET1K_V1.224px.")
    assert (_table(output, "embeddings")["model_id"] == record["model_id"]).all()
    # Each table is written in one commit: version 0 holds everything of the first run.
    assert DeltaTable(str(output / "tables" / "similar_items")).version() == 0
    manifest = _table(output, "index_manifest")
    for row in manifest.itertuples():
        assert Path(row.path).exists() and Path(row.ids_path).exists()
    assert sorted(manifest["category"]) == sorted(_table(output, "catalog")["category"].unique())


def test_report_lists_the_clusters(night):
    ctx, output, _ = night
    html = (ctx.layout.report_dir / "duplicates.html").read_text()
    clusters = _table(output, "duplicate_clusters")
    for cluster_id in clusters["cluster_id"].unique():
        assert cluster_id in html
    # The demo's hostile title is on a listing with an exact copy: shown, and escaped.
    assert "<script>alert" not in html
    assert (
        "&lt;script&gt;alert(&#34;x&#34;)" in html or "&lt;script&gt;alert(&quot;x&quot;)" in html
    )
    # Its formula title reaches the spreadsheet file defused.
    duplicates_csv = (ctx.layout.report_dir / "duplicates.csv").read_text()
    assert "'=HYPERLINK(" in duplicates_csv
    assert ",=HYPERLINK(" not in duplicates_csv and '"=HYPERLINK(' not in duplicates_csv
    # The category-mismatch section: every flagged listing is an active one, and is shown.
    flagged = _table(output, "category_mismatches")
    active = _table(output, "catalog").set_index("sku_id")["is_active"]
    assert active[flagged["sku_id"]].all()
    assert (flagged["suggested_category"] != flagged["category"]).all()
    for sku_id in flagged["sku_id"]:
        assert sku_id in html


def test_rerun_of_the_same_date_replaces_instead_of_appending(spark, night):
    ctx, output, _ = night
    before = {n: len(_table(output, n)) for n in ("rejects", "runs", "similar_items")}
    run_nightly(spark, ctx)
    after = {n: len(_table(output, n)) for n in ("rejects", "runs", "similar_items")}
    assert after == before
    assert DeltaTable(str(output / "tables" / "similar_items")).version() == 1
    assert set(read_stats(ctx.layout)) == set(STAGES)


def _spark_submit(stage: str, conf: Path) -> subprocess.CompletedProcess:
    """Run jobs/<stage>.py as Airflow does; returns the finished process (output as text)."""
    spark_submit = Path(sys.executable).parent / "spark-submit"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    command = [str(spark_submit), "--master", "local[1]", str(REPO / "jobs" / f"{stage}.py")]
    command += ["--conf", str(conf), "--run-date", "2026-11-23"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_a_stage_runs_alone_under_spark_submit(demo, tmp_path, pretrained_weights):
    """jobs/ingest.py through spark-submit, as Airflow starts it."""
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        f"catalog: {{path: {json.dumps(str(demo.catalog_path))}}}\n"
        f"output: {{root: {json.dumps(str(tmp_path / 'out'))}}}\n"
    )
    done = _spark_submit("ingest", conf)
    # spark-submit's PythonRunner sends the Python driver's stderr to its own stdout.
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "ingest" in done.stdout and "valid=" in done.stdout
    stats = json.loads((tmp_path / "out/runs/2026-11-23/stats/ingest.json").read_text())
    rows = len(_read_csv(demo.catalog_path))
    assert stats["counts"]["rows_read"] == rows
    assert (
        stats["counts"]["rejected"]
        == Counter(r["stage"] for r in _read_csv(demo.expected_rejects))["ingest"] + 1
    )  # the duplicate sku_id is listed once but both of its rows are rejected

    # A later stage without its input fails with a message naming what is missing.
    done = _spark_submit("index", conf)
    assert done.returncode == 1
    assert "embeddings does not exist" in done.stdout + done.stderr
