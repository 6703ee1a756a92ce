"""The embedding pandas UDF on Spark: same vectors as the library call, bad images as rejects."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lookalike.backbones import load_embedder
from lookalike.config import EmbedSettings, ModelSettings
from lookalike.embed import embed_uris, split_embedding_results, with_embedding_results
from lookalike.images import ImageLimits

pytestmark = pytest.mark.slow


def _photo(path, colour, shape):
    image = Image.new("RGB", (200, 160), "white")
    draw = ImageDraw.Draw(image)
    if shape == "ellipse":
        draw.ellipse((40, 30, 160, 130), fill=colour)
    else:
        draw.rectangle((50, 20, 150, 140), fill=colour)
    image.save(path, quality=90)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    paths = {}
    for name, colour, shape in [
        ("red-ellipse", (200, 30, 30), "ellipse"),
        ("blue-box", (30, 30, 200), "box"),
        ("green-box", (30, 160, 30), "box"),
    ]:
        paths[name] = root / f"{name}.jpg"
        _photo(paths[name], colour, shape)
    paths["copy"] = root / "copy.jpg"
    paths["copy"].write_bytes(paths["red-ellipse"].read_bytes())
    paths["empty"] = root / "empty.jpg"
    paths["empty"].write_bytes(b"")
    paths["text"] = root / "text.jpg"
    paths["text"].write_text("not a picture")
    paths["missing"] = root / "missing.jpg"
    return paths


def test_udf_vectors_equal_the_library_call_and_bad_images_are_rejects(
    spark, images, pretrained_weights
):
    model, embed = ModelSettings(), EmbedSettings()
    catalog_df = spark.createDataFrame(
        [(name, "things", str(path), None, True) for name, path in images.items()],
        "sku_id string, category string, image_uri string, title string, is_active boolean",
    )
    results_df = with_embedding_results(catalog_df, model, embed, n_partitions=2)
    embeddings_df, rejects_df = split_embedding_results(results_df, run_id="r1")
    got = {r.sku_id: r for r in embeddings_df.collect()}
    rejects = {r.sku_id: (r.stage, r.reason) for r in rejects_df.collect()}

    assert rejects == {
        "empty": ("embed", "image_empty"),
        "text": ("embed", "image_not_an_image"),
        "missing": ("embed", "image_not_found"),
    }
    assert set(got) == {"red-ellipse", "blue-box", "green-box", "copy"}

    embedder = load_embedder(model)
    names = sorted(got)
    direct = embed_uris(
        [str(images[n]) for n in names],
        embedder,
        ImageLimits(embed.max_image_bytes, embed.max_image_pixels),
    )
    for name, expected, expected_rmac in zip(
        names, direct["embedding"], direct["rmac"], strict=True
    ):
        vector = np.asarray(got[name].embedding)
        assert vector.shape == (1280,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(vector, expected, atol=1e-5)
        assert got[name].model_id == embedder.model_id
        # The duplicate descriptor of the same forward pass: unit length, not the vector.
        descriptor = np.asarray(got[name].rmac)
        assert descriptor.shape == (1280,)
        assert np.linalg.norm(descriptor) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(descriptor, expected_rmac, atol=1e-5)
        assert float(np.dot(descriptor, vector)) < 0.999
    # Identical bytes: identical hash and vector; different photos: different ones.
    assert got["copy"].content_hash == got["red-ellipse"].content_hash
    assert got["copy"].embedding == got["red-ellipse"].embedding
    assert got["blue-box"].content_hash != got["green-box"].content_hash
    cos = float(np.dot(got["red-ellipse"].embedding, got["blue-box"].embedding))
    assert cos < 0.99


def test_random_weights_need_the_explicit_flag():
    with pytest.raises(ValueError, match="allow_random_weights"):
        load_embedder(ModelSettings(weights="random"))
    embedder = load_embedder(ModelSettings(weights="random", allow_random_weights=True))
    # Recorded in the model id, so random vectors are never mistaken for pretrained ones.
    assert ".random-seed0." in embedder.model_id
    again = load_embedder(ModelSettings(weights="random", allow_random_weights=True))
    image = Image.new("RGB", (64, 64), (120, 40, 200))
    assert np.array_equal(embedder.embed([image]).numpy(), again.embed([image]).numpy())


def test_model_id_changes_with_weights_and_preprocessing(pretrained_weights):
    base = load_embedder(ModelSettings()).model_id
    assert load_embedder(ModelSettings(image_size=192)).model_id != base
    assert (
        load_embedder(ModelSettings(weights="random", allow_random_weights=True)).model_id != base
    )
