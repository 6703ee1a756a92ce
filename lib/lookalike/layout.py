"""Where a run's files live under ``output.root``: one place, so stages agree on it.

```
<root>/runs/<run_id>/        a run's working data (Parquet per stage, index files, stats)
<root>/tables/<name>/        the published Delta tables the storefront and merchandisers read
<root>/reports/<run_id>/     the duplicate-listing report
<root>/demo_catalog/         the bundled catalog, generated on first use
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# neighbors after duplicates: a SKU's own duplicate listings are no recommendation.
STAGES = ("ingest", "embed", "index", "duplicates", "neighbors", "mismatches", "report", "publish")


@dataclass(frozen=True)
class RunLayout:
    root: Path
    run_id: str

    @property
    def work(self) -> Path:
        return self.root / "runs" / self.run_id

    @property
    def catalog(self) -> Path:
        return self.work / "catalog"

    def rejects(self, stage: str) -> Path:
        return self.work / "rejects" / stage

    @property
    def embeddings(self) -> Path:
        return self.work / "embeddings"

    @property
    def index_dir(self) -> Path:
        return self.work / "index"

    @property
    def index_manifest(self) -> Path:
        return self.work / "index_manifest"

    @property
    def similar_items(self) -> Path:
        return self.work / "similar_items"

    @property
    def duplicate_pairs(self) -> Path:
        return self.work / "duplicate_pairs"

    @property
    def duplicate_clusters(self) -> Path:
        return self.work / "duplicate_clusters"

    @property
    def category_mismatches(self) -> Path:
        return self.work / "category_mismatches"

    def stats(self, stage: str) -> Path:
        return self.work / "stats" / f"{stage}.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "reports" / self.run_id

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    def table(self, name: str) -> Path:
        return self.tables / name

    @property
    def demo_catalog(self) -> Path:
        return self.root / "demo_catalog"
