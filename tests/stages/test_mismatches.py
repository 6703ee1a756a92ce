"""Category mismatches: listings whose nearest neighbors sit in another category."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from conftest import SHARED_DATASETS
from lookalike.config import Config, MismatchSettings
from lookalike.pipeline import RunContext
from lookalike.reviews import record_mismatch_review
from lookalike.stages import mismatches
from lookalike.stages.mismatches import References, category_mismatches, flag_batch
from lookalike.stages.report_page import write_duplicate_report

CLOTHING_TEST = SHARED_DATASETS / "clothing-small" / "test"


def _unit(*xs: float) -> np.ndarray:
    v = np.asarray(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def _listings(rows: list[tuple[str, str, np.ndarray]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sku_id": [r[0] for r in rows],
            "category": [r[1] for r in rows],
            "model_id": "m1",
            "embedding": [r[2] for r in rows],
        }
    )


def test_a_listing_among_another_categorys_references_is_flagged_with_its_evidence():
    refs = _listings(
        [
            ("a1", "shoes", _unit(1, 0.0)),
            ("a2", "shoes", _unit(1, 0.1)),
            ("a3", "shoes", _unit(1, 0.2)),
        ]
        + [
            ("b1", "hats", _unit(0.0, 1)),
            ("b2", "hats", _unit(0.1, 1)),
            ("b3", "hats", _unit(0.2, 1)),
        ]
    )
    queries = _listings(
        [
            ("x", "hats", _unit(1, 0.04)),  # a shoe listed as a hat
            ("y", "hats", _unit(0.05, 1)),  # a hat
            ("a1", "shoes", _unit(1, 0.0)),  # a reference itself: not its own evidence
        ]
    )
    settings = MismatchSettings(k=3, max_own_share=0.0, min_share=0.5)
    flagged = flag_batch(queries, References(refs), settings, "2026-12-01")

    assert flagged["sku_id"].tolist() == ["x"]
    row = flagged.iloc[0]
    assert row["category"] == "hats" and row["suggested_category"] == "shoes"
    assert row["suggested_share"] == 1.0 and row["own_share"] == 0.0
    # Nearest first: x = (1, 0.04) lies between a1 (1, 0) and a2 (1, 0.1), nearer a1.
    assert row["neighbour_sku_ids"] == ["a1", "a2", "a3"]
    assert row["neighbour_categories"] == ["shoes"] * 3
    expected = np.mean([_unit(1, 0.04) @ refs.embedding[i] for i in range(3)])
    assert row["suggested_score"] == pytest.approx(expected, abs=1e-6)
    assert row["own_best_score"] == pytest.approx(_unit(1, 0.04) @ _unit(0.2, 1), abs=1e-6)


def test_one_neighbor_of_its_own_category_keeps_a_listing_unflagged_by_default():
    refs = _listings(
        [
            ("a1", "shoes", _unit(1, 0.0)),
            ("a2", "shoes", _unit(1, 0.1)),
            ("b1", "hats", _unit(1, 0.3)),
        ]
        + [("b2", "hats", _unit(0.0, 1))]
    )
    x = _listings([("x", "hats", _unit(1, 0.05))])
    assert flag_batch(x, References(refs), MismatchSettings(k=3), "r").empty
    # A looser rule (a third of the neighbors may be its own) flags it.
    loose = MismatchSettings(k=3, max_own_share=0.4, min_share=0.6)
    assert flag_batch(x, References(refs), loose, "r")["suggested_category"].tolist() == ["shoes"]


def test_too_few_references_flag_nothing():
    refs = _listings([("a1", "shoes", _unit(1, 0)), ("b1", "hats", _unit(0, 1))])
    x = _listings([("x", "hats", _unit(1, 0.05))])
    assert flag_batch(x, References(refs), MismatchSettings(k=3), "r").empty


@pytest.mark.slow
@pytest.mark.skipif(
    not CLOTHING_TEST.is_dir(), reason=f"shared dataset not present: {CLOTHING_TEST}"
)
def test_real_photos_planted_in_a_wrong_category_are_found(spark, pretrained_weights, tmp_path):
    """Clothing photos, three moved to a category they visibly are not: each is flagged with the
    category it came from; few correctly listed photos are flagged (frozen ImageNet features)."""
    from lookalike.config import ModelSettings
    from lookalike.core.backbones import load_embedder
    from lookalike.model.labelled import embed_labelled, image_folders

    frame = image_folders(CLOTHING_TEST)
    frame = frame[frame["category"].isin(["dress", "hat", "pants", "shoes", "shorts", "skirt"])]
    vectors, rows = embed_labelled(frame.reset_index(drop=True), load_embedder(ModelSettings()))
    listings = pd.DataFrame(
        {
            "sku_id": [f"{c}-{i:03d}" for i, c in enumerate(rows["category"])],
            "category": rows["category"],
            "is_active": True,
            "model_id": "imagenet",
            "embedding": [v.tolist() for v in vectors],
        }
    )
    first = {c: listings.index[listings["category"] == c].tolist() for c in ("shoes", "shorts")}
    planted = {  # sku_id -> where it really belongs; listed elsewhere
        listings.at[first["shoes"][0], "sku_id"]: ("shoes", "dress"),
        listings.at[first["shoes"][1], "sku_id"]: ("shoes", "dress"),
        listings.at[first["shorts"][0], "sku_id"]: ("shorts", "shoes"),
    }
    for sku_id, (_, listed_as) in planted.items():
        listings.loc[listings["sku_id"] == sku_id, "category"] = listed_as
    # One inactive listing, also misplaced: not on the storefront, so not flagged.
    inactive = listings.index[listings["category"] == "hat"][0]
    listings.loc[inactive, ["category", "is_active"]] = ["shoes", False]

    embeddings_df = spark.createDataFrame(listings)
    flagged = (
        category_mismatches(embeddings_df, settings=MismatchSettings(), run_id="2026-12-01")
        .toPandas()
        .set_index("sku_id")
    )

    for sku_id, (belongs, listed_as) in planted.items():
        assert sku_id in flagged.index, f"{sku_id} ({belongs} listed as {listed_as}) not flagged"
        assert flagged.at[sku_id, "category"] == listed_as
        assert flagged.at[sku_id, "suggested_category"] == belongs
        assert flagged.at[sku_id, "own_share"] == 0.0
        assert len(flagged.at[sku_id, "neighbour_sku_ids"]) == 10
    assert listings.at[inactive, "sku_id"] not in flagged.index
    false_flags = set(flagged.index) - set(planted)
    assert len(false_flags) <= 0.05 * (len(listings) - len(planted)), sorted(false_flags)

    # The merchandiser report's section lists them, sku ids and categories escaped.
    flagged = flagged.reset_index().assign(
        title="<script>alert(1)</script>", image_uri=None, run_id="2026-12-01"
    )
    paths = write_duplicate_report(
        pd.DataFrame(), tmp_path, run_id="2026-12-01", mismatches=flagged
    )
    html = paths.html.read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    for sku_id in planted:
        assert sku_id in html
    csv = pd.read_csv(paths.mismatches_csv)
    assert set(planted) <= set(csv["sku_id"]) and len(csv) == len(flagged)
    # Most confident first: the planted shoes, all ten neighbors shoes, lead the list.
    assert csv["sku_id"].iloc[0] in planted and csv["suggested_share"].iloc[0] == 1.0


# --- merchandisers' decisions: the stage's run on real Spark, a real mismatch_reviews table ---

NOON = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)


@pytest.fixture
def flagging_run(spark, tmp_path):
    """A run whose embeddings flag exactly two listings: x (a shoe listed under hats) and w (a
    hat listed under shoes); the four shoes and four hats each keep a neighbor of their own."""
    ctx = RunContext(
        Config().with_overrides(
            output={"root": str(tmp_path)}, mismatches={"k": 3, "reference_per_category": 10}
        ),
        dt.date(2026, 12, 1),
    )
    rows = [(f"a{i}", "shoes", _unit(1, i / 10)) for i in range(4)]
    rows += [(f"b{i}", "hats", _unit(i / 10, 1)) for i in range(4)]
    rows += [("x", "hats", _unit(1, 0.05)), ("w", "shoes", _unit(0.05, 1))]
    spark.createDataFrame(
        [(sku, cat, True, "m1", [float(v) for v in vec]) for sku, cat, vec in rows],
        "sku_id string, category string, is_active boolean, model_id string, "
        "embedding array<float>",
    ).write.parquet(str(ctx.layout.embeddings))

    def run() -> tuple[set[str], int]:
        counts = mismatches.run(spark, ctx)
        flagged = set(pd.read_parquet(ctx.layout.category_mismatches)["sku_id"])
        assert counts["flagged"] == len(flagged)
        return flagged, counts["suppressed_by_review"]

    return run, ctx.layout.table("mismatch_reviews")


@pytest.mark.slow
def test_a_category_ok_decision_suppresses_the_flag_in_the_same_category(flagging_run):
    run, reviews = flagging_run
    assert run() == ({"x", "w"}, 0)  # no reviews table yet
    record_mismatch_review(reviews, "x", "hats", "shoes", "category_ok", reviewer="ann")
    assert run() == ({"w"}, 1)


@pytest.mark.slow
def test_a_category_ok_decided_under_another_category_does_not_suppress(flagging_run):
    run, reviews = flagging_run
    # Decided while x was listed under shoes; the catalog has moved it to hats since.
    record_mismatch_review(reviews, "x", "shoes", "hats", "category_ok", decided_at=NOON)
    assert run() == ({"x", "w"}, 0)


@pytest.mark.slow
def test_wrong_category_keeps_the_flag_and_the_latest_decision_wins(flagging_run):
    run, reviews = flagging_run
    later = NOON + dt.timedelta(hours=1)
    # x: a false alarm at first, then agreed: flagged. w: the other way round: suppressed.
    record_mismatch_review(reviews, "x", "hats", "shoes", "category_ok", decided_at=NOON)
    record_mismatch_review(reviews, "x", "hats", "shoes", "wrong_category", decided_at=later)
    record_mismatch_review(reviews, "w", "shoes", "hats", "wrong_category", decided_at=NOON)
    record_mismatch_review(reviews, "w", "shoes", "hats", "category_ok", decided_at=later)
    assert run() == ({"x"}, 1)


def test_record_mismatch_review_refuses_a_bad_row_and_writes_a_good_one(tmp_path):
    table = tmp_path / "mismatch_reviews"
    with pytest.raises(ValueError, match="got 'not_a_shoe'"):
        record_mismatch_review(table, "x", "hats", "shoes", "not_a_shoe")
    with pytest.raises(ValueError, match="needs a sku_id, got ' '"):
        record_mismatch_review(table, " ", "hats", "shoes", "category_ok")
    with pytest.raises(ValueError, match="needs the listing's category, got ''"):
        record_mismatch_review(table, "x", "", "shoes", "wrong_category")
    assert not DeltaTable.is_deltatable(str(table))  # nothing refused was written
    assert record_mismatch_review(table, " x ", "hats", "shoes", "wrong_category", "bo") == 0
    assert record_mismatch_review(table, "y", "hats", None, "category_ok") == 1
    rows = DeltaTable(str(table)).to_pandas().sort_values("sku_id")
    assert rows[["sku_id", "category", "suggested_category", "decision", "reviewer"]].to_dict(
        "records"
    ) == [
        {
            "sku_id": "x",
            "category": "hats",
            "suggested_category": "shoes",
            "decision": "wrong_category",
            "reviewer": "bo",
        },
        {
            "sku_id": "y",
            "category": "hats",
            "suggested_category": None,
            "decision": "category_ok",
            "reviewer": None,
        },
    ]
