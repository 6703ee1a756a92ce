"""The Spark session every job runs in, configured the same way on a laptop and a cluster."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from lookalike.config import Config

# Settings the job relies on; a user's spark.conf may override any of them.
_REQUIRED_CONF = {
    # Spark's default INT96 timestamps become timestamp_ntz in Delta and raise the table
    # protocol to reader 3 / writer 7 (environment notes).
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.session.timeZone": "UTC",
    # Nanosecond timestamps (pandas' default) are otherwise unreadable; catalog.read_catalog
    # converts them.
    "spark.sql.legacy.parquet.nanosAsLong": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.adaptive.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
    # A row of the embeddings is ~21 kB (1280-d vector, 3 x 1280-d descriptor, thumbnail):
    # Spark's default batch of 4,096 such rows per column needs ~90 MB of contiguous heap per
    # task, and ran a 1 GB local driver out of memory reusing 100k stored vectors
    # (benchmarks/unchanged_night.py). 512 rows keep a batch near 11 MB.
    "spark.sql.parquet.columnarReaderBatchSize": "512",
    # Each writing task buffers a whole row group in the heap: Parquet's 128 MB per task then
    # ran the same driver out of memory writing those vectors back. 32 MB row groups still
    # read at full speed.
    "spark.hadoop.parquet.block.size": str(32 * 2**20),
}


def _launched_by_spark_submit() -> bool:
    # spark-submit starts the JVM first and hands the Python driver its gateway port.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def build_session(config: Config) -> SparkSession:
    """Get or create the session for a job."""
    # Workers must run this interpreter, not the system python3 (which lacks pandas/torch).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

    builder = SparkSession.builder.appName(config.spark.app_name)
    if not _launched_by_spark_submit():
        builder = builder.master(config.spark.master)
    conf = {
        **_REQUIRED_CONF,
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(config.embed.arrow_batch_size),
        **config.spark.conf,
    }
    # Executors on a cluster do not inherit the driver's environment: forward the torch
    # hub cache so that the weights installed by the set-up are found offline.
    if "TORCH_HOME" in os.environ:
        conf.setdefault("spark.executorEnv.TORCH_HOME", os.environ["TORCH_HOME"])
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def jvm_has_class(spark: SparkSession, name: str) -> bool:
    """Whether this session's JVM can load a class: JARs that a cluster adds (Delta Lake,
    hadoop-aws for ``s3a://``) and a laptop may lack."""
    try:
        loader = spark.sparkContext._jvm.java.lang.Thread.currentThread().getContextClassLoader()
        loader.loadClass(name)
    except Exception:  # noqa: BLE001 - py4j raises Py4JJavaError; no JVM view raises others
        return False
    return True
