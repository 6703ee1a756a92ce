"""Outputs addressed by URI: the job's files, index shards, Delta tables and report on object
storage, through ``lookalike.core.storage.Location``.

The object-storage tests run against a real S3 store named by ``LOOKALIKE_TEST_S3``
(``s3://bucket``; credentials and ``AWS_ENDPOINT_URL`` from the usual ``AWS_*`` variables).
CI starts one: Ceph's radosgw on loopback (``.ci/ceph-s3.sh``). Without one they skip with
that reason; they never run against an imitation of S3.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from deltalake import DeltaTable
from PIL import Image
from pyarrow import fs as pafs

from demo.catalog import generate_demo_catalog
from lookalike import tables
from lookalike.config import ConfigError, IndexSettings, load_config
from lookalike.core.ann import Shard, ShardError, build_shard, shard_id_for
from lookalike.core.storage import ChecksumMismatch, Location
from lookalike.layout import RunLayout
from lookalike.rollback import restore_table
from lookalike.session import jvm_has_class
from lookalike.stages.index import build_category_indexes
from lookalike.stages.neighbors import similar_items
from lookalike.stages.report_page import MEMBER_COLUMNS, write_duplicate_report

REPO = Path(__file__).resolve().parents[2]
S3_BUCKET = os.environ.get("LOOKALIKE_TEST_S3", "")
needs_s3 = pytest.mark.skipif(
    not S3_BUCKET,
    reason="no S3 store to test against: set LOOKALIKE_TEST_S3=s3://bucket with AWS_* "
    "credentials (AWS_ENDPOINT_URL for an S3-compatible store); CI starts Ceph's radosgw "
    "(.ci/ceph-s3.sh)",
)


@pytest.fixture
def s3_root() -> Location:
    """A fresh prefix in the test bucket (the bucket is created when missing)."""
    bucket = Location.of(S3_BUCKET)
    name = str(bucket).split("://", 1)[1].split("/")[0]
    creator, _ = pafs.FileSystem.from_uri(f"s3://{name}?allow_bucket_creation=true")
    creator.create_dir(name)
    return bucket / f"test-{uuid.uuid4().hex[:12]}"


# --- addressing: no store needed --------------------------------------------------------------


def test_paths_and_file_uris_are_one_local_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Location.of("out/runs") == Location.of(str(tmp_path / "out" / "runs"))
    assert Location.of(f"file://{tmp_path}/a%20b") == Location.of(tmp_path / "a b")
    local = Location.of(tmp_path) / "x.parquet"
    assert local.is_local and os.fspath(local) == str(tmp_path / "x.parquet")
    assert local.parent == Location.of(tmp_path) and local.name == "x.parquet"


def test_a_uri_keeps_its_scheme_and_is_never_taken_for_a_local_path():
    root = Location.of("s3a://shop-lake/lookalike/")
    layout = RunLayout(root, "2026-12-01")
    assert str(layout.table("similar_items")) == "s3a://shop-lake/lookalike/tables/similar_items"
    assert (
        str(layout.stats("embed")) == "s3a://shop-lake/lookalike/runs/2026-12-01/stats/embed.json"
    )
    assert not root.is_local and root.name == "lookalike"
    assert layout.work.parent.parent == root
    # Hadoop's s3a is pyarrow's s3: the bucket and key are what the store sees.
    with pytest.raises(TypeError, match="not a local path"):
        os.fspath(layout.work)
    with pytest.raises(TypeError, match="not a local path"):
        open(layout.stats("embed"))  # noqa: SIM115 - never a relative file named "s3a:"


@pytest.mark.parametrize(
    "uri",
    [
        "gs://shop-lake/lookalike/tables/runs",
        "abfs://lake@shopdata.dfs.core.windows.net/lookalike/tables/runs",
    ],
)
def test_a_uri_names_the_same_file_as_pyarrow_reads_it(uri):
    # pyarrow parses these without credentials or network; its path is the one to use.
    _, expected = pafs.FileSystem.from_uri(uri)
    assert Location.of(uri).arrow()[1] == expected


def test_a_uri_the_job_cannot_open_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"ftp://files/x: ftp:// is not a filesystem"):
        Location.of("ftp://files/x")
    with pytest.raises(ValueError, match=r"no bucket \(or host\) after s3a://"):
        Location.of("s3a:///lookalike")
    conf = tmp_path / "job.yaml"
    conf.write_text("output:\n  root: sftp://host/data\n")
    with pytest.raises(ConfigError, match=r"output\.root: .*sftp:// is not a filesystem"):
        load_config(conf)


def test_a_local_write_replaces_the_file_at_once_and_leaves_nothing_beside(tmp_path):
    target = Location.of(tmp_path) / "stats" / "embed.json"
    target.write_text('{"old": 1}')
    target.write_text('{"new": 2}')
    assert target.read_text() == '{"new": 2}'
    assert sorted(p.name for p in (tmp_path / "stats").iterdir()) == ["embed.json"]


def test_a_local_copy_is_a_hard_link_and_a_local_file_is_mapped_in_place(tmp_path):
    source = Location.of(tmp_path) / "part-0.parquet"
    source.write_bytes(b"PAR1")
    target = Location.of(tmp_path) / "table" / "_staging" / "t" / "part-00000.parquet"
    source.copy_to(target)
    assert os.stat(target).st_ino == os.stat(source).st_ino
    assert source.local_copy(source.sha256()) == source.path


# --- files on object storage ------------------------------------------------------------------


@needs_s3
def test_files_round_trip_on_object_storage(s3_root, tmp_path):
    stats = s3_root / "runs" / "2026-12-01" / "stats" / "embed.json"
    assert not stats.exists()
    stats.write_text('{"counts": {"vectors": 3}}')
    assert stats.is_file() and stats.read_text() == '{"counts": {"vectors": 3}}'
    assert (s3_root / "runs").is_dir() and stats.size() == 26
    assert [p.name for p in (s3_root / "runs").iterdir()] == ["2026-12-01"]

    copy = s3_root / "copy" / "embed.json"
    stats.copy_to(copy)  # server-side
    assert copy.read_bytes() == stats.read_bytes()
    local = tmp_path / "upload.bin"
    local.write_bytes(os.urandom(3 << 20))  # a multipart-sized upload
    uploaded = s3_root / "blob.bin"
    uploaded.upload(local)
    assert uploaded.sha256() == Location.of(local).sha256()

    (s3_root / "runs").rmtree()
    assert not stats.exists() and copy.exists()
    stats.unlink(missing_ok=True)  # already gone: no error
    with pytest.raises(FileNotFoundError):
        stats.unlink(missing_ok=False)


@needs_s3
def test_a_fetched_copy_is_checked_against_its_checksum(s3_root, tmp_path):
    blob = s3_root / "index" / "shoes.ann"
    blob.write_bytes(b"the right bytes")
    right = hashlib.sha256(b"the right bytes").hexdigest()
    cached = blob.local_copy(right, cache_dir=tmp_path / "cache")
    assert cached.read_bytes() == b"the right bytes" and cached.parent == tmp_path / "cache"
    blob.write_bytes(b"overwritten")  # a later run's file under the same name
    assert blob.local_copy(right, cache_dir=tmp_path / "cache") == cached  # by checksum
    with pytest.raises(ChecksumMismatch, match="shoes.ann"):
        blob.local_copy(right, cache_dir=tmp_path / "other-cache")
    assert list((tmp_path / "other-cache").iterdir()) == []  # nothing half-fetched left


# --- index shards on object storage -----------------------------------------------------------


def _members(n: int = 300, dim: int = 16, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    return pd.DataFrame(
        {
            "sku_id": [f"sku-{i:04d}" for i in range(n)],
            "is_active": np.arange(n) % 7 != 0,
            "embedding": list(vectors),
        }
    )


def _open(built: dict, category: str = "shoes") -> Shard:
    return Shard.open(
        {"shard_id": shard_id_for(category), "category": category, "metric": "angular"}
        | {"run_id": "r", "model_id": "m", **built}
    )


@needs_s3
@pytest.mark.parametrize("kind", ["annoy", "exact", "ivf"])
def test_a_shard_on_object_storage_answers_like_the_same_shard_on_disk(
    s3_root, tmp_path, monkeypatch, kind
):
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path / "cache"))
    members, settings = _members(), IndexSettings()
    shard_id = shard_id_for("shoes")
    on_disk = build_shard(
        members, shard_id=shard_id, index_dir=tmp_path / "index", settings=settings, kind=kind
    )
    remote = build_shard(
        members, shard_id=shard_id, index_dir=s3_root / "index", settings=settings, kind=kind
    )
    assert remote["path"].startswith(str(s3_root)) and remote["checksum"] == on_disk["checksum"]
    assert not list(tmp_path.glob("lookalike-shard-*"))  # the scratch folder is gone

    queries = np.stack(members["embedding"].to_numpy()[:20])
    local_answers = _open(on_disk).search(queries, 10, search_k=5000, active_only=True)
    remote_answers = _open(remote).search(queries, 10, search_k=5000, active_only=True)
    for (ids_a, scores_a), (ids_b, scores_b) in zip(local_answers, remote_answers, strict=True):
        assert ids_a.tolist() == ids_b.tolist()
        np.testing.assert_array_equal(scores_a, scores_b)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # fetched once, opened twice

    # A shard file replaced behind the manifest's back is refused, naming it.
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path / "fresh-cache"))
    Location.of(remote["path"]).write_bytes(b"not an index")
    with pytest.raises(ShardError, match=r"shoes.*does not match the manifest checksum"):
        _open(remote)
    Location.of(remote["ids_path"]).unlink()
    with pytest.raises(ShardError, match="missing s3"):
        _open(remote)


@needs_s3
def test_spark_tasks_build_and_query_shards_on_object_storage(spark, s3_root, tmp_path):
    """The executors' side: applyInPandas uploads the shards, the neighbor tasks fetch them;
    the answers are those of the same index built on local disk."""
    members = _members(n=240)
    rows = [
        (r.sku_id, "shoes" if i % 3 else "bags", bool(r.is_active), "m1", r.embedding.tolist())
        for i, r in enumerate(members.itertuples())
    ]
    embeddings_df = spark.createDataFrame(
        rows,
        "sku_id string, category string, is_active boolean, model_id string, "
        "embedding array<float>",
    )
    settings = IndexSettings(exact_max_size=100)  # shoes (160) IVF (auto), bags (80) exact

    def answers(index_dir) -> list:
        manifest_df = build_category_indexes(
            embeddings_df, index_dir=index_dir, settings=settings, run_id="r"
        ).localCheckpoint()
        found = similar_items(manifest_df, k=5, search_k=100_000, run_id="r")
        return sorted(found.select("sku_id", "rank", "similar_sku_id", "score").collect())

    remote = answers(s3_root / "index")
    assert remote == answers(Location.of(tmp_path / "index"))
    assert len({row.sku_id for row in remote}) == int(members["is_active"].sum())
    names = [p.name for p in (s3_root / "index").iterdir()]
    assert sum(n.endswith(".faiss") for n in names) and sum(n.endswith(".npy") for n in names)


# --- Delta tables on object storage -----------------------------------------------------------


def _run_files(folder: Path, run: int, n: int) -> Path:
    folder.mkdir(parents=True)
    for part in range(2):
        ids = range(part * n // 2, (part + 1) * n // 2)
        pq.write_table(
            pa.table({"sku_id": [f"s{i}" for i in ids], "run": [run] * len(ids)}),
            folder / f"part-{part:05d}.parquet",
        )
    (folder / "_SUCCESS").write_bytes(b"")
    return folder


def _rows(table: Location, version: int | None = None) -> list[tuple]:
    # Through tables.read_table, as the job reads: delta-rs's own filesystem can abort the
    # process at exit on S3 (see tables.delta_dataset).
    read = tables.read_table(table, version)
    return sorted(zip(read["sku_id"].to_pylist(), read["run"].to_pylist(), strict=True))


@needs_s3
def test_a_table_on_object_storage_is_replaced_in_one_commit_and_rolls_back(s3_root, tmp_path):
    table = s3_root / "tables" / "similar_items"
    # Run files on local disk for the first version, on the store for the second.
    assert tables.publish_files(table, [_run_files(tmp_path / "day1", 1, 10)]) == 0
    remote_run = s3_root / "runs" / "day2" / "similar_items"
    for part in _run_files(tmp_path / "day2", 2, 6).iterdir():
        part_location = remote_run / part.name
        part_location.upload(part)
    assert tables.publish_files(table, [remote_run]) == 1

    assert _rows(table, 0) == sorted((f"s{i}", 1) for i in range(10))
    assert _rows(table) == sorted((f"s{i}", 2) for i in range(6))  # replaced, not appended
    staged = list((table / tables.STAGING).iterdir())
    assert len(staged) == 1 and len(list(staged[0].iterdir())) == 2

    assert restore_table(table, 0) == 2
    assert _rows(table) == sorted((f"s{i}", 1) for i in range(10))


@needs_s3
def test_a_publish_killed_after_staging_leaves_the_table_and_the_next_one_cleans_up(
    s3_root, tmp_path
):
    table = s3_root / "tables" / "similar_items"
    tables.publish_files(table, [_run_files(tmp_path / "day1", 1, 8)])
    day2 = _run_files(tmp_path / "day2", 2, 4)
    ready = tmp_path / "ready"
    script = (
        "import sys; from lookalike import tables; tables.publish_files(sys.argv[1], [sys.argv[2]])"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(table), str(day2)],
        env=os.environ
        | {"LOOKALIKE_FAULT_POINT": "publish.staged", "LOOKALIKE_FAULT_READY": str(ready)},
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline, "never staged"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)

    assert DeltaTable(str(table)).version() == 0
    assert _rows(table) == sorted((f"s{i}", 1) for i in range(8))
    (stale,) = (table / tables.STAGING).iterdir()  # the killed run's staged copies

    assert tables.publish_files(table, [day2]) == 1
    assert _rows(table) == sorted((f"s{i}", 2) for i in range(4))
    assert stale not in list((table / tables.STAGING).iterdir())


@needs_s3
def test_a_run_scoped_table_on_object_storage_replaces_only_that_runs_rows(s3_root):
    table = s3_root / "tables" / "runs"
    for run, status in (("d1", "published"), ("d2", "failed"), ("d2", "published")):
        tables.write_table(
            table,
            pa.table({"run_id": [run], "status": [status]}),
            replace_where=f"run_id = '{run}'",
        )
    read = tables.read_table(table).sort_by("run_id").to_pylist()
    assert read == [
        {"run_id": "d1", "status": "published"},
        {"run_id": "d2", "status": "published"},
    ]


@needs_s3
def test_the_storefront_and_on_call_commands_read_and_restore_tables_on_object_storage(s3_root):
    layout = RunLayout(s3_root, "")
    for day, similar in (("2026-11-30", ["sku-b", "sku-c"]), ("2026-12-01", ["sku-d", "sku-c"])):
        version = tables.write_table(
            layout.table("similar_items"),
            pa.table(
                {
                    "run_id": [day, day],
                    "model_id": ["m1", "m1"],
                    "sku_id": ["sku-a", "sku-a"],
                    "rank": pa.array([1, 2], pa.int32()),
                    "similar_sku_id": similar,
                    "score": pa.array([0.9, 0.8], pa.float32()),
                }
            ),
        )
        record = {"similar_items": version}
        tables.write_table(
            layout.table("runs"),
            pa.table(
                {"run_id": [day], "status": ["published"], "table_versions": [json.dumps(record)]}
            ),
            replace_where=f"run_id = '{day}'",
        )

    def lookalike(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "lookalike", *args, "--output", str(s3_root)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def similar_of_a() -> list[str]:
        return [line.split()[1] for line in lookalike("similar", "sku-a").splitlines()[1:]]

    assert similar_of_a() == ["sku-d", "sku-c"]
    assert json.loads(lookalike("run-record", "2026-12-01"))["status"] == "published"
    restored = lookalike("rollback", "--to-run", "2026-11-30", "--table", "similar_items")
    assert "restored similar_items: now version 2" in restored
    assert similar_of_a() == ["sku-b", "sku-c"]


# --- the report on object storage -------------------------------------------------------------


@needs_s3
def test_the_report_is_written_to_object_storage_with_thumbnails_of_images_there(s3_root):
    images = []
    for i, colour in enumerate(("red", "blue")):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), colour).save(buffer, format="JPEG")
        image = s3_root / "images" / f"photo-{i}.jpg"
        image.write_bytes(buffer.getvalue())
        images.append(str(image))
    members = pd.DataFrame(
        [
            ("c1", "sku-a", "sku-a", "shoes", "A", images[0], True, "content_hash", 1.0, 0),
            ("c1", "sku-b", "sku-a", "shoes", "B", images[1], True, "embedding", 0.97, 3),
        ],
        columns=list(MEMBER_COLUMNS[:10]),
    ).assign(min_score=0.97, run_id="d1")
    paths = write_duplicate_report(members, s3_root / "reports" / "d1", run_id="d1")
    assert str(paths.html).startswith(str(s3_root))
    page = paths.html.read_text()
    assert page.count('src="data:image/jpeg;base64,') == 2  # both photos fetched from S3
    assert "sku-a" in paths.csv.read_text()


# --- the whole nightly job on object storage --------------------------------------------------

S3A = "org.apache.hadoop.fs.s3a.S3AFileSystem"


@needs_s3
@pytest.mark.slow
def test_the_whole_nightly_runs_and_publishes_on_object_storage(
    spark, s3_root, tmp_path, pretrained_weights
):
    if not jvm_has_class(spark, S3A):
        pytest.skip(
            "Spark here has no S3 filesystem: the hadoop-aws JARs are not on its classpath "
            "and Maven is unreachable (shared notes/environment.md); runs where they are "
            "(spark.jars.packages: org.apache.hadoop:hadoop-aws, as in conf/cluster.example.yaml)"
        )
    demo = generate_demo_catalog(tmp_path / "demo", n_products=24)
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    s3a = {
        "spark.hadoop.fs.s3.impl": S3A,  # delta-rs names the table's files s3://
        "spark.hadoop.fs.s3a.access.key": os.environ.get("AWS_ACCESS_KEY_ID", ""),
        "spark.hadoop.fs.s3a.secret.key": os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
    }
    if endpoint:
        s3a |= {
            "spark.hadoop.fs.s3a.endpoint": endpoint,
            "spark.hadoop.fs.s3a.path.style.access": "true",
            "spark.hadoop.fs.s3a.connection.ssl.enabled": str(endpoint.startswith("https")),
        }
    conf = tmp_path / "s3.yaml"
    conf.write_text(yaml.safe_dump({"spark": {"conf": s3a}, "neighbors": {"k": 3}}))
    root = "s3a://" + str(s3_root).split("://", 1)[1]
    done = subprocess.run(
        [sys.executable, "-m", "lookalike", "nightly", "--conf", str(conf)]
        + ["--run-date", "2026-12-01", "--catalog", str(demo.catalog_path), "--output", root],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    layout = RunLayout(Location.of(root), "2026-12-01")
    similar = tables.read_table(layout.table("similar_items"))
    assert similar.num_rows > 0 and set(similar["rank"].to_pylist()) == {1, 2, 3}
    assert (layout.report_dir / "duplicates.html").is_file()
    shard_files = [p.name for p in layout.index_dir.iterdir()]
    assert shard_files and all(
        n.endswith((".ann", ".faiss", ".npy", ".parquet")) for n in shard_files
    )
    assert f"Delta tables       {layout.tables}" in done.stdout
