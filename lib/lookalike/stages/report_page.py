"""The merchandisers' morning review of duplicate listings, and of listings that look like another
category: one self-contained HTML page per run (thumbnails inlined, no scripts, no external
requests) and a CSV export of each section's rows."""

from __future__ import annotations

import base64
import io
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
import pandas as pd
from PIL import Image, ImageOps

from lookalike.core.storage import Location
from lookalike.csvsafe import spreadsheet_csv

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

HTML_NAME = "duplicates.html"
CSV_NAME = "duplicates.csv"
MISMATCH_CSV_NAME = "category_mismatches.csv"
SHARED_PHOTOS_CSV_NAME = "shared_photos.csv"

MEMBER_COLUMNS: tuple[str, ...] = (
    "cluster_id",
    "sku_id",
    "canonical_sku_id",
    "category",
    "title",
    "image_uri",
    "is_active",
    "evidence",
    "score",
    "phash_distance",
    "min_score",
    "run_id",
)

MISMATCH_COLUMNS: tuple[str, ...] = (
    "sku_id",
    "category",
    "suggested_category",
    "suggested_share",
    "own_share",
    "suggested_score",
    "own_best_score",
    "neighbour_sku_ids",
    "neighbour_categories",
    "title",
    "image_uri",
    "run_id",
)

# One row per listing that shows a shared photo (a placeholder), of the groups the page shows.
SHARED_PHOTO_COLUMNS: tuple[str, ...] = (
    "group_id",
    "sku_id",
    "category",
    "title",
    "image_uri",
    "content_hash",
    "n_listings",
    "n_categories",
    "n_titles",
    "run_id",
)
# Titles shown per shared photo: enough to see that the listings are different products.
SHARED_PHOTO_SAMPLE_TITLES = 6

# One row per member of the same-style groups the page shows (style_groups + the catalog).
STYLE_COLUMNS: tuple[str, ...] = (
    "group_id",
    "category",
    "sku_id",
    "is_representative",
    "representative_sku_id",
    "group_size",
    "cohesion",
    "similarity",
    "title",
    "image_uri",
    "run_id",
)
# Thumbnails per group on the page, the representative first: the CSV lists every member.
STYLE_MEMBERS_SHOWN = 8
STYLE_GROUPS_CSV_NAME = "style_groups.csv"

_JPEG_QUALITY = 80
# Decoding is mostly C code that releases the GIL, so a few threads cut the driver's wall time on a
# page of hundreds of photos without the cost of processes.
_THUMB_WORKERS = min(8, os.cpu_count() or 1)
# Transparent product shots (PNG cut-outs) would turn black if the alpha were simply dropped.
_PAPER = (255, 255, 255)


@dataclass(frozen=True)
class ReportPaths:
    html: Location
    csv: Location
    mismatches_csv: Location

    @property
    def shared_photos_csv(self) -> Location:
        # Derived from the page, not a field of its own: every export lies beside the page.
        return self.html.parent / SHARED_PHOTOS_CSV_NAME

    @property
    def style_groups_csv(self) -> Location:
        return self.html.parent / STYLE_GROUPS_CSV_NAME


@dataclass(frozen=True)
class _Thumb:
    data_uri: str
    width: int
    height: int


@dataclass(frozen=True)
class _MemberView:
    sku_id: str
    title: str | None
    is_active: bool
    is_canonical: bool
    thumb: _Thumb | None
    # How close to the canonical listing: cosine (1.0 for the same bytes), pHash bits apart.
    score: float | None
    phash_distance: int | None


@dataclass(frozen=True)
class _ClusterView:
    cluster_id: str
    categories: str
    evidence: str
    min_score: float
    members: list[_MemberView]


@dataclass(frozen=True)
class _SharedPhotoView:
    group_id: str
    thumb: _Thumb | None
    n_listings: int
    # "mugs (15)", most listings first.
    categories: list[str]
    n_titles: int
    sample_titles: list[str | None]
    # Listings of the group in the CSV (the run may cap them; the table has all).
    n_exported: int


@dataclass(frozen=True)
class _StyleMemberView:
    sku_id: str
    title: str | None
    thumb: _Thumb | None
    is_representative: bool
    similarity: float


@dataclass(frozen=True)
class _StyleView:
    group_id: str
    category: str
    size: int
    cohesion: float
    members: list[_StyleMemberView]  # the first STYLE_MEMBERS_SHOWN, representative first


@dataclass(frozen=True)
class _MismatchView:
    sku_id: str
    title: str | None
    thumb: _Thumb | None
    category: str
    suggested_category: str
    suggested_share: float
    own_share: float
    suggested_score: float
    own_best_score: float | None
    # The nearest references, nearest first: "sku_id (category)".
    neighbors: list[str]


def write_duplicate_report(
    members: pd.DataFrame,
    out_dir: Path | Location,
    *,
    run_id: str,
    max_clusters: int = 500,
    thumb_px: int = 160,
    totals: dict[str, int] | None = None,
    mismatches: pd.DataFrame | None = None,
    shared_photos: pd.DataFrame | None = None,
    style_groups: pd.DataFrame | None = None,
) -> ReportPaths:
    """Write `out_dir/duplicates.html`, `duplicates.csv` and `category_mismatches.csv` for one
    run; return the paths.

    `members` holds one row per listing of a duplicate cluster (columns: MEMBER_COLUMNS). The page
    shows the `max_clusters` most confident clusters; the CSV holds every row, in the page's order.
    `mismatches` holds listings flagged as looking like another category (MISMATCH_COLUMNS),
    shown in a section of their own, most confident first. `shared_photos` holds listings whose
    photo many different listings show (SHARED_PHOTO_COLUMNS): a section, largest group first,
    and `shared_photos.csv` (written when `shared_photos` is given). `style_groups` holds the
    members of the same-style groups to show (STYLE_COLUMNS): a section, largest and most
    cohesive group first, and `style_groups.csv` (when given). Re-running replaces every
    file; a reader never sees a half-written one. In the CSVs, text that a spreadsheet would run
    as a formula (``=HYPERLINK(...)``) starts with a ``'`` (lookalike.csvsafe); numbers stay
    numbers, and the page shows the true text, escaped.
    """
    if max_clusters < 0:
        raise ValueError(f"max_clusters must be >= 0, got {max_clusters}")
    if thumb_px <= 0:
        raise ValueError(f"thumb_px must be > 0, got {thumb_px}")
    members = _with_columns(members, MEMBER_COLUMNS, "members")
    ordered = _sort_like_page(members)
    flagged = _sort_mismatches(
        _with_columns(
            pd.DataFrame() if mismatches is None else mismatches, MISMATCH_COLUMNS, "mismatches"
        )
    )

    shared = _sort_shared_photos(
        _with_columns(
            pd.DataFrame() if shared_photos is None else shared_photos,
            SHARED_PHOTO_COLUMNS,
            "shared_photos",
        )
    )

    styles = _sort_styles(
        _with_columns(
            pd.DataFrame() if style_groups is None else style_groups, STYLE_COLUMNS, "style_groups"
        )
    )
    styles_shown = styles.groupby("group_id", sort=False).head(STYLE_MEMBERS_SHOWN)

    clusters = list(ordered.groupby("cluster_id", sort=False))
    shown = clusters[:max_clusters]
    hidden = clusters[max_clusters:]
    thumbs = _thumbnails(
        [uri for _, rows in shown for uri in rows["image_uri"].tolist()]
        + flagged["image_uri"].tolist()
        + [_group_image(rows) for _, rows in shared.groupby("group_id", sort=False)]
        + styles_shown["image_uri"].tolist(),
        thumb_px=thumb_px,
    )

    evidence_counts: Counter[str] = Counter()
    for _, rows in clusters:
        # A cluster found by two kinds of evidence counts under both: the summary answers "how
        # many clusters did each signal catch", not a partition.
        evidence_counts.update(_evidence_kinds(rows["evidence"].iloc[0]))

    html = (
        html_templates()
        .get_template(HTML_NAME)
        .render(
            run_id=run_id,
            n_clusters=len(clusters),
            n_listings=int(ordered["sku_id"].nunique()),
            evidence_counts=sorted(evidence_counts.items(), key=lambda kv: (-kv[1], kv[0])),
            totals=list((totals or {}).items()),
            clusters=[_cluster_view(cluster_id, rows, thumbs) for cluster_id, rows in shown],
            n_hidden_clusters=len(hidden),
            n_hidden_listings=sum(len(rows) for _, rows in hidden),
            thumb_px=thumb_px,
            mismatches=[_mismatch_view(row, thumbs) for row in flagged.itertuples(index=False)],
            shared_photos=_shared_photo_views(shared, thumbs),
            style_groups=_style_views(styles_shown, thumbs),
        )
    )
    # Spreadsheets open these: seller text that looks like a formula is made text (after the
    # neighbor lists are joined, since the joined cell starts with the first sku id).
    csv_text = spreadsheet_csv(ordered)
    mismatch_csv_text = spreadsheet_csv(
        flagged.assign(
            neighbour_sku_ids=flagged["neighbour_sku_ids"].map(_joined),
            neighbour_categories=flagged["neighbour_categories"].map(_joined),
        )
    )

    out_dir = Location.of(out_dir)
    paths = ReportPaths(
        html=out_dir / HTML_NAME,
        csv=out_dir / CSV_NAME,
        mismatches_csv=out_dir / MISMATCH_CSV_NAME,
    )
    # All are rendered before any is written, so a failure leaves the previous run's files;
    # each is replaced at once (a reader never opens half a page).
    paths.csv.write_text(csv_text)
    paths.mismatches_csv.write_text(mismatch_csv_text)
    if shared_photos is not None:
        # Only where the caller has shared photos to tell (the run always does): a page made
        # from clusters alone gets no empty export it never asked for.
        paths.shared_photos_csv.write_text(_shared_photos_csv(shared))
    if style_groups is not None:
        paths.style_groups_csv.write_text(spreadsheet_csv(styles))
    paths.html.write_text(html)
    return paths


def _with_columns(rows: pd.DataFrame, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in rows.columns]
    if missing and not rows.empty:
        raise ValueError(f"{what} lacks columns {missing}; expected {list(columns)}")
    # An empty run may arrive as a frame without columns; the CSV still needs its header.
    for column in missing:
        rows = rows.assign(**{column: pd.Series(dtype=object)})
    return rows


def _joined(values: object) -> str:
    """A list cell of the CSV: "a|b|c" (sku ids and categories may hold commas)."""
    if values is None or (not isinstance(values, list | tuple) and not hasattr(values, "tolist")):
        return ""
    return "|".join(str(v) for v in list(values))


def _sort_mismatches(flagged: pd.DataFrame) -> pd.DataFrame:
    """Most confident first: fewest neighbors of its own category, most of the suggested one,
    most similar to them; then sku_id."""
    order = flagged.sort_values(
        ["own_share", "suggested_share", "suggested_score", "sku_id"],
        ascending=[True, False, False, True],
        kind="mergesort",
        na_position="last",
    )
    return order[list(flagged.columns)].reset_index(drop=True)


def _sort_shared_photos(rows: pd.DataFrame) -> pd.DataFrame:
    """Largest group first (then group_id), its listings by sku_id: the page's order, and the
    CSV's."""
    order = rows.sort_values(
        ["n_listings", "group_id", "sku_id"],
        ascending=[False, True, True],
        kind="mergesort",
        na_position="last",
    )
    return order[list(rows.columns)].reset_index(drop=True)


def _group_image(rows: pd.DataFrame) -> object:
    """The image most of the group's listings point to (a re-encoded copy is one of a few)."""
    uris = rows["image_uri"].dropna()
    return uris.value_counts(sort=True).index[0] if len(uris) else None


def _shared_photo_views(
    shared: pd.DataFrame, thumbs: dict[str, _Thumb | None]
) -> list[_SharedPhotoView]:
    views = []
    for group_id, rows in shared.groupby("group_id", sort=False):
        counts = rows["category"].dropna().astype(str).value_counts()
        # Most listings first, then by name: the same page for the same data.
        categories = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        titles = [None if pd.isna(t) else str(t) for t in rows["title"]]
        image = _group_image(rows)
        views.append(
            _SharedPhotoView(
                group_id=str(group_id),
                thumb=thumbs.get(image) if isinstance(image, str) else None,
                n_listings=int(rows["n_listings"].max()),
                categories=[f"{name} ({n})" for name, n in categories],
                n_titles=int(rows["n_titles"].max()),
                # Distinct titles first: the sample is there to show the listings differ.
                sample_titles=list(dict.fromkeys(titles))[:SHARED_PHOTO_SAMPLE_TITLES],
                n_exported=len(rows),
            )
        )
    return views


def _shared_photos_csv(shared: pd.DataFrame) -> str:
    # Seller text (titles, sku ids) made safe for spreadsheets, like the other exports.
    return spreadsheet_csv(shared)


def _sort_styles(rows: pd.DataFrame) -> pd.DataFrame:
    """Largest group first, then the most cohesive (then group_id); in a group the
    representative, then the members closest to the group: the page's order and the CSV's."""
    order = rows.sort_values(
        ["group_size", "cohesion", "group_id", "is_representative", "similarity", "sku_id"],
        ascending=[False, False, True, False, False, True],
        kind="mergesort",
    )
    return order[list(rows.columns)].reset_index(drop=True)


def _style_views(shown: pd.DataFrame, thumbs: dict[str, _Thumb | None]) -> list[_StyleView]:
    views = []
    for group_id, rows in shown.groupby("group_id", sort=False):
        first = rows.iloc[0]
        views.append(
            _StyleView(
                group_id=str(group_id),
                category=str(first["category"]),
                size=int(first["group_size"]),
                cohesion=float(first["cohesion"]),
                members=[
                    _StyleMemberView(
                        sku_id=str(row.sku_id),
                        title=None if pd.isna(row.title) else str(row.title),
                        thumb=thumbs.get(row.image_uri) if isinstance(row.image_uri, str) else None,
                        is_representative=bool(row.is_representative),
                        similarity=float(row.similarity),
                    )
                    for row in rows.itertuples(index=False)
                ],
            )
        )
    return views


def _mismatch_view(row, thumbs: dict[str, _Thumb | None]) -> _MismatchView:
    ids = [] if row.neighbour_sku_ids is None else list(row.neighbour_sku_ids)
    cats = [] if row.neighbour_categories is None else list(row.neighbour_categories)
    return _MismatchView(
        sku_id=str(row.sku_id),
        title=None if pd.isna(row.title) else str(row.title),
        thumb=thumbs.get(row.image_uri) if isinstance(row.image_uri, str) else None,
        category=str(row.category),
        suggested_category=str(row.suggested_category),
        suggested_share=float(row.suggested_share),
        own_share=float(row.own_share),
        suggested_score=float(row.suggested_score),
        own_best_score=None if pd.isna(row.own_best_score) else float(row.own_best_score),
        neighbors=[f"{sku} ({cat})" for sku, cat in zip(ids, cats, strict=False)],
    )


def _sort_like_page(members: pd.DataFrame) -> pd.DataFrame:
    """Clusters by confidence (min_score descending, then cluster_id); the canonical listing first
    in its cluster, then sku_id. The CSV uses this order too, so both tell the same story."""
    keyed = members.assign(
        # min over the cluster, in case rows disagree: the card must not look surer than its
        # weakest edge.
        _cluster_score=members.groupby("cluster_id")["min_score"].transform("min"),
        _not_canonical=members["sku_id"] != members["canonical_sku_id"],
    )
    keyed = keyed.sort_values(
        ["_cluster_score", "cluster_id", "_not_canonical", "sku_id"],
        ascending=[False, True, True, True],
        kind="mergesort",
        na_position="last",
    )
    return keyed[list(members.columns)].reset_index(drop=True)


def _evidence_kinds(evidence: object) -> list[str]:
    if not isinstance(evidence, str):
        return []
    return [kind.strip() for kind in evidence.split(",") if kind.strip()]


def _cluster_view(
    cluster_id: str, rows: pd.DataFrame, thumbs: dict[str, _Thumb | None]
) -> _ClusterView:
    categories = ", ".join(dict.fromkeys(str(c) for c in rows["category"] if not pd.isna(c)))
    return _ClusterView(
        cluster_id=str(cluster_id),
        categories=categories,
        evidence=", ".join(_evidence_kinds(rows["evidence"].iloc[0])),
        min_score=float(rows["min_score"].min()),
        members=[
            _MemberView(
                sku_id=str(row.sku_id),
                title=None if pd.isna(row.title) else str(row.title),
                is_active=bool(row.is_active) if not pd.isna(row.is_active) else False,
                is_canonical=row.sku_id == row.canonical_sku_id,
                thumb=thumbs.get(row.image_uri) if isinstance(row.image_uri, str) else None,
                score=None if pd.isna(row.score) else float(row.score),
                phash_distance=None if pd.isna(row.phash_distance) else int(row.phash_distance),
            )
            for row in rows.itertuples(index=False)
        ],
    )


def _thumbnails(image_uris: list[object], *, thumb_px: int) -> dict[str, _Thumb | None]:
    # Exact copies often share one file; decode each path once.
    unique = list(dict.fromkeys(u for u in image_uris if isinstance(u, str)))
    with ThreadPoolExecutor(max_workers=_THUMB_WORKERS) as pool:
        made = pool.map(lambda uri: _thumbnail(uri, thumb_px=thumb_px), unique)
        return dict(zip(unique, made, strict=True))


def _thumbnail(image_uri: str, *, thumb_px: int) -> _Thumb | None:
    """A JPEG data URI of the image fitted in thumb_px x thumb_px, or None if it cannot be read."""
    made = thumbnail_jpeg(image_uri, thumb_px=thumb_px)
    if made is None:
        return None
    jpeg, width, height = made
    encoded = base64.b64encode(jpeg).decode("ascii")
    return _Thumb(f"data:image/jpeg;base64,{encoded}", width, height)


def thumbnail_jpeg(image_uri: str, *, thumb_px: int) -> tuple[bytes, int, int] | None:
    """The image fitted in thumb_px x thumb_px as JPEG bytes with its size, or None if it
    cannot be read (the report inlines it; the review app serves it)."""
    try:
        # Through Location: images on object storage make thumbnails too.
        with Image.open(io.BytesIO(Location.of(image_uri).read_bytes())) as image:
            # Lets the JPEG decoder downscale by 1/2..1/8 while decoding: a 12-megapixel photo
            # then costs a fraction of a full decode. Both sides stay >= thumb_px.
            image.draft("RGB", (thumb_px, thumb_px))
            image = ImageOps.exif_transpose(image)
            image = _flatten_to_rgb(image)
            image.thumbnail((thumb_px, thumb_px))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=_JPEG_QUALITY, optimize=True)
    except Exception as error:  # noqa: BLE001
        # Seller images are untrusted bytes and Pillow's decoders raise many types (OSError,
        # SyntaxError, ValueError, DecompressionBombError...). One bad photo must cost one
        # placeholder, not the whole morning's report.
        log.warning("thumbnail failed for %s: %s: %s", image_uri, type(error).__name__, error)
        return None
    return buffer.getvalue(), image.width, image.height


def _flatten_to_rgb(image: Image.Image) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    paper = Image.new("RGB", rgba.size, _PAPER)
    paper.paste(rgba, mask=rgba.getchannel("A"))
    return paper


@cache
def html_templates(folder: str = "templates") -> jinja2.Environment:
    """The Jinja environment of one package template folder (the report's, the review app's)."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("lookalike", folder),
        # Titles, sku_ids and categories are seller text: escape everything, whatever the
        # template's file name, and never mark any of it safe.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
