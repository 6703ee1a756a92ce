"""Thumbnails that settle the duplicate descriptor's grey band: a seller's crop lines up with
its original, other photos of the kind do not (real shared photos, no Spark)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from lookalike.config import DuplicatesSettings
from lookalike.core.images import decode_rgb
from lookalike.core.thumbnails import SIDE, alignment, thumbnail
from real_photos import clothing_photos

THRESHOLD = DuplicatesSettings().aligned_min_correlation


def _upload(image: Image.Image) -> Image.Image:
    """What a seller's upload decodes to: the image saved as a JPEG of quality 85."""
    data = io.BytesIO()
    image.save(data, "JPEG", quality=85)
    return decode_rgb(data.getvalue(), 64_000_000, draft_size=256)


def _crop(image: Image.Image, keep: tuple[float, float], at: tuple[float, float]) -> Image.Image:
    """The part of ``image`` keeping ``keep`` of each side, its top left corner ``at`` (shares
    of the room left on each side)."""
    width, height = image.size
    w, h = round(width * keep[0]), round(height * keep[1])
    left, top = round((width - w) * at[0]), round((height - h) * at[1])
    return _upload(image.crop((left, top, left + w, top + h)))


@pytest.mark.parametrize("kind", ["t-shirt", "dress", "shoes"])
def test_a_sellers_crop_lines_up_with_its_original_and_other_photos_of_the_kind_do_not(kind):
    """Off-centre crops of 81-88% of each side (as in benchmarks/duplicates_quality.py), and
    the crop of a mirrored copy, line up with the original to at least the shipped
    aligned_min_correlation; every pair of distinct photos of the kind stays below it."""
    photos = clothing_photos(kind, 8)
    original = thumbnail(photos[0])
    for keep, at in [
        ((0.81, 0.87), (0.0, 1.0)),
        ((0.88, 0.82), (0.7, 0.2)),
        ((0.85, 0.85), (0.5, 0.5)),
    ]:
        crop = thumbnail(_crop(photos[0], keep, at))
        assert alignment(original, crop) >= THRESHOLD, (kind, keep, at)
        assert alignment(crop, original) == pytest.approx(alignment(original, crop))
    mirrored = thumbnail(_crop(ImageOps.mirror(photos[0]), (0.86, 0.86), (0.3, 0.6)))
    assert alignment(original, mirrored) >= THRESHOLD
    others = [thumbnail(p) for p in photos]
    apart = [alignment(a, b) for i, a in enumerate(others) for b in others[i + 1 :]]
    assert max(apart) < THRESHOLD, f"distinct {kind} photos lined up to {max(apart):.3f}"


def test_a_thumbnail_is_the_grey_frame_squashed_and_a_plain_one_lines_up_with_nothing():
    """SIDE x SIDE grey bytes of the whole frame; a blank (a placeholder) has no detail, so it
    lines up with nothing, itself included, rather than with every other blank."""
    image = Image.new("RGB", (300, 120), (200, 30, 30))
    data = thumbnail(image)
    assert len(data) == SIDE * SIDE
    grey = np.frombuffer(data, dtype=np.uint8)
    assert grey.min() == grey.max() == round(0.299 * 200 + 0.587 * 30 + 0.114 * 30)
    assert alignment(data, data) < 0
    with pytest.raises(ValueError, match="4096 bytes, not 10"):
        alignment(data, b"0123456789")


def test_noise_lines_up_with_its_own_crop_only():
    """Without shared photos: a crop of a random texture lines up with it, another texture
    does not."""
    rng = np.random.default_rng(3)
    texture = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).resize(
        (480, 480), Image.Resampling.BICUBIC
    )
    other = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).resize(
        (480, 480), Image.Resampling.BICUBIC
    )
    crop = _crop(texture, (0.84, 0.9), (0.25, 0.75))
    assert alignment(thumbnail(texture), thumbnail(crop)) >= THRESHOLD
    assert alignment(thumbnail(other), thumbnail(crop)) < 0.3
