"""The shared real photos tests decode, as the embed stage does; skipped with the reason when
``../shared`` is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lookalike.core.images import decode_rgb

CLOTHING = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "clothing-small"


def clothing_photos(kind: str, n: int = 6) -> list[Image.Image]:
    """The first ``n`` shared clothing photos of a kind, decoded as the embed stage does."""
    folder = CLOTHING / "train" / kind
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing: this test needs the shared clothing photos")
    return [
        decode_rgb(p.read_bytes(), 64_000_000, draft_size=256)
        for p in sorted(folder.glob("*.jpg"))[:n]
    ]
