"""Category mismatches on real photos: how many planted wrong categories the rule finds.

Embeds the test split of ../shared/datasets/clothing-small (372 photos, 10 categories) with the
configured model through the embedding stage's own code, then, for each of --plantings random
seeds, moves --planted listings to a random other category and runs the mismatch rule
(lookalike.stages.mismatches.flag_batch, every listing a reference, as with the default sample
size).
Prints, averaged over the plantings: planted listings flagged, flagged with the category they
came from as the suggestion, and correctly listed photos flagged. The default rule is compared
in the same run with looser and stricter settings, and with a plain majority vote (one other
category holding 70% of the neighbors, whatever the own category's share).

Measured (frozen ImageNet MobileNet-V2, 10 plantings of 10):

    rule                                   found   right suggestion   false flags (of 362)
    default (own 0%, other >= 50%)         7.5/10        6.3               4.8
    own <= 10%, other >= 50%               7.9/10        6.7              11.9
    own 0%, other >= 30%                   8.7/10        6.5               8.4
    majority vote, other >= 70%            5.2/10        4.9               8.1

Usage:  .venv/bin/python benchmarks/category_mismatch.py [--checkpoint model.pt]
            [--planted 10] [--plantings 10]
        .venv/bin/python benchmarks/category_mismatch.py --smoke   (3 photos a category, 2
            plantings of 3: seconds, to show the benchmark still runs; not the figures above)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASET = REPO.parent / "shared" / "datasets" / "clothing-small" / "test"
os.environ.setdefault("TORCH_HOME", str(REPO / ".cache" / "torch"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lookalike.config import MismatchSettings, ModelSettings  # noqa: E402
from lookalike.core.backbones import load_embedder  # noqa: E402
from lookalike.model.labelled import embed_labelled, image_folders  # noqa: E402
from lookalike.stages.mismatches import References, flag_batch  # noqa: E402

RULES = {
    "default (own 0%, other >= 50%)": MismatchSettings(),
    "own <= 10%, other >= 50%": MismatchSettings(max_own_share=0.1, min_share=0.5),
    "own 0%, other >= 30%": MismatchSettings(max_own_share=0.0, min_share=0.3),
    # A plain vote: the own category may hold the rest of the neighbors.
    "majority vote, other >= 70%": MismatchSettings(max_own_share=0.3, min_share=0.7),
}


def plant(listings: pd.DataFrame, n: int, seed: int) -> tuple[pd.DataFrame, dict[str, str]]:
    """A copy with n listings moved to a random other category; sku_id -> true category."""
    rng = np.random.default_rng(seed)
    categories = sorted(listings["category"].unique())
    moved = listings.copy()
    truth = {}
    for i in rng.choice(len(moved), n, replace=False):
        true = moved.at[i, "category"]
        moved.at[i, "category"] = rng.choice([c for c in categories if c != true])
        truth[moved.at[i, "sku_id"]] = true
    return moved, truth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a fine-tuned checkpoint instead of ImageNet")
    parser.add_argument("--planted", type=int, default=10)
    parser.add_argument("--plantings", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="a few photos: seconds")
    args = parser.parse_args()
    if args.smoke:
        args.planted, args.plantings = 3, 2
    if not DATASET.is_dir():
        print(f"shared dataset not present: {DATASET}", file=sys.stderr)
        return 2
    model = ModelSettings(
        checkpoint=str(Path(args.checkpoint).resolve()) if args.checkpoint else None
    )
    started = time.perf_counter()
    photos = image_folders(DATASET)
    if args.smoke:
        photos = photos.groupby("category").head(3).reset_index(drop=True)
    vectors, rows = embed_labelled(photos, load_embedder(model))
    print(f"embedded {len(rows)} photos in {time.perf_counter() - started:.1f} s")
    listings = pd.DataFrame(
        {
            "sku_id": [f"p{i:04d}" for i in range(len(rows))],
            "category": rows["category"],
            "model_id": "m",
            "embedding": list(vectors),
        }
    )
    print(f"{'rule':<36} {'found':>8} {'right suggestion':>17} {'false flags':>12}")
    for name, settings in RULES.items():
        found, right, false = [], [], []
        for seed in range(args.plantings):
            moved, truth = plant(listings, args.planted, seed)
            flagged = flag_batch(moved, References(moved), settings, "bench").set_index("sku_id")
            hits = [s for s in flagged.index if s in truth]
            found.append(len(hits))
            right.append(sum(flagged.at[s, "suggested_category"] == truth[s] for s in hits))
            false.append(len(flagged) - len(hits))
        print(
            f"{name:<36} {np.mean(found):>5.1f}/{args.planted:<2} {np.mean(right):>17.1f} "
            f"{np.mean(false):>8.1f} of {len(listings) - args.planted}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
