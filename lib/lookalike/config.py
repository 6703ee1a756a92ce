"""The job's configuration: one YAML file, validated at start-up.

A bad setting fails before any work is done, with a message that names the key
(``model.batch_size: Input should be greater than 0``). Relative paths in the file are
resolved against the file's own folder, so a job behaves the same whatever directory
spark-submit or Airflow starts it from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lookalike.core.storage import Location


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or names a bad setting."""


class _Section(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkSettings(_Section):
    # Used when the job is started with `python -m lookalike`; under spark-submit the
    # master comes from spark-submit, as cluster deployments expect.
    master: str = "local[*]"
    app_name: str = "lookalike"
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("conf", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()
            }
        return value


class CatalogSettings(_Section):
    # Required (or --catalog); `make demo` generates the bundled catalog and passes it.
    path: str | None = None
    # csv / parquet: the catalog's own columns; google-merchant / shopify: a shop's feed as it
    # is (lookalike.core.feeds maps its columns); auto: from the file's name and first bytes.
    format: Literal["auto", "csv", "parquet", "google-merchant", "shopify"] = "auto"
    # Images must live under one of these folders or URI prefixes (s3://bucket/images/,
    # https://cdn.shop.example/img/: only those URLs are fetched); empty: the catalog's folder.
    image_roots: list[str] = Field(default_factory=list)
    # A longer sku_id is rejected (sku_id_too_long): it is a shifted column or an unclosed quote
    # that swallowed the rows after it, and every join and storefront lookup is keyed by it.
    max_sku_id_length: int = Field(default=256, ge=1)


class HttpSettings(_Section):
    """How images under ``https://`` (or ``http://``) image roots are fetched: per Python worker
    (lookalike.core.http_images.HttpPolicy says what each setting does)."""

    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=15.0, gt=0)
    # Retries of a 429, a 5xx, a reset or a timeout, with exponential backoff (or Retry-After).
    retries: int = Field(default=3, ge=0)
    backoff_seconds: float = Field(default=0.5, ge=0)
    max_backoff_seconds: float = Field(default=30.0, ge=0)
    max_redirects: int = Field(default=5, ge=0)
    # Requests per second to one host from one Python worker (every attempt counts): a CDN
    # takes far more; a shop's own origin server may want less.
    per_host_rate: float = Field(default=50.0, gt=0)
    # Hosts on the company network allowed to resolve to private addresses (images.internal);
    # any other host resolving to loopback, private or link-local addresses is refused.
    internal_hosts: list[str] = Field(default_factory=list)

    def policy(self, roots: tuple[str, ...], max_bytes: int):
        """The HttpPolicy for the ``http(s)`` roots among ``roots``; None when there are none."""
        from lookalike.core.http_images import HttpPolicy
        from lookalike.core.images import is_http

        prefixes = tuple(r for r in roots if is_http(r))
        if not prefixes:
            return None
        return HttpPolicy(
            prefixes=prefixes,
            max_bytes=max_bytes,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries=self.retries,
            backoff_seconds=self.backoff_seconds,
            max_backoff_seconds=self.max_backoff_seconds,
            max_redirects=self.max_redirects,
            per_host_rate=self.per_host_rate,
            internal_hosts=tuple(self.internal_hosts),
        )


class OutputSettings(_Section):
    # A folder (relative to this file) or a URI on object storage: s3a://bucket/lookalike.
    root: str = "../var"

    @field_validator("root")
    @classmethod
    def _openable(cls, value: str) -> str:
        if "://" in value:
            Location.of(value)  # ValueError naming what is wrong with the URI
        return value


class ModelSettings(_Section):
    # One of lookalike.core.backbones.BACKBONES; each brings its own preprocessing.
    backbone: Literal["mobilenet_v2", "mobilenet_v3_large", "resnet50", "efficientnet_b0"] = (
        "mobilenet_v2"
    )
    # A torchvision weights name of the backbone (IMAGENET1K_V1, IMAGENET1K_V2), or "random".
    # With a checkpoint, the name still chooses the preprocessing the checkpoint was trained
    # with.
    weights: str = "IMAGENET1K_V1"
    # A local file read with torch.load(weights_only=True): a torchvision state dict of the
    # backbone, or a lookalike checkpoint written by fine-tuning. Relative to this file.
    checkpoint: str | None = None
    # Random weights give meaningless neighbors; only tests ask for them, explicitly.
    allow_random_weights: bool = False
    # Centre-crop size; null: the size the weights were trained at (224 for all built in).
    image_size: int | None = Field(default=None, ge=32, le=1024)
    # Crop away a uniform background border (studio photos on white, padded canvases) before
    # resizing, for the embedding too. Off by default: on photos with soft shadows the
    # trimmed frame moves with JPEG noise (re-encoded copies in the first, drawn demo fell from
    # cosine 0.985 to 0.929), and it cost similar items (grocery photo -> iconic Recall@1
    # 36.8% -> 25.0%).
    # Padded copies need none of it: the duplicate descriptor always holds a trimmed view.
    trim_borders: bool = False
    batch_size: int = Field(default=32, ge=1, le=4096)
    # auto: the GPU when the executor has one, the CPU otherwise.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Torch threads per Python worker; 0 means the cores of one task (spark.task.cpus), so
    # concurrent workers x threads never exceeds the executor's cores.
    torch_threads: int = Field(default=0, ge=0)


class EmbedSettings(_Section):
    arrow_batch_size: int = Field(default=256, ge=1)
    # Reuse a stored vector when the image's content hash and the model id are unchanged.
    incremental: bool = True
    # With incremental: an image whose URI, size and modification time (and inode, or object
    # store file info) are those of its stored vector is not read at all; false reads and
    # hashes every image (for a store whose files are rewritten in place, same size and time).
    reuse_by_listing: bool = True
    # Threads decoding images while the model runs; 0: 1 on the CPU (the model uses the
    # cores), 4 next to a GPU (decoding is then the bottleneck).
    decode_threads: int = Field(default=0, ge=0, le=64)
    max_image_bytes: int = Field(default=50_000_000, ge=1)
    # Decompression-bomb guard: a tiny file that decodes to gigapixels is rejected.
    max_image_pixels: int = Field(default=64_000_000, ge=1)


class IndexSettings(_Section):
    n_trees: int = Field(default=20, ge=1)
    # Nodes Annoy inspects per query (at least n_trees * n for n neighbors asked); -1:
    # n_trees * n. 5000 at 20 trees: recall@10 0.974 on real MobileNet-V2 vectors, where
    # Annoy's default gave 0.920 (benchmarks/pca_real.py).
    search_k: int = Field(default=5000, ge=-1)
    seed: int = 42
    # A category with more vectors is split into equal sub-shards (by a hash of sku_id),
    # each SKU asking every sub-shard of its category.
    max_shard_size: int = Field(default=250_000, ge=2)
    # The index of a shard above exact_max_size: auto (IVF, faiss IndexIVFFlat: measured
    # faster and better than Annoy on 1280-d vectors, see nprobe), annoy (the design card's
    # Annoy forest), ivf, or exact (every shard searched exactly, whatever its size).
    kind: Literal["auto", "exact", "annoy", "ivf"] = "auto"
    # Shards of at most this many vectors are searched exactly (matrix products) instead of
    # through an index: the measured crossover against Annoy on one core for 1280-d vectors
    # (about 55,000; 80,000 for 128-d; benchmarks/exact_vs_annoy.py).
    exact_max_size: int = Field(default=50_000, ge=0)
    # index.kind auto: a shard from this size up to exact_max_size is built as IVF first and
    # kept as IVF when its queries, at the tuned nprobe, compare at most a tenth of its
    # vectors (ann.IVF_MAX_SCAN, from the measured cost of a scanned distance against exact
    # search), else saved exact. Clustered vectors pass (IVF took 0.11x the exact time at
    # 37,000); real photos, which need about 1/8 of the lists, filled unevenly, do not, and
    # pay the trial: a k-means and tuning measured at 0.16x the exact search at 20,000 and
    # 0.09x at 37,000 (falling as 1/sqrt(n)). Below 20,000 the trial costs too much of it.
    auto_ivf_min_size: int = Field(default=20_000, ge=0)
    # IVF shards: each scans the fewest of its inverted lists (about 4 sqrt(n)) whose top-10
    # of 200 sampled members reach this recall against exact search, measured when the shard
    # is built and stored in its file. Measured per shard because no fixed count holds: on
    # real MobileNet-V2 photos a fixed 8 lists fell from recall@10 0.97 (2,000 photos) to
    # 0.94 (6,717), and they needed about 1/8 of the lists for 0.97, where clustered
    # synthetic vectors reach 0.99 with 2 (benchmarks/exact_vs_annoy.py --real and --sweep).
    # 0.97 is what the Annoy defaults reach on those real photos.
    target_recall: float = Field(default=0.97, gt=0, le=1)
    # A fixed number of IVF lists scanned instead (0: tuned to target_recall).
    nprobe: int = Field(default=0, ge=0)
    # PCA before indexing: 0 keeps the vectors as they are, otherwise the number of
    # principal axes kept (fitted on a sample of the run's vectors). Off by default: on real
    # photos 256 axes kept same-category precision (0.768 either way) with 2x faster queries
    # and a 4x smaller index, but centring moves the cosines that
    # duplicates.candidate_min_similarity is calibrated on (benchmarks/pca_real.py): planted
    # copies kept as candidates fell from 394/394 to 393/394 at 0.7 and to 389/394 at a
    # threshold recalibrated on other photos (benchmarks/pca_decision.py, README).
    pca_dim: int = Field(default=0, ge=0, le=4096)
    # Scale each kept axis to unit variance (whitening) before the vectors are normalised:
    # on real photos it cost same-category precision (0.768 -> 0.725 at 256 axes).
    pca_whiten: bool = False
    # Vectors sampled to fit the projection.
    pca_sample: int = Field(default=20_000, ge=100)


class NeighborsSettings(_Section):
    k: int = Field(default=10, ge=1, le=1000)
    # Queries sampled per Annoy shard whose exact answers measure recall@k (runs record,
    # gates.min_recall); 0: not measured.
    recall_queries: int = Field(default=200, ge=0)
    # With a catalog category_path: a category too small for K takes the rest from the
    # categories under its parent (then grandparent, ...), own-category items first and each
    # row's `source` naming the ancestor. false: every category keeps to itself.
    borrow_from_ancestors: bool = True


class StylesSettings(_Section):
    # Same-style groups (stages/styles.py, core/styles.py), chosen on half of the grocery
    # products' real photos for three seeds and reported on the other half and on clothing
    # (benchmarks/style_groups.py): two listings join one style when each is among the
    # other's k nearest, at a cosine of at least min_similarity, sharing min_shared of their
    # neighbours at that cosine. k 10 / 4 shared had the best worst-seed ARI (0.649; 5
    # neighbours 0.46, 20 neighbours 0.50, no shared rule 0.50, which chained styles
    # together); min_similarity is the strictest within 0.01 of it (0.70: ARI 0.643), the
    # rule that keeps a category of a few unrelated listings apart. On the other half: ARI
    # 0.685-0.750, purity 0.868-0.925, coverage 0.975. The neighbours read are those the
    # neighbors stage asked for: a k above neighbors.k reads neighbors.k (counts say so).
    k: int = Field(default=10, ge=1, le=1000)
    min_shared: int = Field(default=4, ge=0)
    min_similarity: float = Field(default=0.70, gt=0.0, le=1.0)
    # Members a group needs (a duplicate cluster is one member).
    min_size: int = Field(default=2, ge=2)


class DuplicatesSettings(_Section):
    # Similarity of two listings' duplicate descriptors (R-MAC of the whole frame, the
    # trimmed frame and the zoomed centre; the best compared pair of views) above which their
    # photos count as near-duplicates. Chosen on planted copies of real clothing photos, seed
    # 7 only (benchmarks/duplicates_quality.py): the lowest with no hard negative merged.
    # A run at 0.945 merged 6 pairs (precision 0.988, crops 0.95); its pairs re-thresholded:
    # 0.95 precision 0.994, crops 0.93; 0.954 precision 1.000, crops 0.88 (a run at 0.954
    # agreed: F1 0.990); 0.956 crops 0.79.
    min_similarity: float = Field(default=0.954, gt=0.0, le=1.0)
    # The grey band below it: a candidate pair whose descriptors are at least this alike
    # is a duplicate when the pair's 64 x 64 grey thumbnails line up, one a crop of the other
    # (lookalike.core.thumbnails), to at least aligned_min_correlation. Chosen on clothing seed 7:
    # of the same-category pairs of descriptor similarity 0.85-0.954 and embedding cosine
    # 0.7+, distinct photos lined up to at most 0.731 and planted copies to at least 0.852
    # (crops 0.852-0.974); no planted copy fell below 0.90. null: no band.
    aligned_min_similarity: float | None = Field(default=0.9, gt=0.0, le=1.0)
    aligned_min_correlation: float = Field(default=0.8, gt=0.0, le=1.0)
    # How many nearest neighbors of each SKU are candidates, and the cosine of their
    # embeddings (similar items' vectors) a candidate needs.
    candidates_per_sku: int = Field(default=10, ge=1, le=1000)
    # 0.7: cropped and padded copies fall to embedding cosine 0.72-0.90 from their original
    # (at 0.9, 7% of padded copies were never compared; at 0.8, one crop of 42 on clothing
    # seed 7); the descriptor decides.
    candidate_min_similarity: float = Field(default=0.7, gt=0.0, le=1.0)
    # Annoy's search effort for those candidates (-1: its default, n_trees x n nodes). A
    # near-copy is among the very nearest, found without the effort similar items need.
    search_k: int = Field(default=-1, ge=-1)
    # Perceptual hashes (64 bits) at most this many bits apart are near-duplicates.
    phash_max_distance: int = Field(default=6, ge=0, le=32)
    # A pHash band value shared by more photos than this (blank or placeholder images) makes
    # no candidates: it would cost max_bucket^2 comparisons.
    phash_max_bucket: int = Field(default=1000, ge=2)
    # ... and their duplicate descriptors at least this similar: plain-background shots of
    # different products can share a pHash.
    phash_min_similarity: float = Field(default=0.92, gt=0.0, le=1.0)
    # Chaining guard: a cluster member's duplicate descriptor must be this similar to the
    # canonical listing's (or share its bytes); others are detached and clustered again.
    chain_min_similarity: float = Field(default=0.9, gt=0.0, le=1.0)
    # Shared photos (placeholders, logos, blanks): one image shown by at least this many
    # listings that differ (more than one category, or distinct normalised titles for at
    # least min_title_share of them) is no duplicate cluster; those listings are set apart
    # (shared_photos). Measured: benchmarks/shared_photos.py.
    shared_photo_min_listings: int = Field(default=5, ge=3)
    shared_photo_min_title_share: float = Field(default=0.6, gt=0.0, le=1.0)
    # A re-encoded copy of the image (pHash within phash_max_distance bits) joins its group
    # when the duplicate descriptors are at least this alike.
    shared_photo_min_similarity: float = Field(default=0.98, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _band_below_threshold(self) -> DuplicatesSettings:
        if self.aligned_min_similarity is not None and (
            self.aligned_min_similarity >= self.min_similarity
        ):
            raise ValueError(
                f"aligned_min_similarity ({self.aligned_min_similarity}) must be below "
                f"min_similarity ({self.min_similarity}), or null for no band"
            )
        return self


class MismatchSettings(_Section):
    """Listings that look like another category (lookalike.stages.mismatches)."""

    enabled: bool = True
    # Nearest references looked at per listing.
    k: int = Field(default=10, ge=1, le=100)
    # Flagged when at most this share of them is in the listing's own category ...
    max_own_share: float = Field(default=0.0, ge=0.0, lt=0.5)
    # ... and one other category (the suggestion) holds at least this share.
    min_share: float = Field(default=0.5, gt=0.0, le=1.0)
    # Active listings of each category compared against (the driver holds
    # categories x this many vectors).
    reference_per_category: int = Field(default=100, ge=2, le=10_000)


class PublishSettings(_Section):
    # Who writes the Delta tables: delta-rs on the driver (no JARs needed), delta-spark on
    # the executors (needs the Delta JARs), or auto: delta-spark where the JARs are.
    writer: Literal["auto", "delta-rs", "delta-spark"] = "auto"


class GateSettings(_Section):
    """Quality gates checked before publishing (lookalike.stages.gates); any failure publishes
    nothing and exits with code 3."""

    enabled: bool = True
    # Active embedded SKUs (with a photo of their own) that get as many similar items as
    # their category can give: min(K, its distinct products - 1; see lookalike.stages.gates).
    min_full_topk_share: float = Field(default=0.95, ge=0.0, le=1.0)
    # Rejected rows (ingest + embed) / rows read.
    max_reject_rate: float = Field(default=0.2, ge=0.0, le=1.0)
    # Spread (std) of each SKU's best score: constant vectors give 0.
    min_top1_score_spread: float = Field(default=0.005, ge=0.0)
    # Median best score against the previous published run.
    max_top1_score_shift: float = Field(default=0.1, ge=0.0)
    # Mean share of a SKU's similar items new since the previous published run.
    max_topk_churn: float = Field(default=0.8, ge=0.0, le=1.0)
    # recall@k of the neighbors stage's Annoy search against exact answers, measured on
    # sampled queries (all shards pooled).
    min_recall: float = Field(default=0.9, ge=0.0, le=1.0)


class ServeSettings(_Section):
    """``lookalike serve``: the storefront API and the review app (lookalike.serve)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # How often the service looks for a newer published run (seconds); 0: only at start.
    refresh_seconds: float = Field(default=30.0, ge=0.0)
    # Where the memory-mapped copies of published runs are built (a local disk; default: a
    # temporary folder per process).
    cache_dir: str | None = None
    # The JSON API: open to any caller, or only with a bearer token (LOOKALIKE_READ_TOKEN or
    # a reviewer's). Writes always need a reviewer.
    read_access: Literal["open", "token"] = "open"
    # The reviewers' secrets file (name:sha256:<hash> lines, `lookalike reviewer add`): a
    # path outside the repository; LOOKALIKE_REVIEWERS_FILE wins over it. Without either
    # the review app is read-only.
    reviewers_file: str | None = None
    max_k: int = Field(default=100, ge=1, le=1000)
    # Review pages: rows per page by default, and the most a request may ask for.
    page_size: int = Field(default=20, ge=1)
    max_page_size: int = Field(default=200, ge=1, le=10_000)
    # Cache-Control max-age of API answers (seconds): a new run shows up within it.
    cache_max_age: int = Field(default=60, ge=0)
    thumb_px: int = Field(default=160, ge=16, le=1024)

    @model_validator(mode="after")
    def _page_size_fits(self) -> ServeSettings:
        if self.page_size > self.max_page_size:
            raise ValueError(f"page_size {self.page_size} > max_page_size {self.max_page_size}")
        return self


class FineTuneSettings(_Section):
    """What ``lookalike finetune`` trains and how; defaults are the benchmarked ones."""

    # The starting point: a registered backbone and its torchvision weights.
    backbone: Literal["mobilenet_v2", "mobilenet_v3_large", "resnet50", "efficientnet_b0"] = (
        "mobilenet_v2"
    )
    weights: str = "IMAGENET1K_V1"
    # Preprocessing, as model.trim_borders and model.image_size: train on what the job will
    # embed (the checkpoint is loaded with the job's settings; they must agree).
    trim_borders: bool = False
    image_size: int | None = Field(default=None, ge=32, le=1024)
    # Width of the projection (the embedding the job stores).
    dim: int = Field(default=256, ge=1)
    # Last backbone blocks trained with the projection; 0 trains the projection alone.
    train_blocks: int = Field(default=1, ge=0, le=4)
    # triplet for groups of photos of one product (grocery photo -> iconic Recall@1 +16.6
    # points); normsoftmax for broad categories, where batch-hard triplets collapse.
    loss: Literal["normsoftmax", "triplet"] = "triplet"
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=64, ge=2)
    # Learning rates: the new projection and proxies, and the pretrained blocks.
    lr: float = Field(default=1e-3, gt=0)
    backbone_lr: float = Field(default=1e-4, ge=0)
    weight_decay: float = 1e-4
    # normsoftmax: softmax temperature over cosine similarities.
    temperature: float = Field(default=0.05, gt=0)
    # triplet: margin, and images per group in a batch (batch_size // k groups).
    margin: float = 0.2
    images_per_group: int = Field(default=4, ge=2)
    # Randomly mirror the cached feature maps (a mirrored photo is the same product).
    flip: bool = True
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _groups_fit_a_batch(self) -> FineTuneSettings:
        if self.images_per_group > self.batch_size // 2:
            raise ValueError(
                f"images_per_group: {self.images_per_group} is more than half of "
                f"batch_size {self.batch_size}"
            )
        return self

    def model_settings(self, checkpoint: str | None = None) -> ModelSettings:
        """The model configuration this training starts from, or (with ``checkpoint``) ends in."""
        return ModelSettings(
            backbone=self.backbone,
            weights=self.weights,
            checkpoint=checkpoint,
            trim_borders=self.trim_borders,
            image_size=self.image_size,
            device=self.device,
        )


class Config(_Section):
    spark: SparkSettings = Field(default_factory=SparkSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    embed: EmbedSettings = Field(default_factory=EmbedSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    neighbors: NeighborsSettings = Field(default_factory=NeighborsSettings)
    duplicates: DuplicatesSettings = Field(default_factory=DuplicatesSettings)
    styles: StylesSettings = Field(default_factory=StylesSettings)
    mismatches: MismatchSettings = Field(default_factory=MismatchSettings)
    publish: PublishSettings = Field(default_factory=PublishSettings)
    gates: GateSettings = Field(default_factory=GateSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    # The folder relative paths are resolved against (the config file's folder).
    base_dir: str = "."

    def resolve(self, path: str) -> str:
        """An absolute form of a path from this file: URIs pass through unchanged."""
        if "://" in path:
            return path
        return str((Path(self.base_dir) / path).resolve())

    @property
    def output_root(self) -> Location:
        """Where outputs go: a local folder or a URI on object storage (``s3a://...``)."""
        return Location.of(self.resolve(self.output.root))

    def with_overrides(self, **sections: dict[str, Any]) -> Config:
        """A copy with some settings replaced, validated like the file (used by the CLI)."""
        data = self.model_dump()
        for section, values in sections.items():
            data[section] = {**data.get(section, {}), **values}
        return _validate(data, source="overrides")


def _validate(data: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in err.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None


def load_config(path: str | Path) -> Config:
    """Read and validate a configuration file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read configuration file {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    # A section whose keys are all commented out reads as null: it means "the defaults".
    data = {key: {} if value is None else value for key, value in data.items()}
    if "base_dir" in data:
        raise ConfigError(f"{path}: base_dir: set by the loader, not by the file")
    data["base_dir"] = str(path.resolve().parent)
    # Workers need the checkpoint's absolute path, whatever their working directory.
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("checkpoint"), str):
        model["checkpoint"] = str(Path(data["base_dir"]) / Path(model["checkpoint"]).expanduser())
    return _validate(data, source=str(path))
