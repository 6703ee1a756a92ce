"""The nightly DAG as Airflow itself loads it: a real DagBag, parsed by the Airflow venv.

Airflow lives in its own venv (its Spark provider would replace the project's pyspark), so this
test, which runs in the project venv, starts that venv's interpreter and reads back what the
DagBag saw as JSON. `make test` passes the interpreter in LOOKALIKE_AIRFLOW_PYTHON.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from lookalike.layout import STAGES as JOB_STAGES

REPO = Path(__file__).resolve().parents[2]
DAG_FOLDER = REPO / "airflow_dags"
DAG_ID = "lookalike_nightly"
# One task per stage of the job, each with its spark-submit entry point.
STAGES = set(JOB_STAGES)
EDGES = {
    ("ingest", "embed"),
    ("embed", "index"),
    ("index", "duplicates"),
    # Similar items leave out a SKU's own duplicate listings: neighbors needs the clusters.
    ("duplicates", "neighbors"),
    ("duplicates", "report"),
    # The report has a section of listings that look like another category.
    ("embed", "mismatches"),
    ("mismatches", "report"),
    ("neighbors", "publish"),
    # Style groups read the neighbours the neighbors stage asked the shards for.
    ("neighbors", "styles"),
    ("styles", "publish"),
    # The report shows the largest same-style groups.
    ("styles", "report"),
    ("report", "publish"),
}
RUN_DATE = "2026-11-22"

# The environment of each parse, on top of one with every LOOKALIKE_* variable removed.
SCENARIOS = {
    "defaults": {},
    "relative_conf": {
        "LOOKALIKE_HOME": "/srv/lookalike",
        "LOOKALIKE_CONF": "conf/prod.yaml",
        "LOOKALIKE_SPARK_CONN_ID": "spark_yarn",
    },
    "absolute_conf": {"LOOKALIKE_HOME": "/srv/lookalike", "LOOKALIKE_CONF": "/etc/lookalike.yaml"},
}

# Runs in the Airflow venv. DagBag parses without a metadata database; DagBag.get_dag would query
# one, so the DAG is taken from bag.dags. Each new DagBag imports the file afresh, so the
# environment variables read at parse time can differ between scenarios.
PROBE = r"""
import json, os, sys
from airflow.models import DagBag
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

dag_folder, out_path, scenarios, run_date = sys.argv[1:5]


def callbacks(task):
    found = task.on_failure_callback or []
    found = found if isinstance(found, list) else [found]
    return [getattr(cb, "__name__", repr(cb)) for cb in found]


base_env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
result = {}
for name, overrides in json.loads(scenarios).items():
    os.environ.clear()
    os.environ.update(base_env, **overrides)
    bag = DagBag(dag_folder)
    dags = {}
    for dag_id, dag in bag.dags.items():
        dags[dag_id] = {
            "schedule": dag.schedule if isinstance(dag.schedule, str) else repr(dag.schedule),
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "tasks": {
                task.task_id: {
                    "operator": type(task).__qualname__,
                    "is_spark_submit": isinstance(task, SparkSubmitOperator),
                    "upstream": sorted(task.upstream_task_ids),
                    "application": getattr(task, "application", None),
                    "application_args": getattr(task, "application_args", None),
                    "rendered_args": task.render_template(
                        getattr(task, "application_args", None), {"ds": run_date}
                    ),
                    "conn_id": getattr(task, "_conn_id", None),
                    "pool": task.pool,
                    "retries": task.retries,
                    "retry_exponential_backoff": bool(task.retry_exponential_backoff),
                    "max_retry_delay": str(task.max_retry_delay),
                    "on_failure_callback": callbacks(task),
                }
                for task in dag.tasks
            },
        }
    result[name] = {
        "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
        "dags": dags,
    }
with open(out_path, "w") as f:
    json.dump(result, f)
"""

# A SparkSubmitOperator that fails a failed quality gate at once instead of retrying it.
OPERATOR = "LookalikeStageOperator"


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What a real DagBag saw in the DAG folder, for each scenario of SCENARIOS."""
    python = os.environ.get("LOOKALIKE_AIRFLOW_PYTHON")
    if not python or not (Path(python).is_file() and os.access(python, os.X_OK)):
        pytest.skip(
            f"Airflow venv not found (LOOKALIKE_AIRFLOW_PYTHON={python!r}); "
            "`make airflow-venv` creates it, `make test` passes it"
        )
    tmp = tmp_path_factory.mktemp("airflow")
    out = tmp / "dagbag.json"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "PYTHONPATH", "PYTHONHOME"))
    }
    env["AIRFLOW_HOME"] = str(tmp / "home")
    proc = subprocess.run(
        [python, "-c", PROBE, str(DAG_FOLDER), str(out), json.dumps(SCENARIOS), RUN_DATE],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"DagBag probe failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(out.read_text())


def _dag(parsed: dict, scenario: str = "defaults") -> dict:
    seen = parsed[scenario]
    assert seen["import_errors"] == {}
    assert list(seen["dags"]) == [DAG_ID]
    return seen["dags"][DAG_ID]


def test_dag_folder_parses_without_import_errors(parsed: dict) -> None:
    for scenario in SCENARIOS:
        assert parsed[scenario]["import_errors"] == {}, scenario
        assert list(parsed[scenario]["dags"]) == [DAG_ID], scenario


def test_one_spark_submit_task_per_stage(parsed: dict) -> None:
    tasks = _dag(parsed)["tasks"]
    assert set(tasks) == STAGES
    assert {task["operator"] for task in tasks.values()} == {OPERATOR}
    assert all(task["is_spark_submit"] for task in tasks.values())


def test_dependencies(parsed: dict) -> None:
    tasks = _dag(parsed)["tasks"]
    edges = {(up, task_id) for task_id, task in tasks.items() for up in task["upstream"]}
    assert edges == EDGES


def test_each_task_submits_its_job_with_the_conf_and_the_logical_date(parsed: dict) -> None:
    for stage, task in _dag(parsed)["tasks"].items():
        application = Path(task["application"])
        assert application.parent == REPO / "jobs", stage
        assert application.name == f"{stage}.py", stage
        conf = str(REPO / "conf" / "default.yaml")
        assert task["application_args"] == ["--conf", conf, "--run-date", "{{ ds }}"], stage
        assert task["rendered_args"] == ["--conf", conf, "--run-date", RUN_DATE], stage
        assert task["conn_id"] == "spark_default", stage


def test_schedule_is_nightly_one_run_at_a_time_without_catchup(parsed: dict) -> None:
    dag = _dag(parsed)
    assert dag["schedule"] == "0 2 * * *"
    assert dag["catchup"] is False
    assert dag["max_active_runs"] == 1


@pytest.mark.parametrize(
    ("scenario", "conf", "conn_id"),
    [
        ("relative_conf", "/srv/lookalike/conf/prod.yaml", "spark_yarn"),
        ("absolute_conf", "/etc/lookalike.yaml", "spark_default"),
    ],
)
def test_environment_chooses_home_conf_and_connection(
    parsed: dict, scenario: str, conf: str, conn_id: str
) -> None:
    for stage, task in _dag(parsed, scenario)["tasks"].items():
        assert task["application"] == f"/srv/lookalike/jobs/{stage}.py"
        assert task["application_args"] == ["--conf", conf, "--run-date", "{{ ds }}"]
        assert task["conn_id"] == conn_id


def test_retries_back_off_and_failures_log_the_runs_record(parsed: dict) -> None:
    # Infrastructure failures retry; a failed gate does not (tests/e2e/test_airflow_run.py).
    for stage, task in _dag(parsed)["tasks"].items():
        assert task["retries"] == 3, stage
        assert task["retry_exponential_backoff"] is True, stage
        assert task["max_retry_delay"] == "1:00:00", stage
        assert task["on_failure_callback"] == ["log_runs_record"], stage


def test_only_the_embedding_stage_takes_the_gpu_pool(parsed: dict) -> None:
    pools = {stage: task["pool"] for stage, task in _dag(parsed)["tasks"].items()}
    assert pools.pop("embed") == "lookalike_gpu"
    assert set(pools.values()) == {"default_pool"}
