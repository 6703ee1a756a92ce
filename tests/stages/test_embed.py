"""The embedding pandas UDF on Spark: same vectors as the library call, bad images as rejects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lookalike.config import DuplicatesSettings, EmbedSettings, ModelSettings
from lookalike.core import thumbnails
from lookalike.core.backbones import load_embedder
from lookalike.core.embedding import EMBED_COLUMNS, embed_uris
from lookalike.core.images import ImageLimits
from lookalike.core.rmac import descriptor_similarity
from lookalike.stages.duplicate_pairs import with_cosine
from lookalike.stages.embed import EMBED_RESULT, split_embedding_results, with_embedding_results

CLOTHING = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "clothing-small"

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
        # The duplicate descriptor: the whole frame's, the trimmed frame's and the zoomed
        # centre's views, each of unit length, not the vector.
        descriptor = np.asarray(got[name].rmac)
        assert descriptor.shape == (3 * 1280,)
        whole, trimmed = descriptor[:1280], descriptor[1280:2560]
        np.testing.assert_allclose(np.linalg.norm(descriptor.reshape(3, 1280), axis=1), 1.0, 1e-5)
        np.testing.assert_allclose(descriptor, expected_rmac, atol=1e-5)
        assert float(np.dot(whole, vector)) < 0.999
        # The drawn shapes sit on a white background: the trimmed view is another picture.
        assert float(np.dot(whole, trimmed)) < 0.999
        # The grey thumbnail, from the same decode: what the library call gives.
        assert len(got[name].thumbnail) == thumbnails.SIDE**2
        assert bytes(got[name].thumbnail) == direct["thumbnail"][names.index(name)]
    # Identical bytes: identical hash and vector; different photos: different ones.
    assert got["copy"].content_hash == got["red-ellipse"].content_hash
    assert got["copy"].embedding == got["red-ellipse"].embedding
    assert got["copy"].thumbnail == got["red-ellipse"].thumbnail
    assert got["blue-box"].thumbnail != got["red-ellipse"].thumbnail
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


def test_spark_compares_stored_descriptors_view_by_view(spark, tmp_path, pretrained_weights):
    """A real photo padded onto a white canvas and one cropped, embedded by the UDF, are
    confirmed against their original by duplicates.with_cosine (the best of the compared
    views: trimmed for the padded copy, zoomed against whole for the crop), with the same
    figure as the library's descriptor_similarity; another photo of its kind is not."""
    folder = CLOTHING / "train" / "t-shirt"
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing: this test needs the shared clothing photos")
    first, second = sorted(folder.glob("*.jpg"))[:2]
    original = Image.open(first).convert("RGB")
    canvas = Image.new("RGB", (round(original.width * 1.2), round(original.height * 1.2)), "white")
    canvas.paste(original, (round(original.width * 0.15), round(original.height * 0.05)))
    canvas.save(tmp_path / "padded.jpg", quality=90)
    w, h = original.size
    original.crop((round(w * 0.1), round(h * 0.04), round(w * 0.93), round(h * 0.88))).save(
        tmp_path / "cropped.jpg", quality=90
    )
    paths = {
        "original": first,
        "padded": tmp_path / "padded.jpg",
        "cropped": tmp_path / "cropped.jpg",
        "other": second,
    }
    catalog_df = spark.createDataFrame(
        [(name, "t-shirt", str(path), None, True) for name, path in paths.items()],
        "sku_id string, category string, image_uri string, title string, is_active boolean",
    )
    results_df = with_embedding_results(catalog_df, ModelSettings(), EmbedSettings(), 1)
    embeddings_df, _ = split_embedding_results(results_df, run_id="r1")
    embeddings_df = embeddings_df.localCheckpoint()
    pairs_df = spark.createDataFrame(
        [("original", "padded"), ("cropped", "original"), ("original", "other")],
        "sku_id_a string, sku_id_b string",
    )
    got = {
        ({r.sku_id_a, r.sku_id_b} - {"original"}).pop(): r.cosine
        for r in with_cosine(pairs_df, embeddings_df).collect()
    }
    stored = {r.sku_id: torch.tensor([r.rmac]) for r in embeddings_df.collect()}
    for name in ("padded", "cropped", "other"):
        expected = descriptor_similarity(stored["original"], stored[name]).item()
        assert got[name] == pytest.approx(expected, abs=1e-5)
    threshold = DuplicatesSettings().min_similarity
    assert min(got["padded"], got["cropped"]) >= threshold > got["other"]


def test_the_udfs_result_type_has_the_cores_columns_in_order():
    """embed_uris (no Spark) names its columns; the UDF's struct types those same columns."""
    assert tuple(field.name for field in EMBED_RESULT.fields) == EMBED_COLUMNS
