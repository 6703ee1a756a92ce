"""Where a run's files live under ``output.root``: one place, so stages agree on it.

```
<root>/runs/<run_id>/        a run's working data (Parquet per stage, index files, stats)
<root>/tables/<name>/        the published Delta tables the storefront and merchandisers read
<root>/reports/<run_id>/     the duplicate-listing report
```

``root`` is a local folder or a URI on object storage (``s3a://bucket/lookalike``): every
place is a ``lookalike.core.storage.Location``, which Spark and delta-rs take as its address.
"""

from __future__ import annotations

from dataclasses import dataclass

from lookalike.core.storage import Location

# neighbors after duplicates: a SKU's own duplicate listings are no recommendation.
STAGES = (
    "ingest",
    "embed",
    "index",
    "duplicates",
    "neighbors",
    "styles",
    "mismatches",
    "report",
    "publish",
)


@dataclass(frozen=True)
class TableLayout:
    """The published tables under ``<root>/tables/``: found without a run id."""

    root: Location

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Location.of(self.root))

    @property
    def folder(self) -> Location:
        return self.root / "tables"

    def table(self, name: str) -> Location:
        return self.folder / name


@dataclass(frozen=True)
class RunLayout:
    root: Location
    run_id: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Location.of(self.root))

    @property
    def work(self) -> Location:
        return self.root / "runs" / self.run_id

    @property
    def catalog(self) -> Location:
        return self.work / "catalog"

    def rejects(self, stage: str) -> Location:
        return self.work / "rejects" / stage

    @property
    def embeddings(self) -> Location:
        return self.work / "embeddings"

    @property
    def index_dir(self) -> Location:
        return self.work / "index"

    @property
    def index_manifest(self) -> Location:
        return self.work / "index_manifest"

    @property
    def similar_items(self) -> Location:
        return self.work / "similar_items"

    @property
    def neighbor_candidates(self) -> Location:
        """Each SKU's nearest as the shards answered (before duplicates and variants are
        taken out), written by neighbors, read by styles."""
        return self.work / "neighbor_candidates"

    @property
    def style_groups(self) -> Location:
        return self.work / "style_groups"

    @property
    def duplicate_pairs(self) -> Location:
        return self.work / "duplicate_pairs"

    @property
    def duplicate_clusters(self) -> Location:
        return self.work / "duplicate_clusters"

    @property
    def shared_photos(self) -> Location:
        """Listings without a photo of their own: one image shared by many different listings
        (a placeholder, a logo), written by the duplicates stage, read by neighbors."""
        return self.work / "shared_photos"

    @property
    def category_mismatches(self) -> Location:
        return self.work / "category_mismatches"

    def stats(self, stage: str) -> Location:
        return self.work / "stats" / f"{stage}.json"

    @property
    def report_dir(self) -> Location:
        return self.root / "reports" / self.run_id

    @property
    def tables(self) -> Location:
        return TableLayout(self.root).folder

    def table(self, name: str) -> Location:
        return TableLayout(self.root).table(name)
