"""Photos drawn for the fine-tuning and promotion tests: two products that a network can
tell apart (colour and pattern), each photographed a few times with jitter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from lookalike.model.labelled import labelled_images


def drawn_photos(folder: Path, per_group: int = 6) -> pd.DataFrame:
    """Two products: warm discs on light grey, cool stripes on dark blue; jittered."""
    rng = np.random.default_rng(11)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for group in ("disc", "stripes"):
        for i in range(per_group):
            image = Image.new(
                "RGB", (320, 260), (210, 210, 205) if group == "disc" else (20, 30, 90)
            )
            draw = ImageDraw.Draw(image)
            x, y = rng.integers(40, 120, size=2)
            if group == "disc":
                r = int(rng.integers(50, 90))
                draw.ellipse(
                    (x, y, x + 2 * r, y + 2 * r), fill=(220, int(rng.integers(60, 140)), 30)
                )
            else:
                for s in range(0, 320, int(rng.integers(18, 30))):
                    draw.rectangle((s, 0, s + 8, 260), fill=(60, 160, int(rng.integers(180, 250))))
            path = folder / f"{group}_{i}.jpg"
            image.save(path, quality=90)
            rows.append((str(path), group, "things", False))
    return labelled_images(
        pd.DataFrame(rows, columns=["image_uri", "product_id", "category", "is_reference"])
    )
