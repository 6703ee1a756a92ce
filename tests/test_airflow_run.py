"""One real `airflow dags test` of the nightly DAG: every task spark-submits its stage.

Airflow runs from its own venv with a fresh SQLite metadata database; `spark-submit` and
`lookalike` come from this project's venv through the PATH, as the DAG's docstring says a
deployment sets it up. The run publishes the tables of a small generated catalogue.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

from lookalike.demo import generate_demo_catalog

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RUN_DATE = "2026-11-22"


def _airflow() -> Path:
    python = os.environ.get("LOOKALIKE_AIRFLOW_PYTHON")
    if not python or not Path(python).is_file():
        pytest.skip(
            f"Airflow venv not found (LOOKALIKE_AIRFLOW_PYTHON={python!r}); "
            "`make airflow-venv` creates it, `make test` passes it"
        )
    return Path(python).parent / "airflow"


def test_airflow_dags_test_runs_the_whole_dag_and_publishes(tmp_path, pretrained_weights):
    airflow = _airflow()
    demo = generate_demo_catalog(tmp_path / "demo", n_products=24)
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        "spark:\n  master: local[2]\n  conf:\n    spark.ui.enabled: 'false'\n"
        f"catalog:\n  path: {demo.catalog_path}\noutput:\n  root: {tmp_path / 'out'}\n"
        "neighbors:\n  k: 2\n"
        # A 24-product catalogue with the demo's eight broken rows: looser gates.
        "gates:\n  min_full_topk_share: 0.5\n  max_reject_rate: 0.5\n"
    )
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHONPATH"))}
    env.update(
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "airflow_dags"),
        AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[2]"}',
        PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        LOOKALIKE_HOME=str(REPO),
        LOOKALIKE_CONF=str(conf),
    )

    def run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(airflow), *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    for command in (("db", "migrate"), ("pools", "set", "lookalike_gpu", "1", "lookalike GPUs")):
        done = run(*command)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    done = run("dags", "test", "lookalike_nightly", RUN_DATE, timeout=1200)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-5000:]
    assert "state=success" in log

    tables = tmp_path / "out" / "tables"
    runs = DeltaTable(str(tables / "runs")).to_pyarrow_table().to_pylist()
    assert [(r["run_id"], r["status"]) for r in runs] == [(RUN_DATE, "published")]
    similar = DeltaTable(str(tables / "similar_items")).to_pandas()
    assert len(similar) > 0 and set(similar["run_id"]) == {RUN_DATE}
