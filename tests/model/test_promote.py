"""Model promotion: a worse candidate is refused with both figures; a better one is written
to the state file, and every evaluation is kept in the model_evaluations table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from deltalake import DeltaTable

from drawn_photos import drawn_photos
from lookalike import cli
from lookalike.config import FineTuneSettings
from lookalike.model import promote
from lookalike.model.evaluate import Evaluation, TaskResult
from lookalike.model.finetune import export_checkpoint, train, trunk_features

TINY = {"epochs": 2, "batch_size": 8, "dim": 32, "device": "cpu", "loss": "normsoftmax"}


def _evaluation(model_id: str, recall: float, split: str = "val") -> Evaluation:
    task = TaskResult("to_reference", {"recall@1": recall}, [recall], np.array([]), np.array([]))
    return Evaluation(model_id, "grocery", split, {"to_reference": task})


def test_promotion_refuses_a_worse_candidate_and_says_both_figures():
    decision = promote.decide(_evaluation("new", 0.40), _evaluation("old", 0.42))
    assert not decision.promote
    assert (
        "refused" in decision.message
        and "0.4000" in decision.message
        and "0.4200" in decision.message
    )
    assert promote.decide(_evaluation("new", 0.42), _evaluation("old", 0.42)).promote
    assert not promote.decide(
        _evaluation("new", 0.43), _evaluation("old", 0.42), min_gain=0.02
    ).promote
    assert not promote.decide(_evaluation("same", 0.9), _evaluation("same", 0.1)).promote
    with pytest.raises(ValueError, match="different sets"):
        promote.decide(_evaluation("new", 0.5), _evaluation("old", 0.4, split="test"))
    with pytest.raises(ValueError, match="no metric same_product/recall@1"):
        promote.decide(_evaluation("new", 0.5), _evaluation("old", 0.4), "same_product/recall@1")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return drawn_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def candidate(photos, pretrained_weights, tmp_path_factory):
    """A checkpoint fine-tuned for two epochs on the drawn photos."""
    settings = FineTuneSettings(**TINY)
    maps, _ = trunk_features(photos["image_uri"].tolist(), settings)
    path = tmp_path_factory.mktemp("model") / "candidate.pt"
    export_checkpoint(train(maps, photos["product_id"].to_numpy(), settings), path)
    return path


@pytest.mark.slow
def test_promotion_command_refuses_or_promotes_on_held_out_images(
    candidate, photos, tmp_path, capsys
):
    checkpoint = candidate
    held_out = tmp_path / "heldout.csv"
    photos.to_csv(held_out, index=False)
    conf = tmp_path / "conf.yaml"
    conf.write_text("output:\n  root: var\nmodel:\n  device: cpu\n")
    args = ["--conf", str(conf), "--candidate", str(checkpoint), "--images", str(held_out),
            "--dataset", "drawn", "--metric", "same_product/recall@1"]  # fmt: skip

    # Demanding more than a perfect score: refused, with both figures, and no state written.
    assert cli.main(["promote", *args, "--min-gain", "2"]) == 1
    err = capsys.readouterr().err
    assert (
        "refused: candidate mobilenet_v2.ckpt-" in err
        and "current mobilenet_v2.IMAGENET1K_V1" in err
    )
    state = tmp_path / "var" / "models" / "promoted.json"
    assert not state.exists()

    assert (
        cli.main(["promote", *args, "--min-gain", "-2", "--output", str(tmp_path / "report")]) == 0
    )
    printed = capsys.readouterr().out
    assert f"checkpoint: {checkpoint}" in printed
    saved = json.loads(state.read_text())
    assert saved["checkpoint"] == str(checkpoint) and saved["model_id"].startswith(
        "mobilenet_v2.ckpt-"
    )
    assert saved["replaced"]["model_id"].startswith("mobilenet_v2.IMAGENET1K_V1")
    assert (tmp_path / "report" / "recall_at_k.png").exists()
    # Every evaluation is kept, refused or not: two runs x two models.
    rows = DeltaTable(str(tmp_path / "var" / "tables" / "model_evaluations")).to_pandas()
    assert len(rows) == 4 and rows["split"].eq("heldout").all()
