"""Fine-tuning: losses by hand, determinism for a seed, and the exported checkpoint loaded by
the embedding stage's own loader (same vectors as the trained head, a new model id).

The network starts from the real ImageNet MobileNet-V2 (skipped where it is not installed);
the training images are drawn here: two groups of photos that differ in colour and pattern.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from drawn_photos import drawn_photos
from lookalike import cli
from lookalike.config import FineTuneSettings, ModelSettings
from lookalike.core.backbones import CHECKPOINT_FORMAT, load_embedder, resolve_model
from lookalike.model import commands
from lookalike.model.finetune import (
    BatchHardTripletLoss,
    NormSoftmaxLoss,
    embed_maps,
    export_checkpoint,
    train,
    trunk_features,
)
from lookalike.model.labelled import embed_labelled

# The drawn products are easy: the proxy loss still has something to learn on them, a triplet
# loss needs a wide margin.
TINY = {"epochs": 2, "batch_size": 8, "dim": 32, "device": "cpu", "loss": "normsoftmax"}


def test_batch_hard_triplet_loss_by_hand():
    # Unit vectors at 0, 30, 90 and 100 degrees; groups [a, a, b, b].
    angles = np.radians([0.0, 30.0, 90.0, 100.0])
    embeddings = torch.tensor(
        np.stack([np.cos(angles), np.sin(angles)], axis=1), dtype=torch.float32
    )
    labels = torch.tensor([0, 0, 1, 1])
    d = lambda a, b: 1 - np.cos(np.radians(abs(a - b)))  # noqa: E731 (cosine distance)
    # Anchor 0: hardest positive 30 deg, hardest negative 90 deg -> relu(d30 - d90 + m) = 0.
    # Anchor 1: positive 30, nearest negative 60 (to the 90 one).
    # Anchor 2: positive 10, nearest negative 60.   Anchor 3: positive 10, negative 70.
    margin = 0.5
    expected = np.mean(
        [
            max(0.0, d(0, 30) - d(0, 90) + margin),
            max(0.0, d(30, 0) - d(30, 90) + margin),
            max(0.0, d(90, 100) - d(90, 30) + margin),
            max(0.0, d(100, 90) - d(100, 30) + margin),
        ]
    )
    loss = BatchHardTripletLoss(margin)(embeddings, labels)
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert float(loss) > 0


def test_normalized_softmax_loss_by_hand():
    criterion = NormSoftmaxLoss(n_groups=2, dim=2, temperature=0.5)
    with torch.no_grad():
        criterion.proxies.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))  # normalised inside
    embeddings = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    labels = torch.tensor([0, 1])
    # Logits = cosines / 0.5: [[2, 0], [1.2, 1.6]].
    expected = np.mean(
        [-np.log(np.exp(2) / (np.exp(2) + 1)), -np.log(np.exp(1.6) / (np.exp(1.2) + np.exp(1.6)))]
    )
    assert criterion(embeddings, labels).item() == pytest.approx(expected, abs=1e-6)


def test_settings_name_a_bad_value():
    with pytest.raises(ValueError, match="train_blocks"):
        FineTuneSettings(train_blocks=9)
    with pytest.raises(ValueError, match="loss"):
        FineTuneSettings(loss="arcface")
    with pytest.raises(ValueError, match="image_size"):
        FineTuneSettings(image_size=8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return drawn_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def maps(photos, pretrained_weights, tmp_path_factory):
    features, ok = trunk_features(
        photos["image_uri"].tolist(),
        FineTuneSettings(**TINY),
        cache_dir=tmp_path_factory.mktemp("cache"),
    )
    assert ok.all()
    return features


@pytest.mark.slow
def test_trunk_features_are_cached_by_model_and_files(photos, pretrained_weights, tmp_path):
    uris = photos["image_uri"].tolist()[:3]
    settings = FineTuneSettings(**TINY)
    first, _ = trunk_features(uris, settings, cache_dir=tmp_path)
    assert first.shape == (3, 320, 7, 7)  # MobileNet-V2 before its last block, 224 px
    assert len(list(tmp_path.glob("trunk-*.npz"))) == 1
    again, _ = trunk_features(uris, settings, cache_dir=tmp_path)
    np.testing.assert_array_equal(first, again)
    # Another split point is another cache entry.
    pooled, _ = trunk_features(
        uris, FineTuneSettings(**{**TINY, "train_blocks": 0}), cache_dir=tmp_path
    )
    assert pooled.shape == (3, 1280)
    assert len(list(tmp_path.glob("trunk-*.npz"))) == 2


@pytest.mark.slow
def test_an_unreadable_training_image_is_skipped_not_fatal(photos, pretrained_weights, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"<html>not found</html>")
    uris = [photos["image_uri"].iloc[0], str(tmp_path / "gone.jpg"), str(tmp_path / "broken.jpg")]
    maps, ok = trunk_features(uris, FineTuneSettings(**TINY), cache_dir=tmp_path / "cache")
    assert ok.tolist() == [True, False, False]
    assert len(maps) == 1


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["normsoftmax", "triplet"])
def test_training_is_deterministic_for_a_seed(maps, photos, loss):
    labels = photos["product_id"].to_numpy()
    tiny = {**TINY, "loss": loss, "images_per_group": 2, "margin": 1.5}
    first = train(maps, labels, FineTuneSettings(**tiny)).state()
    second = train(maps, labels, FineTuneSettings(**tiny)).state()
    other = train(maps, labels, FineTuneSettings(**tiny, seed=1))
    for part in ("state_dict", "projection"):
        assert first[part].keys() == second[part].keys()
        for name in first[part]:
            assert torch.equal(first[part][name], second[part][name]), (part, name)
    assert not torch.equal(first["projection"]["weight"], other.state()["projection"]["weight"])
    # The last block was trained, the blocks before it were not.
    frozen = resolve_model(ModelSettings())
    from lookalike.core.backbones import build_network

    reference = build_network(frozen).state_dict()
    assert not torch.equal(
        first["state_dict"]["features.18.0.weight"], reference["features.18.0.weight"]
    )
    assert torch.equal(
        first["state_dict"]["features.17.conv.0.0.weight"], reference["features.17.conv.0.0.weight"]
    )


@pytest.mark.slow
def test_training_shows_progress_and_lowers_the_loss(maps, photos):
    seen = []
    settings = FineTuneSettings(**{**TINY, "epochs": 6})
    train(maps, photos["product_id"].to_numpy(), settings, progress=seen.append)
    assert [s.epoch for s in seen] == [1, 2, 3, 4, 5, 6]
    assert all(s.seconds >= 0 for s in seen)
    assert seen[-1].loss < seen[0].loss


@pytest.mark.slow
def test_exported_checkpoint_round_trips_through_the_embedding_loader(maps, photos, tmp_path):
    trained = train(maps, photos["product_id"].to_numpy(), FineTuneSettings(**TINY))
    path = tmp_path / "tuned.pt"
    info = export_checkpoint(trained, path)

    saved = torch.load(path, weights_only=True)
    assert saved["format"] == CHECKPOINT_FORMAT and saved["backbone"] == "mobilenet_v2"
    assert not any(key.startswith("classifier.") for key in saved["state_dict"])
    assert saved["projection"]["weight"].shape == (32, 1280)

    embedder = load_embedder(ModelSettings(checkpoint=str(path), device="cpu"))
    assert embedder.model_id == info["model_id"]
    assert embedder.model_id != resolve_model(ModelSettings()).model_id
    assert embedder.model_id.startswith("mobilenet_v2.ckpt-")
    vectors, kept = embed_labelled(photos, embedder)
    assert len(kept) == len(photos)
    # The embedding stage's vectors are the trained head's vectors.
    np.testing.assert_allclose(vectors, embed_maps(trained, maps), atol=2e-4)
    assert vectors.shape == (len(photos), 32)

    sidecar = json.loads((tmp_path / "tuned.pt.json").read_text())
    assert sidecar["model_id"] == embedder.model_id
    assert sidecar["config"]["model"]["checkpoint"] == str(path.resolve())
    assert len(sidecar["training"]["history"]) == TINY["epochs"]


@pytest.mark.slow
def test_same_seed_exports_the_same_model_id(maps, photos, tmp_path):
    labels = photos["product_id"].to_numpy()
    ids = {
        export_checkpoint(train(maps, labels, FineTuneSettings(**TINY)), tmp_path / f"{i}.pt")[
            "model_id"
        ]
        for i in range(2)
    }
    assert len(ids) == 1


@pytest.mark.slow
def test_command_trains_and_exports_with_the_jobs_preprocessing(
    photos, pretrained_weights, tmp_path, capsys
):
    csv = tmp_path / "train.csv"
    photos.to_csv(csv, index=False)
    conf = tmp_path / "job.yaml"
    conf.write_text("model:\n  trim_borders: true\n")
    out = tmp_path / "model" / "tuned.pt"
    code = cli.main(
        ["finetune", "--train", str(csv), "--out", str(out), "--conf", str(conf), "--epochs", "2",
         "--batch-size", "8", "--dim", "16", "--device", "cpu",
         "--cache-dir", str(tmp_path / "cache")]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "epoch   2/2" in printed and "training:" in printed
    assert out.exists() and "model_id   mobilenet_v2.ckpt-" in printed
    sidecar = json.loads((tmp_path / "model" / "tuned.pt.json").read_text())
    assert sidecar["config"]["model"]["trim_borders"] is True
    # The id is the one the job computes when its configuration names the checkpoint.
    job_model = ModelSettings(checkpoint=str(out), trim_borders=True)
    assert sidecar["model_id"] == resolve_model(job_model).model_id
    assert sidecar["model_id"] != resolve_model(ModelSettings(checkpoint=str(out))).model_id


def test_command_line_settings_default_the_loss_by_label_and_take_the_jobs_preprocessing(
    tmp_path,
):

    def parse(argv: list[str]):
        return cli.build_parser().parse_args(["finetune", *argv])

    base = ["--train", "t.csv", "--out", "m.pt"]
    assert commands.settings_from_args(parse(base)).loss == "triplet"
    assert commands.settings_from_args(parse([*base, "--label", "category"])).loss == "normsoftmax"
    given = parse([*base, "--label", "category", "--loss", "triplet"])
    assert commands.settings_from_args(given).loss == "triplet"
    conf = tmp_path / "job.yaml"
    conf.write_text("model:\n  trim_borders: true\n  image_size: 160\n")
    settings = commands.settings_from_args(
        parse([*base, "--conf", str(conf), "--image-size", "192"])
    )
    assert (settings.trim_borders, settings.image_size) == (True, 192)


def test_command_refuses_bad_input(tmp_path, capsys):
    assert (
        cli.main(
            ["finetune", "--train", str(tmp_path / "none.csv"), "--out", str(tmp_path / "x.pt")]
        )
        == 2
    )
    assert "cannot read labelled set" in capsys.readouterr().err
    csv = tmp_path / "t.csv"
    csv.write_text("image_uri,product_id\na.jpg,p\n")
    assert cli.main(["finetune", "--train", str(csv), "--out", "x.pt", "--train-blocks", "9"]) == 2
    assert "train_blocks" in capsys.readouterr().err
