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
   (``LOOKALIKE_GPU_POOL`` names another).
5. Failures. A failed quality gate (the job's exit code 3: the run was measured and nothing
   was published) fails the publish task at once, never retried: rerunning the same data
   measures the same figures. Its log names each failed gate with its measured value and
   limit. Every other failure (exit code 1 or any other, a lost executor, a killed driver)
   retries with exponential back-off (5 min doubling, at most 1 h, 3 retries). A failed
   task's callback logs the run's ``runs`` record (status, every gate with its measured
   value) through ``lookalike run-record``.
6. The connection gives the master and deploy mode, for instance as an environment variable:
   ``AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[*]"}'`` for a single
   machine, or ``'{"conn_type": "spark", "host": "yarn", "extra": {"deploy-mode": "cluster"}}'``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException

# Only environment and path arithmetic here: this runs on every parse of the DAG folder.
LOOKALIKE_HOME = Path(os.environ.get("LOOKALIKE_HOME") or Path(__file__).resolve().parents[1])
LOOKALIKE_CONF = LOOKALIKE_HOME / (os.environ.get("LOOKALIKE_CONF") or "conf/default.yaml")
SPARK_CONN_ID = os.environ.get("LOOKALIKE_SPARK_CONN_ID") or "spark_default"
GPU_POOL = os.environ.get("LOOKALIKE_GPU_POOL") or "lookalike_gpu"

# The job's exit code for a failed quality gate (lookalike.cli): measured, nothing published.
EXIT_GATE_FAILED = 3
# The stage that measures the gates before it publishes.
GATED_STAGE = "publish"

log = logging.getLogger(__name__)


def run_record(run_id: str) -> tuple[dict | None, str]:
    """The job's ``runs`` record of a run (None when there is none) and the text it printed.

    Runs the project's own ``lookalike`` (first on the worker's PATH, like spark-submit): the
    runs table is a Delta table the Airflow venv has no reader for.
    """
    command = shutil.which("lookalike")
    if command is None:
        return None, "no `lookalike` on PATH to show the run's record"
    shown = subprocess.run(
        [command, "run-record", run_id, "--conf", str(LOOKALIKE_CONF)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        record = json.loads(shown.stdout) if shown.returncode == 0 else None
    except ValueError:
        record = None
    return record, shown.stdout + shown.stderr


def failed_gates(record: dict | None) -> list[str]:
    """``gate = value (limit)`` for each gate the record says failed."""
    gates = (record or {}).get("gate_results") or {}
    return [
        f"{name} = {gate['value']:.4g} (limit {'>=' if gate['kind'] == 'min' else '<='} "
        f"{gate['threshold']:g})"
        for name, gate in sorted(gates.items())
        if not gate["passed"]
    ]


def log_runs_record(context) -> None:
    """On a task's failure: log what the job recorded for the run (status, every gate)."""
    run_id = context["ds"]  # the run id is the logical date (lookalike --run-date)
    task = context["task_instance"].task_id
    _, shown = run_record(run_id)
    log.error("lookalike %s failed for %s; runs record:\n%s", task, run_id, shown)


class LookalikeStageOperator(SparkSubmitOperator):
    """spark-submit of one stage of the job; a failed quality gate fails at once.

    The hook raises the same exception for every failed spark-submit, and Airflow retries it.
    A gate failure is deterministic (the same data measures the same figures), so it becomes
    ``AirflowFailException``, which Airflow never retries. It is recognised by the job's exit
    code 3 or, where spark-submit does not pass the driver's exit code on (cluster deploy
    mode), by this try's ``runs`` record saying ``gate_failed``.
    """

    def execute(self, context):
        started = datetime.now(UTC)
        try:
            return super().execute(context)
        except Exception as err:
            gates = self._gate_failure(context["ds"], started)
            if gates is None:
                raise
            raise AirflowFailException(
                f"lookalike {self.task_id} {context['ds']}: quality gate(s) failed, nothing "
                f"published, not retried: {'; '.join(gates)}"
            ) from err

    def _gate_failure(self, run_id: str, started: datetime) -> list[str] | None:
        """The failed gates when this try stopped at a quality gate, else None (never raises:
        the spark-submit failure must not be hidden behind one of this check)."""
        process = getattr(self._hook, "_submit_sp", None)
        returncode = getattr(process, "returncode", None)
        if returncode != EXIT_GATE_FAILED and self.task_id != GATED_STAGE:
            return None
        try:
            record, _ = run_record(run_id)
            recorded = (
                record is not None
                and record.get("status") == "gate_failed"
                and datetime.fromisoformat(str(record.get("finished_at"))) >= started
            )
            gates = failed_gates(record) if recorded else []
        except Exception:
            log.exception("lookalike %s %s: could not read the runs record", self.task_id, run_id)
            recorded, gates = False, []
        if returncode != EXIT_GATE_FAILED and not recorded:
            return None
        # Exit code 3 with no readable record still fails fast; the job's own line in the
        # spark-submit output above names the gates then.
        return gates or [f"exit code {returncode}, see the job's output above"]


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
        stage: LookalikeStageOperator(
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
    tasks["neighbors"] >> tasks["styles"] >> [tasks["report"], tasks["publish"]]
