"""Labelled image sets: photos with a known product and category, for evaluation and training.

A labelled set is a table with one row per image:

- ``image_uri``: the photo (a local path or a URI; relative paths are relative to the CSV);
- ``product_id``: the product the photo shows; photos sharing it show the same product
  (may be empty);
- ``category``: the catalog category (may be empty);
- ``is_reference``: a reference (studio, "iconic") image of its product: a gallery item of
  the photo -> reference task, never a query (optional, default false).

``read_labelled_images`` reads such a CSV; ``grocery_store`` and ``image_folders`` turn the two
shared datasets into one, and ``embed_labelled`` embeds one with any embedder, through the
embedding stage's own reading, decoding and preprocessing.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lookalike.config import EmbedSettings
from lookalike.core.images import ImageLimits

if TYPE_CHECKING:
    from lookalike.core.backbones import Embedder

log = logging.getLogger(__name__)

COLUMNS = ("image_uri", "product_id", "category", "is_reference")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class LabelledSetError(ValueError):
    """A labelled set that cannot be used: a missing column, a bad value, no images."""


def _normalise(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    if "image_uri" not in frame.columns:
        raise LabelledSetError(f"{source}: no image_uri column (columns: {list(frame.columns)})")
    unknown = sorted(set(frame.columns) - set(COLUMNS))
    if unknown:
        raise LabelledSetError(f"{source}: unknown column(s) {unknown}; expected {COLUMNS}")
    out = frame.copy()
    for column in ("product_id", "category"):
        values = out[column] if column in out.columns else pd.Series(None, index=out.index)
        # An empty cell means "not known", never a label called "".
        out[column] = pd.Series(
            [None if pd.isna(v) or str(v) == "" else str(v) for v in values],
            index=out.index,
            dtype=object,
        )
    if "is_reference" in out.columns:
        text = out["is_reference"].astype(str).str.strip().str.lower()
        bad = ~text.isin(["true", "false", "1", "0", "", "nan", "none"])
        if bad.any():
            example = out["is_reference"][bad].iloc[0]
            raise LabelledSetError(f"{source}: is_reference must be true or false, got {example!r}")
        out["is_reference"] = text.isin(["true", "1"])
    else:
        out["is_reference"] = False
    if out["image_uri"].isna().any() or (out["image_uri"].astype(str) == "").any():
        raise LabelledSetError(f"{source}: a row has no image_uri")
    if out.empty:
        raise LabelledSetError(f"{source}: no images")
    return out[list(COLUMNS)].reset_index(drop=True)


def labelled_images(frame: pd.DataFrame) -> pd.DataFrame:
    """Check and normalise a labelled set built in code (the columns above)."""
    return _normalise(frame, "labelled set")


def read_labelled_images(path: str | Path) -> pd.DataFrame:
    """Read a labelled-set CSV; relative image paths become paths relative to the CSV's folder."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise LabelledSetError(f"cannot read labelled set {path}: {err}") from None
    frame = _normalise(frame, str(path))
    base = path.resolve().parent

    def absolute(uri: str) -> str:
        if "://" in uri or uri.startswith("file:") or Path(uri).is_absolute():
            return uri
        return str(base / uri)

    frame["image_uri"] = frame["image_uri"].map(absolute)
    return frame


def write_labelled_images(frame: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labelled_images(frame).to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL)
    return path


# --- the shared datasets ---------------------------------------------------------------------


def grocery_store(root: str | Path, split: str, *, with_references: bool = True) -> pd.DataFrame:
    """The Grocery Store dataset (Klasson et al., WACV 2019) as a labelled set.

    ``root`` is the repository folder (holding ``dataset/``). The fine-grained class is the
    product (``Royal-Gala``), the coarse class the category (``Apple``). With
    ``with_references``, every product of the dataset (81, whether or not the split has
    photos of it) also gets its iconic (studio) image as a reference row.
    """
    dataset = Path(root).resolve() / "dataset"
    listing = dataset / f"{split}.txt"
    classes_csv = dataset / "classes.csv"
    for required in (listing, classes_csv):
        if not required.is_file():
            raise LabelledSetError(f"grocery-store: no {required}")
    classes = pd.read_csv(classes_csv)
    classes.columns = ["name", "class_id", "coarse_name", "coarse_id", "iconic", "description"]
    by_id = classes.set_index("class_id")
    rows = []
    for line in listing.read_text().splitlines():
        if not line.strip():
            continue
        image, class_id, _coarse = (part.strip() for part in line.split(","))
        cls = by_id.loc[int(class_id)]
        rows.append((str(dataset / image), cls["name"], cls["coarse_name"], False))
    if with_references:
        # Every product's reference, not only those photographed in the split: the gallery is
        # the whole catalogue, as in the shop.
        for _, cls in classes.iterrows():
            iconic = dataset / cls["iconic"].lstrip("/")
            rows.append((str(iconic), cls["name"], cls["coarse_name"], True))
    return labelled_images(pd.DataFrame(rows, columns=list(COLUMNS)))


def split_by_product(
    frame: pd.DataFrame, share: float, *, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, held_out): a seeded ``share`` of the products with all their rows held out.

    No product has rows on both sides, so a model trained on ``kept`` has never seen a
    product of ``held_out``: the slice to choose training settings on without touching the
    split that is reported. Reference rows and rows without a product stay in ``kept``; the
    draw depends only on the set of products and the seed, not on the rows' order.
    """
    if not 0 < share < 1:
        raise ValueError(f"share: {share!r} is not between 0 and 1")
    is_reference = frame["is_reference"].astype(bool)
    products = np.array(sorted(frame.loc[~is_reference, "product_id"].dropna().unique()))
    n_held = round(share * len(products))
    if not 1 <= n_held < len(products):
        raise LabelledSetError(
            f"holding out {share:.0%} of {len(products)} products leaves no product on one side"
        )
    held = set(np.random.default_rng(seed).permutation(products)[:n_held].tolist())
    is_held = ~is_reference & frame["product_id"].isin(held)
    return frame[~is_held].reset_index(drop=True), frame[is_held].reset_index(drop=True)


def image_folders(root: str | Path) -> pd.DataFrame:
    """``<root>/<category>/<image>`` folders (clothing-small) as a labelled set by category."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise LabelledSetError(f"no such folder: {root}")
    rows = [
        (str(image), None, folder.name, False)
        for folder in sorted(p for p in root.iterdir() if p.is_dir())
        for image in sorted(folder.iterdir())
        if image.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not rows:
        raise LabelledSetError(f"{root}: no <category>/<image> files")
    return labelled_images(pd.DataFrame(rows, columns=list(COLUMNS)))


# --- embedding -----------------------------------------------------------------------------------


def default_limits() -> ImageLimits:
    """The embedding stage's default image limits (no root check: the set names its files)."""
    settings = EmbedSettings()
    return ImageLimits(settings.max_image_bytes, settings.max_image_pixels)


def embed_labelled(
    frame: pd.DataFrame, embedder: Embedder, limits: ImageLimits | None = None
) -> tuple[np.ndarray, pd.DataFrame]:
    """(vectors, rows) of the images that embed; rejected images are dropped with a warning.

    The images go through ``lookalike.core.embedding.embed_uris``, the embedding stage's own
    code, so an evaluation sees exactly the vectors the nightly job would store.
    """
    # Imported here: the embedding stage's module brings PySpark, which reading a set does not need.
    from lookalike.core.embedding import embed_uris

    results = embed_uris(frame["image_uri"].tolist(), embedder, limits or default_limits())
    ok = results["reject_reason"].isna().to_numpy()
    for uri, reason in zip(frame["image_uri"][~ok], results["reject_reason"][~ok], strict=True):
        log.warning("skipped %s: %s", uri, reason)
    if not ok.any():
        raise LabelledSetError("no image of the labelled set could be embedded")
    vectors = np.stack(results["embedding"][ok].to_list()).astype(np.float32)
    return vectors, frame[ok].reset_index(drop=True)
