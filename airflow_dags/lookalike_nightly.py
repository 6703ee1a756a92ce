"""The nightly lookalike run as an Airflow 3 DAG: one spark-submit per stage of the job.

    ingest >> embed >> index >> duplicates >> [neighbors, report] >> publish
               embed >> mismatches >> report

(neighbors leaves a SKU's own duplicate listings out of its similar items, so it needs the
duplicate clusters; the report shows the duplicate clusters and the category mismatches.)

Each task runs ``<LOOKALIKE_HOME>/jobs/<stage>.py --conf <LOOKALIKE_CONF> --run-date {{ ds }}``.
The run date is the DAG run's logical date, so re-running or clearing a date reruns exactly that
date; the jobs replace what an earlier try of the same date wrote.

Deploying
---------
1. Airflow gets its own venv (``make airflow-venv`` builds ``.venv-airflow`` from
   ``airflow_dags/requirements.txt``). The Spark provider depends on ``pyspark-client``, which
   installs its own ``pyspark`` package over the full one, so Airflow and the job never share
   a venv.
2. The project's venv (``make venv``) exists on every Airflow worker, and its ``bin/`` comes first
   on the worker's PATH. The provider runs whichever ``spark-submit`` it finds on the PATH: a
   connection may only name ``spark-submit``/``spark2-submit``/``spark3-submit`` and refuses a
   ``spark-home``, so the PATH is what makes it the project's Spark (pyspark 4.2.0), not Airflow's.
   Also set ``PYSPARK_PYTHON`` and ``PYSPARK_DRIVER_PYTHON`` to the project venv's ``python``
   (otherwise Spark's Python workers run the system ``python3``, which lacks pandas) and
   ``TORCH_HOME`` to where ``lookalike install-weights`` put the weights.
3. Environment read when the file is parsed (scheduler, dag processor and workers alike):
   ``LOOKALIKE_HOME``  the checkout holding ``jobs/`` and ``conf/``; default: the folder above
                       this file's folder.
   ``LOOKALIKE_CONF``  the job config; default ``<LOOKALIKE_HOME>/conf/default.yaml``; a relative
                       path is taken relative to ``LOOKALIKE_HOME``.
   ``LOOKALIKE_SPARK_CONN_ID``  the Spark connection; default ``spark_default``.
4. A pool for the embedding stage, so that one embedding run at a time has the GPUs:
   ``airflow pools set lookalike_gpu 1 "GPU executors of the lookalike embed stage"``
   (``LOOKALIKE_GPU_POOL`` names another). Tasks retry with exponential back-off (5 min
   doubling, at most 1 h); a failed task's callback logs the run's ``runs`` record (status,
   failing quality gate with its measured value) through ``lookalike run-record``.
5. The connection gives the master and deploy mode, for instance as an environment variable:
   ``AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[*]"}'`` for a single
   machine, or ``'{"conn_type": "spark", "host": "yarn", "extra": {"deploy-mode": "cluster"}}'``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG

# Only environment and path arithmetic here: this runs on every parse of the DAG folder.
LOOKALIKE_HOME = Path(os.environ.get("LOOKALIKE_HOME") or Path(__file__).resolve().parents[1])
LOOKALIKE_CONF = LOOKALIKE_HOME / (os.environ.get("LOOKALIKE_CONF") or "conf/default.yaml")
SPARK_CONN_ID = os.environ.get("LOOKALIKE_SPARK_CONN_ID") or "spark_default"
GPU_POOL = os.environ.get("LOOKALIKE_GPU_POOL") or "lookalike_gpu"

log = logging.getLogger(__name__)


def log_runs_record(context) -> None:
    """On a task's failure: log what the job recorded for the run (status, failing gates).

    Runs the project's own ``lookalike`` (first on the worker's PATH, like spark-submit): the
    runs table is a Delta table the Airflow venv has no reader for.
    """
    run_date = context["ds"]
    task = context["task_instance"].task_id
    command = shutil.which("lookalike")
    if command is None:
        log.error(
            "lookalike %s failed for %s; no `lookalike` on PATH to show its record", task, run_date
        )
        return
    shown = subprocess.run(
        [command, "run-record", run_date, "--conf", str(LOOKALIKE_CONF)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    log.error(
        "lookalike %s failed for %s; runs record:\n%s%s",
        task,
        run_date,
        shown.stdout,
        shown.stderr,
    )


STAGES = (
    "ingest",
    "embed",
    "index",
    "duplicates",
    "neighbors",
    "mismatches",
    "report",
    "publish",
)

default_args = {
    "owner": "lookalike",
    "retries": 3,
    "retry_delay": timedelta(minutes=5),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(hours=1),
    "on_failure_callback": log_runs_record,
}

with DAG(
    dag_id="lookalike_nightly",
    description="Similar items and duplicate listings from product photos",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["lookalike"],
    doc_md=__doc__,
) as dag:
    tasks = {
        stage: SparkSubmitOperator(
            task_id=stage,
            name=f"lookalike-{stage}",
            conn_id=SPARK_CONN_ID,
            application=str(LOOKALIKE_HOME / "jobs" / f"{stage}.py"),
            application_args=["--conf", str(LOOKALIKE_CONF), "--run-date", "{{ ds }}"],
            # One embedding stage at a time on the GPUs; the other stages use the default pool.
            **({"pool": GPU_POOL} if stage == "embed" else {}),
        )
        for stage in STAGES
    }

    tasks["ingest"] >> tasks["embed"] >> tasks["index"] >> tasks["duplicates"]
    tasks["duplicates"] >> [tasks["neighbors"], tasks["report"]] >> tasks["publish"]
    tasks["embed"] >> tasks["mismatches"] >> tasks["report"]
