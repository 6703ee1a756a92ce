"""Perceptual hashes: robust to what sellers do to a photo, far apart for different photos."""

from __future__ import annotations

import io
import itertools
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from lookalike.core.perceptual import (
    as_int64,
    as_uint64,
    band_keys,
    dhash,
    hamming,
    phash,
    phash_mirrored,
    phash_with_mirrored,
)

CLOTHING = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "clothing-small"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _clothing_photos(n: int) -> list[Image.Image]:
    """n real photos, spread over the categories, in a fixed order."""
    if not CLOTHING.is_dir():
        pytest.skip(f"{CLOTHING} is absent: the real-photo tests need the shared clothing photos")
    by_category: dict[str, list[Path]] = {}
    for path in sorted(CLOTHING.glob("train/*/*.jpg")):
        by_category.setdefault(path.parent.name, []).append(path)
    chosen: list[Path] = []
    for paths in itertools.zip_longest(*by_category.values()):
        chosen.extend(p for p in paths if p is not None)
        if len(chosen) >= n:
            break
    return [Image.open(p).convert("RGB") for p in chosen[:n]]


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return _clothing_photos(12)


@pytest.fixture(scope="module")
def many_photos() -> list[Image.Image]:
    return _clothing_photos(60)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _synthetic(seed: int, size: tuple[int, int] = (320, 400)) -> Image.Image:
    """A product-like drawing (shapes on a plain background), for tests without the dataset."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(150, 256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.randrange(size[0] - 40), rng.randrange(size[1] - 40)
        x1, y1 = x0 + rng.randrange(30, size[0] // 2), y0 + rng.randrange(30, size[1] // 2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    return image


SELLER_EDITS = {
    "jpeg_q30": lambda im: _jpeg(im, 30),
    "downscale_50": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "brightness_plus_10": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
}


@pytest.mark.parametrize("edit", SELLER_EDITS)
def test_phash_of_an_edited_photo_stays_close(many_photos, edit):
    distances = [hamming(phash(p), phash(SELLER_EDITS[edit](p))) for p in many_photos]
    if edit == "brightness_plus_10":
        # A mostly near-white photo loses detail to clipping when brightened (one of these 60
        # moves 8 bits); the rest must stay close.
        assert np.percentile(distances, 95) <= 6 and max(distances) <= 10, distances
    else:
        assert max(distances) <= 6, distances


@pytest.mark.parametrize("edit", SELLER_EDITS)
def test_dhash_of_an_edited_photo_stays_close(many_photos, edit):
    distances = [hamming(dhash(p), dhash(SELLER_EDITS[edit](p))) for p in many_photos]
    assert max(distances) <= 8, distances


@pytest.mark.parametrize("hash_function", [phash, dhash])
def test_different_photos_are_far_apart(many_photos, hash_function):
    hashes = [hash_function(p) for p in many_photos]
    distances = [hamming(a, b) for a, b in itertools.combinations(hashes, 2)]
    # A few pairs of different photos can be close (plain garments on plain backgrounds);
    # the bulk must be far from the <= 6 of edited copies.
    assert np.percentile(distances, 5) >= 16, sorted(distances)[:20]
    assert 26 <= np.median(distances) <= 38


def test_mirrored_phash_matches_the_mirrored_photo(many_photos):
    for photo in many_photos:
        mirrored = ImageOps.mirror(photo)
        assert hamming(phash_mirrored(photo), phash(mirrored)) <= 2
        assert hamming(phash_mirrored(mirrored), phash(photo)) <= 2
        # Not trivially the same hash: a photo is rarely symmetric enough for that.
        assert hamming(phash(photo), phash(mirrored)) > 6


def test_phash_with_mirrored_is_both_hashes_at_once(photos):
    for photo in photos:
        assert phash_with_mirrored(photo) == (phash(photo), phash_mirrored(photo))


def test_mirrored_phash_on_synthetic_images():
    # Runs without the shared dataset.
    for seed in range(5):
        image = _synthetic(seed)
        assert hamming(phash_mirrored(image), phash(ImageOps.mirror(image))) <= 2


def test_synthetic_edits_and_distinct_drawings():
    images = [_synthetic(seed) for seed in range(8)]
    for image in images:
        for edit in SELLER_EDITS.values():
            assert hamming(phash(image), phash(edit(image))) <= 6
    distances = [hamming(phash(a), phash(b)) for a, b in itertools.combinations(images, 2)]
    assert min(distances) >= 12


def test_hashes_are_signed_int64_and_survive_a_long_column():
    images = [_synthetic(seed) for seed in range(6)] + [Image.new("RGB", (1, 1), "white")]
    hashes = [h for image in images for h in (phash(image), phash_mirrored(image), dhash(image))]
    assert all(isinstance(h, int) and INT64_MIN <= h <= INT64_MAX for h in hashes)
    # Spark's LongType and Parquet INT64 hold exactly these values.
    column = pa.array(hashes, pa.int64())
    assert column.to_pylist() == hashes
    assert np.array(hashes, dtype=np.int64).tolist() == hashes


def test_phash_sign_bit_is_the_dc_term():
    # DC (mean brightness) is above the median of the other 63: the top bit is set, so the
    # value is negative; this is why hashes must be int64, not non-negative longs.
    assert phash(_synthetic(1)) < 0


def test_any_image_mode_and_tiny_images():
    base = _synthetic(3)
    for mode in ("L", "RGBA", "P", "CMYK"):
        assert hamming(phash(base.convert(mode)), phash(base)) <= 2
    for size in ((1, 1), (2, 3), (7, 1)):
        assert INT64_MIN <= phash(Image.new("RGB", size, "red")) <= INT64_MAX
        assert INT64_MIN <= dhash(Image.new("RGB", size, "red")) <= INT64_MAX


def test_a_plain_image_hashes_to_the_dc_bit_alone():
    # All AC coefficients are 0, none above their median: only the DC bit is set.
    assert as_uint64(phash(Image.new("RGB", (50, 50), (120, 30, 200)))) == 1 << 63
    assert dhash(Image.new("RGB", (50, 50), "grey")) == 0


def test_signed_and_unsigned_round_trip():
    rng = np.random.default_rng(7)
    unsigned = [int(x) for x in rng.integers(0, 2**64, size=200, dtype=np.uint64)]
    unsigned += [0, 1, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 1]
    for value in unsigned:
        signed = as_int64(value)
        assert INT64_MIN <= signed <= INT64_MAX
        assert as_uint64(signed) == value
        assert as_int64(signed) == signed
        assert hamming(signed, value) == 0
    assert as_int64(2**64 - 1) == -1
    assert as_int64(2**63) == INT64_MIN
    for bad in (2**64, INT64_MIN - 1):
        with pytest.raises(ValueError, match="64 bits"):
            as_int64(bad)
        with pytest.raises(ValueError, match="64 bits"):
            as_uint64(bad)


def test_hamming_on_signed_values():
    assert hamming(0, -1) == 64
    assert hamming(-1, 2**64 - 1) == 0
    assert hamming(INT64_MIN, 0) == 1
    assert hamming(INT64_MIN, INT64_MAX) == 64
    rng = np.random.default_rng(3)
    for a, b in rng.integers(INT64_MIN, INT64_MAX, size=(100, 2), dtype=np.int64, endpoint=True):
        expected = bin(as_uint64(int(a)) ^ as_uint64(int(b))).count("1")
        assert hamming(int(a), int(b)) == expected


def test_numpy_integers_from_a_column_work_everywhere():
    # What a Parquet or pandas column hands back: np.int64, and the arithmetic must not
    # overflow in NumPy.
    hashes = [phash(_synthetic(seed)) for seed in range(4)] + [INT64_MIN, INT64_MAX, -1]
    column = np.array(hashes, dtype=np.int64)
    for a, b in itertools.product(range(len(hashes)), repeat=2):
        assert hamming(column[a], column[b]) == hamming(hashes[a], hashes[b])
    for value, expected in zip(column, hashes, strict=True):
        assert band_keys(value) == band_keys(expected)
        assert as_uint64(value) == as_uint64(expected)
        assert as_int64(value) == expected
    assert as_int64(np.uint64(2**64 - 1)) == -1


@pytest.mark.parametrize("bands", [1, 2, 3, 4, 5, 8, 16, 64])
def test_band_keys_pigeonhole(bands):
    rng = random.Random(bands)
    for _ in range(300):
        h = as_int64(rng.getrandbits(64))
        flipped = rng.sample(range(64), rng.randrange(bands))  # fewer than `bands` bits
        other = as_int64(as_uint64(h) ^ sum(1 << bit for bit in flipped))
        keys, other_keys = band_keys(h, bands), band_keys(other, bands)
        assert len(keys) == bands
        assert all(INT64_MIN <= k <= INT64_MAX for k in keys)
        assert set(keys) & set(other_keys), (h, other, flipped)


@pytest.mark.parametrize("bands", [2, 4, 8])
def test_band_keys_can_miss_pairs_at_bands_bits_apart(bands):
    # The guarantee is exactly d < bands: one differing bit in every band shares no key.
    h = 0
    width = 64 // bands
    other = sum(1 << (i * width) for i in range(bands))
    assert hamming(h, other) == bands
    assert not set(band_keys(h, bands)) & set(band_keys(other, bands))


def test_band_keys_of_equal_bits_in_different_bands_differ():
    # 0x0001 in every 16-bit band: the same bits, four different keys.
    h = 0x0001_0001_0001_0001
    keys = band_keys(h, 4)
    assert len(set(keys)) == 4
    assert band_keys(h, 4) == band_keys(as_int64(h), 4)


def test_band_keys_rejects_a_bad_number_of_bands():
    for bands in (0, -1, 65):
        with pytest.raises(ValueError, match="bands"):
            band_keys(123, bands)


def test_phash_is_close_to_imagededup(photos, tmp_path):
    """Same algorithm as the peer: imagededup resizes in RGB and uses >= median."""
    phasher = pytest.importorskip("imagededup.methods").PHash()
    distances = []
    for i, photo in enumerate(photos):
        path = tmp_path / f"{i}.png"
        photo.save(path)
        theirs = int(phasher.encode_image(image_file=str(path)), 16)
        distances.append(hamming(phash(photo), theirs))
    assert np.median(distances) <= 3, distances
