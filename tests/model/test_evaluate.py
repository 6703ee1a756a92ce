"""Retrieval metrics against hand-computed cases, the report files and the model_evaluations
table read back from Delta."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable, write_deltalake

from lookalike import cli
from lookalike.config import IndexSettings
from lookalike.model import evaluate
from lookalike.model.evaluate import (
    MODEL_EVALUATIONS_SCHEMA,
    evaluate_vectors,
    record_evaluation,
    retrieval_task,
    write_report,
)
from lookalike.model.metrics import (
    ann_recall,
    ann_recall_within,
    average_precision_at_k,
    exact_top_k,
    exact_top_k_within,
    map_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)

# Three queries' ranked answers (True = relevant) and how many relevant items each gallery has.
RELEVANT = np.array(
    [
        [True, False, True, False],
        [False, False, False, True],
        [False, True, False, False],
    ]
)
N_RELEVANT = np.array([2, 1, 3])


def test_recall_at_k_counts_queries_with_a_hit_in_the_first_k():
    assert recall_at_k(RELEVANT, 1) == pytest.approx(1 / 3)  # only query 1 hits at rank 1
    assert recall_at_k(RELEVANT, 2) == pytest.approx(2 / 3)  # query 3 hits at rank 2
    assert recall_at_k(RELEVANT, 3) == pytest.approx(2 / 3)
    assert recall_at_k(RELEVANT, 4) == pytest.approx(1.0)  # query 2 hits at rank 4


def test_precision_at_k_is_the_share_of_relevant_answers():
    assert precision_at_k(RELEVANT, 2) == pytest.approx((1 / 2 + 0 + 1 / 2) / 3)
    assert precision_at_k(RELEVANT, 4) == pytest.approx((2 / 4 + 1 / 4 + 1 / 4) / 3)


def test_average_precision_by_hand():
    # q1: hits at 1 and 3 -> (1/1 + 2/3) / min(2, 4); q2: hit at 4 -> (1/4) / 1;
    # q3: hit at 2 -> (1/2) / min(3, 4).
    expected = [(1 + 2 / 3) / 2, 0.25, 0.5 / 3]
    np.testing.assert_allclose(average_precision_at_k(RELEVANT, N_RELEVANT, 4), expected)
    assert map_at_k(RELEVANT, N_RELEVANT, 4) == pytest.approx(sum(expected) / 3)
    # At k=2 q2 has no hit; q1's ideal is min(2, 2) = 2 hits; q3's min(3, 2) = 2.
    assert map_at_k(RELEVANT, N_RELEVANT, 2) == pytest.approx((1 / 2 + 0 + (1 / 2) / 2) / 3)


def test_ndcg_by_hand():
    q1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    q2 = (1 / math.log2(5)) / 1
    q3 = (1 / math.log2(3)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    assert ndcg_at_k(RELEVANT, N_RELEVANT, 4) == pytest.approx((q1 + q2 + q3) / 3)
    assert ndcg_at_k(RELEVANT, N_RELEVANT, 4) == pytest.approx(0.548826, abs=1e-6)
    perfect = np.array([[True, True, False]])
    assert ndcg_at_k(perfect, np.array([2]), 3) == pytest.approx(1.0)


def test_metrics_refuse_impossible_inputs():
    with pytest.raises(ValueError, match="k=5 outside"):
        recall_at_k(RELEVANT, 5)
    with pytest.raises(ValueError, match="at least one relevant"):
        map_at_k(RELEVANT, np.array([2, 0, 3]), 2)


def test_ann_recall_is_the_share_of_exact_ids_found():
    approx = np.array([[1, 2, 3], [4, 5, -1]])
    exact = np.array([[1, 3, 9], [4, 5, 6]])
    assert ann_recall(approx, exact) == pytest.approx(4 / 6)
    assert ann_recall(exact, exact) == 1.0
    # A padded exact slot is not a miss.
    assert ann_recall(np.array([[7, 8]]), np.array([[7, -1]])) == 1.0
    with pytest.raises(ValueError, match="2 approximate answers but 1 exact"):
        ann_recall(approx, exact[:1])


def test_exact_top_k_orders_by_cosine_leaves_itself_out_breaks_ties_by_index_and_pads():
    vectors = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 0.0]])
    ids, scores = exact_top_k(vectors, None, 3)
    # Item 0 and item 3 are the same direction (cosine 1), item 2 at 45 degrees.
    np.testing.assert_array_equal(ids[0], [3, 2, 1])
    np.testing.assert_allclose(scores[0], [1.0, math.sqrt(0.5), 0.0], atol=1e-6)
    # Item 2 is equally close to 0, 1 and 3: ties in gallery order.
    np.testing.assert_array_equal(ids[2], [0, 1, 3])
    ids, scores = exact_top_k(vectors[:2], vectors[2:], 3)
    np.testing.assert_array_equal(ids, [[1, 0, -1], [0, 1, -1]])
    assert np.isneginf(scores[:, 2]).all()


def test_exact_top_k_in_blocks_matches_one_block():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(301, 8))
    one, _ = exact_top_k(vectors, None, 7, block=4096)
    blocked, _ = exact_top_k(vectors, None, 7, block=64)
    np.testing.assert_array_equal(one, blocked)


def test_retrieval_task_leaves_out_queries_without_a_match():
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    labels = ["a", "a", "b", "c", "d"]
    result = retrieval_task("same_product", vectors, labels, ks=(1, 2))
    # a's two photos find each other; b, c and d have no other photo of their product.
    assert result.metrics["queries"] == 5
    assert result.metrics["queries_without_match"] == 3
    assert result.metrics["recall@1"] == 1.0
    assert result.metrics["map@2"] == 1.0
    assert result.metrics["precision@2"] == pytest.approx(0.5)
    assert len(result.recall_curve) == evaluate.CURVE_MAX_K
    # One matching pair (0, 1); every other unordered pair is non-matching.
    np.testing.assert_allclose(result.matching, [0.9 / math.hypot(0.9, 0.1)], atol=1e-6)
    assert len(result.non_matching) == 10 - 1


def test_histograms_keep_every_pair_under_the_budget_and_sample_above_it(monkeypatch):
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(700, 4))
    labels = np.arange(700) % 7
    result = retrieval_task("same_product", vectors, labels)
    pairs = 700 * 699 // 2
    matching = 7 * (100 * 99 // 2)
    assert len(result.matching) == matching
    assert len(result.non_matching) == pairs - matching
    monkeypatch.setattr(evaluate, "MAX_HISTOGRAM_PAIRS", 10_000)
    sampled = retrieval_task("same_product", vectors, labels)
    assert len(sampled.matching) == matching  # matching pairs are never sampled away
    assert 9_000 <= len(sampled.non_matching) <= 10_000


def _labelled_toy() -> tuple[np.ndarray, pd.DataFrame]:
    # Two products of category "fruit", one of "milk"; each has a reference image.
    rows = [
        ([1.0, 0.0, 0.0], "apple", "fruit", False),
        ([0.9, 0.2, 0.0], "apple", "fruit", False),
        ([0.6, 0.8, 0.0], "pear", "fruit", False),
        ([0.5, 0.9, 0.0], "pear", "fruit", False),
        ([0.0, 0.1, 1.0], "milk", "milk", False),
        ([0.0, 0.0, 1.0], "milk", "milk", False),
        ([0.7, 0.7, 0.0], "apple", "fruit", True),  # a poor reference: closer to the pears
        ([0.5, 1.0, 0.0], "pear", "fruit", True),
        ([0.0, 0.2, 1.0], "milk", "milk", True),
    ]
    vectors = np.array([r[0] for r in rows], dtype=np.float32)
    labels = pd.DataFrame([r[1:] for r in rows], columns=["product_id", "category", "is_reference"])
    return vectors, labels


def test_evaluate_vectors_runs_each_task_its_labels_allow():
    vectors, labels = _labelled_toy()
    evaluation = evaluate_vectors(
        vectors, labels, model_id="m1", dataset="toy", split="test", ks=(1, 2)
    )
    assert set(evaluation.tasks) == {"same_product", "same_category", "to_reference"}
    assert evaluation.metric("same_product/recall@1") == 1.0
    # Photos only are queries: 6, over a gallery of the 3 references.
    reference = evaluation.tasks["to_reference"].metrics
    assert (reference["queries"], reference["gallery"]) == (6, 3)
    # One miss: the pear photo (0.6, 0.8) is nearer the apple's reference (cosine 0.990)
    # than the pear's (0.984); every other photo's nearest reference is its product's.
    assert evaluation.metric("to_reference/recall@1") == pytest.approx(5 / 6)
    assert evaluation.metric("to_reference/recall@2") == 1.0
    assert evaluation.metric("same_category/precision@1") == 1.0
    assert evaluation.metric("ann/recall@2") is None
    assert evaluation.metric("nope/recall@1") is None


def test_evaluate_vectors_without_labels_is_an_error():
    vectors, labels = _labelled_toy()
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_vectors(
            vectors,
            labels.assign(product_id=None, category=None),
            model_id="m",
            dataset="toy",
            split="test",
        )


def test_annoy_recall_against_exact_search_within_categories():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(120, 16)).astype(np.float32)
    groups = np.array(["a", "b", "c"])[np.arange(120) % 3]
    exact = exact_top_k_within(vectors, 5, groups)
    # Neighbors never leave their category, and never include the item itself.
    assert (groups[exact] == groups[:, None]).all()
    assert (exact != np.arange(120)[:, None]).all()
    # 40 items per category with 20 trees: Annoy's default search finds (nearly) all.
    recall = ann_recall_within(vectors, 5, groups, n_trees=20)
    assert 0.9 <= recall <= 1.0
    # One tree and a tiny search budget miss some: the figure measures the index.
    assert ann_recall_within(vectors, 5, groups, n_trees=1, search_k=6) < recall


def test_ann_recall_is_part_of_an_evaluation_with_index_settings():
    vectors, labels = _labelled_toy()
    evaluation = evaluate_vectors(
        vectors, labels, model_id="m", dataset="toy", split="test", ks=(1,), index=IndexSettings()
    )
    assert evaluation.metric("ann/recall@1") == 1.0


@pytest.mark.slow
def test_report_writes_metrics_json_and_pngs(tmp_path):
    vectors, labels = _labelled_toy()
    first = evaluate_vectors(vectors, labels, model_id="frozen", dataset="toy", split="test")
    rng = np.random.default_rng(1)
    second = evaluate_vectors(
        vectors + rng.normal(scale=0.3, size=vectors.shape).astype(np.float32),
        labels,
        model_id="tuned",
        dataset="toy",
        split="test",
    )
    paths = write_report([first, second], tmp_path / "out")
    assert [p.name for p in paths] == [
        "metrics.json",
        "recall_at_k.png",
        "similarity_histograms.png",
    ]
    saved = json.loads(paths[0].read_text())
    assert [e["model_id"] for e in saved["evaluations"]] == ["frozen", "tuned"]
    assert saved["evaluations"][0]["metrics"]["same_product"]["recall@1"] == 1.0
    assert saved["evaluations"][0]["recall_curves"]["to_reference"][0] == pytest.approx(5 / 6)
    for png in paths[1:]:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


def test_evaluations_are_appended_to_the_delta_table_and_read_back(tmp_path):
    vectors, labels = _labelled_toy()
    table = tmp_path / "tables" / "model_evaluations"
    evaluation = evaluate_vectors(vectors, labels, model_id="frozen", dataset="toy", split="val")
    assert record_evaluation(table, evaluation) == 0
    other = evaluate_vectors(
        vectors[::-1].copy(), labels, model_id="other", dataset="toy", split="val"
    )
    assert record_evaluation(table, other) == 1
    rows = DeltaTable(str(table)).to_pandas().sort_values("model_id").reset_index(drop=True)
    assert rows["model_id"].tolist() == ["frozen", "other"]
    assert rows.loc[0, "same_product_recall_at_1"] == 1.0
    assert rows.loc[0, "to_reference_recall_at_1"] == pytest.approx(5 / 6)
    assert pd.isna(rows.loc[0, "ann_recall_at_10"])
    assert rows.loc[0, "dataset"] == "toy" and rows.loc[0, "split"] == "val"
    assert rows.loc[0, "queries"] == 6
    assert json.loads(rows.loc[0, "metrics_json"])["metrics"]["same_category"]["queries"] == 6
    assert DeltaTable(str(table)).schema().to_arrow().names == MODEL_EVALUATIONS_SCHEMA.names


def test_a_rerun_of_the_same_run_replaces_its_row(tmp_path):
    vectors, labels = _labelled_toy()
    table = tmp_path / "model_evaluations"
    for _ in range(2):
        evaluation = evaluate_vectors(vectors, labels, model_id="m", dataset="toy", split="val")
        record_evaluation(table, evaluation, run_id="2026-11-23")
    record_evaluation(table, evaluation, run_id="2026-11-24")
    rows = DeltaTable(str(table)).to_pandas()
    assert sorted(rows["run_id"]) == ["2026-11-23", "2026-11-24"]


def _embeddings_table(path, n_per_category: int = 6) -> None:
    rng = np.random.default_rng(5)
    centres = {"shoes": rng.normal(size=16), "hats": rng.normal(size=16)}
    rows = []
    for category, centre in centres.items():
        for i in range(n_per_category):
            vector = centre + rng.normal(scale=0.3, size=16)
            rows.append((f"{category}-{i}", category, "model-a", (vector / np.linalg.norm(vector))))
    frame = pd.DataFrame(rows, columns=["sku_id", "category", "model_id", "embedding"])
    frame["embedding"] = frame["embedding"].map(lambda v: v.astype(np.float32).tolist())
    write_deltalake(str(path), frame)


def test_command_evaluates_stored_vectors_and_records_them(tmp_path, capsys):
    _embeddings_table(tmp_path / "embeddings")
    pd.DataFrame(
        {"sku_id": ["shoes-0", "shoes-1", "hats-0", "hats-1"], "product_id": ["s", "s", "h", "h"]}
    ).to_csv(tmp_path / "labels.csv", index=False)
    conf = tmp_path / "conf.yaml"
    conf.write_text("output:\n  root: out\n")
    code = cli.main(
        ["evaluate",
            "--embeddings", str(tmp_path / "embeddings"),
            "--labels", str(tmp_path / "labels.csv"),
            "--conf", str(conf),
            "--dataset", "catalog",
            "--split", "2026-11-23",
            "--output", str(tmp_path / "report"),
            "--ks", "1,5",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "same_category" in out and "ann" in out
    assert (tmp_path / "report" / "recall_at_k.png").exists()
    rows = DeltaTable(str(tmp_path / "out" / "tables" / "model_evaluations")).to_pandas()
    assert rows["model_id"].tolist() == ["model-a"]
    # K=10 was not asked for: its column stays empty rather than holding another K's figure.
    assert pd.isna(rows.loc[0, "same_category_precision_at_10"])
    # Two clearly separated categories: every neighbor is of the same category.
    metrics = json.loads(rows.loc[0, "metrics_json"])["metrics"]
    assert metrics["same_category"]["precision@5"] == 1.0
    assert metrics["same_product"]["queries"] == 4


def test_command_exit_codes(tmp_path, capsys):
    _embeddings_table(tmp_path / "embeddings")
    conf = tmp_path / "conf.yaml"
    conf.write_text("output:\n  root: out\n")
    base = ["--dataset", "d", "--output", str(tmp_path / "r"), "--conf", str(conf)]
    assert (
        cli.main(["evaluate", "--embeddings", str(tmp_path / "embeddings"), *base, "--ks", "0"])
        == 2
    )
    assert "--ks" in capsys.readouterr().err
    bad_conf = tmp_path / "bad.yaml"
    bad_conf.write_text("model:\n  batch_size: 0\n")
    args = ["--embeddings", str(tmp_path / "embeddings"), *base[:-2], "--conf", str(bad_conf)]
    assert cli.main(["evaluate", *args]) == 2
    assert "model.batch_size" in capsys.readouterr().err
    code = cli.main(
        ["evaluate", "--embeddings", str(tmp_path / "embeddings"), *base, "--model-id", "x"]
    )
    assert code == 1
    assert "no vector of model x" in capsys.readouterr().err


@pytest.mark.slow
def test_command_embeds_a_labelled_set_with_the_configured_model(
    pretrained_weights, tmp_path, capsys
):
    from drawn_photos import drawn_photos

    drawn_photos(tmp_path / "photos").to_csv(tmp_path / "set.csv", index=False)
    conf = tmp_path / "conf.yaml"
    conf.write_text("output:\n  root: out\nmodel:\n  device: cpu\n")
    args = ["--images", str(tmp_path / "set.csv"), "--conf", str(conf), "--dataset", "drawn",
            "--output", str(tmp_path / "report"), "--run-id", "2026-11-23"]  # fmt: skip
    assert cli.main(["evaluate", *args]) == 0
    assert "mobilenet_v2.IMAGENET1K_V1.224px." in capsys.readouterr().out
    assert cli.main(["evaluate", *args]) == 0  # the same run again: its row is replaced
    rows = DeltaTable(str(tmp_path / "out" / "tables" / "model_evaluations")).to_pandas()
    assert len(rows) == 1 and rows.loc[0, "run_id"] == "2026-11-23"
    # Two drawn products, six photos each: the ImageNet network tells them apart.
    assert rows.loc[0, "same_product_recall_at_1"] == 1.0
    missing = ["--checkpoint", str(tmp_path / "none.pt")]
    assert cli.main(["evaluate", *args, *missing]) == 2
    assert "--checkpoint: no such file" in capsys.readouterr().err
