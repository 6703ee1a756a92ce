"""The backbone registry, weights from checkpoints, model ids and the run-time device choice.

Networks with random weights here are built behind the explicit flag and only test plumbing
(shapes, ids, checkpoint round trips); nothing pretends they are pretrained.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from lookalike.config import DuplicatesSettings, ModelSettings
from lookalike.core.backbones import (
    BACKBONES,
    CHECKPOINT_FORMAT,
    load_embedder,
    resolve_model,
    select_device,
)
from lookalike.core.images import decode_rgb
from lookalike.core.rmac import descriptor_similarity, rmac
from real_photos import clothing_photos

RANDOM = {"weights": "random", "allow_random_weights": True}


def _pictures() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [
        Image.fromarray(rng.integers(0, 256, (180, 240, 3), dtype=np.uint8), "RGB")
        for _ in range(3)
    ]


@pytest.mark.parametrize(
    ("backbone", "dim"),
    [
        ("mobilenet_v2", 1280),
        ("mobilenet_v3_large", 960),
        ("resnet50", 2048),
        ("efficientnet_b0", 1280),
    ],
)
def test_every_registered_backbone_gives_unit_vectors_of_its_pooled_width(backbone, dim):
    embedder = load_embedder(ModelSettings(backbone=backbone, batch_size=2, **RANDOM))
    vectors = embedder.embed(_pictures()).numpy()
    assert vectors.shape == (3, dim) == (3, BACKBONES[backbone].dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.model_id.startswith(f"{backbone}.random-seed0.224px.")


def test_vectors_are_the_networks_pooled_features_in_the_default_layout():
    # channels-last and batching are speed, not a different computation.
    embedder = load_embedder(ModelSettings(batch_size=2, **RANDOM))
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2(weights=None).eval()
    reference.classifier = torch.nn.Identity()
    pictures = _pictures()
    with torch.inference_mode():
        expected = reference(torch.stack([embedder.prepare(p) for p in pictures]))
    expected = torch.nn.functional.normalize(expected, dim=1).numpy()
    np.testing.assert_allclose(embedder.embed(pictures).numpy(), expected, atol=1e-4)


def test_each_backbone_brings_its_own_preprocessing():
    v2 = resolve_model(ModelSettings(**RANDOM)).preprocessing
    assert (v2.resize, v2.crop, v2.interpolation) == (256, 224, "bilinear")
    effnet = resolve_model(ModelSettings(backbone="efficientnet_b0", **RANDOM)).preprocessing
    assert (effnet.resize, effnet.crop, effnet.interpolation) == (256, 224, "bicubic")
    # torchvision's V2 recipes evaluate at 232 -> 224.
    resnet = resolve_model(ModelSettings(backbone="resnet50", weights="IMAGENET1K_V2"))
    assert (resnet.preprocessing.resize, resnet.preprocessing.crop) == (232, 224)
    small = resolve_model(ModelSettings(image_size=160, **RANDOM)).preprocessing
    assert (small.resize, small.crop) == (183, 160)


def test_model_id_fingerprints_backbone_weights_and_preprocessing():
    ids = {
        resolve_model(settings).model_id
        for settings in (
            ModelSettings(),
            ModelSettings(weights="IMAGENET1K_V2"),
            ModelSettings(image_size=192),
            ModelSettings(trim_borders=True),
            ModelSettings(backbone="resnet50"),
            ModelSettings(**RANDOM),
        )
    }
    assert len(ids) == 6
    # Resolving builds nothing and is stable: the driver and every worker agree.
    assert resolve_model(ModelSettings()).model_id == resolve_model(ModelSettings()).model_id


def test_unknown_weights_name_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"model\.weights: 'IMAGENET9K'.*IMAGENET1K_V1"):
        resolve_model(ModelSettings(weights="IMAGENET9K"))


def test_random_weights_need_the_explicit_flag():
    with pytest.raises(ValueError, match="allow_random_weights"):
        resolve_model(ModelSettings(weights="random"))


def test_torchvision_state_dict_checkpoint_round_trips(tmp_path):
    torch.manual_seed(123)
    net = torchvision.models.mobilenet_v2(weights=None).eval()  # classifier included
    path = tmp_path / "shop.pt"
    torch.save(net.state_dict(), path)

    embedder = load_embedder(ModelSettings(checkpoint=str(path), batch_size=2))
    net.classifier = torch.nn.Identity()
    pictures = _pictures()
    with torch.inference_mode():
        expected = net(torch.stack([embedder.prepare(p) for p in pictures]))
    expected = torch.nn.functional.normalize(expected, dim=1).numpy()
    np.testing.assert_allclose(embedder.embed(pictures).numpy(), expected, atol=1e-4)
    assert ".ckpt-" in embedder.model_id

    # Other weights in the same file name: another model id, so no stored vector is reused.
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), path)
    assert resolve_model(ModelSettings(checkpoint=str(path))).model_id != embedder.model_id


def test_lookalike_checkpoint_with_projection_changes_the_width(tmp_path):
    torch.manual_seed(5)
    backbone = torchvision.models.resnet50(weights=None)
    backbone.fc = torch.nn.Identity()
    projection = torch.nn.Linear(2048, 128)
    path = tmp_path / "fine-tuned.pt"
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "backbone": "resnet50",
            "state_dict": backbone.state_dict(),
            "projection": projection.state_dict(),
        },
        path,
    )
    embedder = load_embedder(ModelSettings(backbone="resnet50", checkpoint=str(path)))
    assert embedder.embed(_pictures()[:1]).shape == (1, 128)

    with pytest.raises(ValueError, match="holds a resnet50 network, but model.backbone is"):
        load_embedder(ModelSettings(backbone="mobilenet_v2", checkpoint=str(path)))


def test_checkpoint_that_does_not_fit_or_is_not_weights_is_refused(tmp_path):
    other = tmp_path / "resnet.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(ValueError, match="does not fit mobilenet_v2"):
        load_embedder(ModelSettings(checkpoint=str(other)))
    junk = tmp_path / "junk.pt"
    torch.save({"hello": [1, 2]}, junk)
    with pytest.raises(ValueError, match="neither a state dict"):
        load_embedder(ModelSettings(checkpoint=str(junk)))
    with pytest.raises(ValueError, match="no such file"):
        resolve_model(ModelSettings(checkpoint=str(tmp_path / "missing.pt")))


def test_pickled_code_in_a_checkpoint_is_never_run(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pt"
    torch.save({"state": Payload()}, path)
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported"):
        load_embedder(ModelSettings(checkpoint=str(path)))


def test_device_is_chosen_at_run_time():
    assert select_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert select_device("auto").type == "cuda"
        assert select_device("cuda", ["0"]) == torch.device("cuda", 0)
    else:
        assert select_device("auto") == torch.device("cpu")
        with pytest.raises(RuntimeError, match="model.device is 'cuda' but torch sees no GPU"):
            select_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_gpu_mixed_precision_vectors_match_the_cpu():
    settings = ModelSettings(batch_size=2, **RANDOM)
    pictures = _pictures()
    on_cpu = load_embedder(settings.model_copy(update={"device": "cpu"})).embed(pictures)
    gpu = load_embedder(settings.model_copy(update={"device": "cuda"}))
    assert gpu.device.type == "cuda"
    cosines = (gpu.embed(pictures) * on_cpu).sum(dim=1).numpy()
    assert np.all(cosines > 0.999)


def test_rmac_sums_normalised_region_maxima_at_three_scales():
    """Hand-computed on a 2-channel 3x3 map: channel 0 is hot at the top-left pixel only,
    channel 1 is 1 everywhere. The whole map, the top-left 2x2 region and the top-left pixel
    see (1, 1); the three other 2x2 regions and eight other pixels see (0, 1)."""
    maps = torch.zeros(1, 2, 3, 3)
    maps[0, 0, 0, 0] = 1.0
    maps[0, 1] = 1.0
    half = 2**-0.5
    expected = torch.tensor([[3 * half, 3 * half + 3 + 8]])
    expected = expected / expected.norm()
    torch.testing.assert_close(rmac(maps), expected)
    # One level is the global max (MAC), normalised.
    torch.testing.assert_close(rmac(maps, levels=1), torch.tensor([[half, half]]))


def test_embedder_gives_a_three_view_descriptor_per_image(pretrained_weights):
    embedder = load_embedder(ModelSettings())
    pictures = [Image.new("RGB", (96, 64), colour) for colour in ((200, 30, 30), (30, 30, 200))]
    views = [embedder.prepare_views(p) for p in pictures]
    vectors, descriptors = embedder.embed_views(views)
    assert vectors.shape == (2, 1280)
    # Three views end to end (whole, trimmed, zoomed), each of unit length.
    assert descriptors.shape == (2, 3 * 1280)
    torch.testing.assert_close(descriptors.reshape(2, 3, 1280).norm(dim=2), torch.ones(2, 3))
    # The vector is the framed view's, as ``embed`` gives it.
    torch.testing.assert_close(vectors, embedder.embed(pictures))
    # Batched or alone, each image's descriptor is its own.
    _, alone = embedder.embed_views(views[1:])
    torch.testing.assert_close(alone[0], descriptors[1], atol=1e-5, rtol=1e-4)
    assert embedder.embed_views([])[0].numel() == 0


def test_each_view_is_its_own_part_of_the_photo():
    """Whole: the frame squashed (a portrait photo's top and bottom kept); trimmed: the
    framed view of the trimmed frame, only where a border was trimmed; zoomed: the centre."""
    embedder = load_embedder(ModelSettings(batch_size=2, **RANDOM))
    photo = _pictures()[0]
    framed = Image.new("RGB", (300, 260), "white")
    framed.paste(photo, (40, 50))
    assert embedder.prepare_views(photo).trimmed is None  # noise reaches every edge
    views = embedder.prepare_views(framed)
    torch.testing.assert_close(views.trimmed, embedder.prepare(photo))
    assert views.framed.shape == views.whole.shape == views.zoomed.shape == (3, 224, 224)
    # A tall photo: its top rows are in the whole view, centre-cropped away from the framed.
    tall = Image.new("RGB", (100, 300), "black")
    tall.paste((255, 255, 255), (0, 0, 100, 60))
    tall_views = embedder.prepare_views(tall)
    assert tall_views.whole[:, :10].mean() > 1.0 > tall_views.framed[:, :10].mean()
    assert tall_views.zoomed[:, :10].mean() > 1.0  # 15% of the side gone: rows 22-60 are left

    _, descriptors = embedder.embed_views([views, embedder.prepare_views(photo)])
    _, of_photo = embedder.embed_views([embedder.prepare_views(photo)])
    whole, trimmed = slice(0, 1280), slice(1280, 2560)
    # With nothing to trim the trimmed view is the framed one; trimmed, it is the photo's.
    assert not torch.allclose(descriptors[0, whole], descriptors[0, trimmed], atol=1e-3)
    torch.testing.assert_close(descriptors[0, trimmed], of_photo[0, trimmed], atol=1e-5, rtol=1e-4)


def test_descriptor_similarity_is_the_best_compared_pair_of_views():
    # The number of views is read from the squared length. One: the plain cosine.
    one = descriptor_similarity(torch.tensor([[0.6, 0.8]]), torch.tensor([[0.8, 0.6]]))
    torch.testing.assert_close(one, torch.tensor([0.96]))
    # Two views (recipe 4): whole to whole, trimmed to trimmed.
    a = torch.tensor([[1.0, 0.0, 0.6, 0.8]])
    b = torch.tensor([[0.0, 1.0, 0.6, 0.8]])
    torch.testing.assert_close(descriptor_similarity(a, b), torch.tensor([1.0]))
    c = torch.tensor([[0.6, 0.8, 0.0, 1.0]])
    torch.testing.assert_close(descriptor_similarity(a, c), torch.tensor([0.8]))
    with pytest.raises(ValueError, match="descriptors of 4 and 2 values"):
        descriptor_similarity(a, torch.tensor([[0.6, 0.8]]))
    # Three views: the zoomed centre meets the other's whole frame, either way round, and
    # never the other's trimmed or zoomed view.
    x, y, z = torch.eye(3)
    crop = torch.cat([y, z, z]).unsqueeze(0)  # its whole frame is the original's centre
    original = torch.cat([x, x, y]).unsqueeze(0)
    torch.testing.assert_close(descriptor_similarity(original, crop), torch.tensor([1.0]))
    torch.testing.assert_close(descriptor_similarity(crop, original), torch.tensor([1.0]))
    unrelated = torch.cat([x, y, z]).unsqueeze(0)
    # Zoomed to zoomed, trimmed to whole and whole to trimmed are not compared.
    other = torch.cat([y, x, z]).unsqueeze(0)
    torch.testing.assert_close(descriptor_similarity(unrelated, other), torch.tensor([0.0]))


def _pad_onto_white(image: Image.Image, grow: float, at: tuple[float, float]) -> Image.Image:
    """A seller's copy: the photo on a white canvas ``grow`` times larger, saved as JPEG."""
    width, height = image.size
    canvas = Image.new("RGB", (round(width * grow), round(height * grow)), "white")
    canvas.paste(image, (round(width * at[0]), round(height * at[1])))
    data = io.BytesIO()
    canvas.save(data, "JPEG", quality=90)
    return decode_rgb(data.getvalue(), 64_000_000, draft_size=256)


def test_a_real_photo_padded_onto_white_is_a_duplicate_and_other_photos_of_its_kind_are_not(
    pretrained_weights,
):
    """The duplicate descriptor on real photos: a T-shirt photo padded onto a white canvas
    20% larger (as sellers do) reaches duplicates.min_similarity through the trimmed view,
    where the whole frame alone loses part of it; five other T-shirt photos stay well below."""
    photos = clothing_photos("t-shirt")
    padded = _pad_onto_white(photos[0], 1.2, (0.15, 0.05))
    embedder = load_embedder(ModelSettings(device="cpu"))
    descriptors = embedder.describe([*photos, padded])
    original, copy, others = descriptors[:1], descriptors[-1:], descriptors[1:-1]
    threshold = DuplicatesSettings().min_similarity
    together = descriptor_similarity(original, copy).item()
    whole_only = descriptor_similarity(original[:, :1280], copy[:, :1280]).item()
    assert together >= threshold
    assert together > whole_only + 0.02
    apart = descriptor_similarity(original.expand(len(others), -1), others)
    assert apart.max().item() < threshold - 0.1


def test_a_real_photo_cropped_by_a_seller_is_a_duplicate_through_the_zoomed_view(
    pretrained_weights,
):
    """Crops keeping 80-88% of each side, centred or a little off centre, meet
    duplicates.min_similarity through the original's zoomed centre, above what the whole
    frames alone give; other photos of the kind stay far below the threshold. (A crop taken
    from a corner can fall short: 0.951 for 82% x 88% at the bottom left of this photo, the
    crops benchmarks/duplicates_quality.py misses.)"""
    photos = clothing_photos("dress")
    w, h = photos[0].size
    crops = []
    for keep_w, keep_h, at_x, at_y in (
        (0.85, 0.85, 0.5, 0.5),
        (0.8, 0.8, 0.5, 0.5),
        (0.88, 0.85, 0.3, 0.6),
    ):
        cw, ch = round(w * keep_w), round(h * keep_h)
        x, y = round((w - cw) * at_x), round((h - ch) * at_y)
        data = io.BytesIO()
        photos[0].crop((x, y, x + cw, y + ch)).save(data, "JPEG", quality=90)
        crops.append(decode_rgb(data.getvalue(), 64_000_000, draft_size=256))
    embedder = load_embedder(ModelSettings(device="cpu"))
    descriptors = embedder.describe([*photos, *crops])
    original, copies, others = descriptors[:1], descriptors[6:], descriptors[1:6]
    threshold = DuplicatesSettings().min_similarity
    together = descriptor_similarity(original.expand(3, -1), copies)
    whole_only = descriptor_similarity(original[:, :1280].expand(3, -1), copies[:, :1280])
    assert (together >= threshold).all(), together
    assert (together > whole_only + 0.01).all(), (together, whole_only)
    apart = descriptor_similarity(original.expand(len(others), -1), others)
    assert apart.max().item() < threshold - 0.1
