"""Real `airflow dags test` runs of the nightly DAG: every task spark-submits its stage.

Airflow runs from its own venv with a fresh SQLite metadata database; `spark-submit` and
`lookalike` come from this project's venv through the PATH, as the DAG's docstring says a
deployment sets it up. The first run publishes the tables of a small generated catalogue; the
next ones reuse its outputs to show how failures are handled: a failed quality gate fails the
publish task at once (one try, the gate and its figure in the log), a catalogue that has not
landed fails ingest as an ordinary failure, which is retried.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable

from demo.catalog import generate_demo_catalog

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RUN_DATE = "2026-11-22"
DAG_ID = "lookalike_nightly"
# Every stage but publish: marked successful without running, so a run goes straight to the
# gates on the outputs the first run left.
BEFORE_PUBLISH = "ingest|embed|index|duplicates|neighbors|mismatches|report"


def _airflow() -> Path:
    python = os.environ.get("LOOKALIKE_AIRFLOW_PYTHON")
    if not python or not Path(python).is_file():
        pytest.skip(
            f"Airflow venv not found (LOOKALIKE_AIRFLOW_PYTHON={python!r}); "
            "`make airflow-venv` creates it, `make test` passes it"
        )
    return Path(python).parent / "airflow"


class Rig:
    """One job output root; each scenario gets its own config file and its own Airflow home,
    a copy of one freshly migrated metadata database (so its tries start from nothing)."""

    def __init__(self, root: Path, airflow: Path, catalog: Path) -> None:
        self.root, self.airflow, self.catalog = root, airflow, catalog
        self.out = root / "out"
        venv_bin = Path(sys.executable).parent
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHONPATH"))}
        env.update(
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "airflow_dags"),
            AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[2]"}',
            PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
            PYSPARK_PYTHON=sys.executable,
            PYSPARK_DRIVER_PYTHON=sys.executable,
            LOOKALIKE_HOME=str(REPO),
        )
        self.env = env

    def migrate(self) -> None:
        """The metadata database and the GPU pool, once; every scenario starts from a copy."""
        home = self.root / "airflow-pristine"
        for command in (
            ("db", "migrate"),
            ("pools", "set", "lookalike_gpu", "1", "lookalike GPUs"),
        ):
            done = subprocess.run(
                [str(self.airflow), *command],
                env={**self.env, "AIRFLOW_HOME": str(home)},
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        self.pristine_db = home / "airflow.db"

    def conf(self, name: str, *, catalog: Path | None = None, gates: str = "") -> Path:
        """A job config and an Airflow home for the scenario ``name``."""
        home = self.root / f"airflow-{name}"
        home.mkdir()
        shutil.copyfile(self.pristine_db, home / "airflow.db")
        path = self.root / f"{name}.yaml"
        path.write_text(
            "spark:\n  master: local[2]\n  conf:\n    spark.ui.enabled: 'false'\n"
            f"catalog:\n  path: {catalog or self.catalog}\noutput:\n  root: {self.out}\n"
            "neighbors:\n  k: 2\n"
            # A 24-product catalogue with the demo's eight broken rows: looser gates.
            "gates:\n  min_full_topk_share: 0.5\n  max_reject_rate: 0.5\n" + gates
        )
        return path

    def airflow_cmd(self, *args: str, conf: Path) -> tuple[list[str], dict]:
        home = self.root / f"airflow-{conf.stem}"
        env = {**self.env, "AIRFLOW_HOME": str(home), "LOOKALIKE_CONF": str(conf)}
        return [str(self.airflow), *args], env

    def run(self, *args: str, conf: Path, timeout: int = 120) -> subprocess.CompletedProcess:
        command, env = self.airflow_cmd(*args, conf=conf)
        return subprocess.run(
            command, env=env, cwd=self.root, capture_output=True, text=True, timeout=timeout
        )

    def task_instances(self, conf: Path) -> dict[str, tuple[str | None, int]]:
        """task_id -> (state, try_number) of the scenario's DAG run, from its database."""
        with sqlite3.connect(self.root / f"airflow-{conf.stem}" / "airflow.db", timeout=30) as db:
            rows = db.execute(
                "SELECT task_id, state, try_number FROM task_instance WHERE run_id = "
                "(SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1)",
                (DAG_ID,),
            ).fetchall()
        return {task: (state, tries) for task, state, tries in rows}

    def history(self, conf: Path, task_id: str) -> list[tuple[str, int]]:
        """Earlier tries of a task (Airflow moves a try there when it schedules the next)."""
        with sqlite3.connect(self.root / f"airflow-{conf.stem}" / "airflow.db", timeout=30) as db:
            return db.execute(
                "SELECT state, try_number FROM task_instance_history WHERE task_id = ?",
                (task_id,),
            ).fetchall()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, pretrained_weights) -> Rig:
    """A migrated metadata database with the GPU pool, and a small generated catalogue."""
    root = tmp_path_factory.mktemp("airflow-run")
    demo = generate_demo_catalog(root / "demo", n_products=24)
    rig = Rig(root, _airflow(), demo.catalog_path)
    rig.migrate()
    return rig


@pytest.fixture(scope="module")
def published(rig: Rig) -> Rig:
    """The rig after one whole DAG run of RUN_DATE (which should have published)."""
    rig.published_conf = rig.conf("published")
    rig.published = rig.run("dags", "test", DAG_ID, RUN_DATE, conf=rig.published_conf, timeout=1200)
    return rig


def test_airflow_dags_test_runs_the_whole_dag_and_publishes(published: Rig) -> None:
    rig = published
    log = rig.published.stdout + rig.published.stderr
    assert rig.published.returncode == 0, log[-5000:]
    assert "state=success" in log
    assert {state for state, _ in rig.task_instances(rig.published_conf).values()} == {"success"}

    tables = rig.out / "tables"
    runs = DeltaTable(str(tables / "runs")).to_pyarrow_table().to_pylist()
    assert [(r["run_id"], r["status"]) for r in runs] == [(RUN_DATE, "published")]
    similar = DeltaTable(str(tables / "similar_items")).to_pandas()
    assert len(similar) > 0 and set(similar["run_id"]) == {RUN_DATE}


def test_a_failed_gate_fails_publish_at_once_with_the_gate_and_its_figure(published: Rig) -> None:
    rig = published
    assert rig.published.returncode == 0, "needs the published run's outputs"
    tables = rig.out / "tables"
    similar_version = DeltaTable(str(tables / "similar_items")).version()
    # A spread of best scores (a standard deviation of cosines) can never reach 10.
    conf = rig.conf("impossible_gate", gates="  min_top1_score_spread: 10\n")
    started = time.monotonic()
    done = rig.run(
        "dags", "test", DAG_ID, RUN_DATE, "--mark-success-pattern", BEFORE_PUBLISH, conf=conf
    )
    seconds = time.monotonic() - started
    log = done.stdout + done.stderr
    assert done.returncode != 0, log[-5000:]

    # One try, failed, and no retry scheduled: a retry would first wait 5 minutes.
    assert rig.task_instances(conf)["publish"] == ("failed", 1), log[-5000:]
    assert rig.history(conf, "publish") == []
    assert seconds < 300, f"dags test took {seconds:.0f} s: was a retry awaited?"
    assert "AirflowFailException" in log

    # Nothing published; the job recorded the failed gate with the figure it measured.
    assert DeltaTable(str(tables / "similar_items")).version() == similar_version
    runs = DeltaTable(str(tables / "runs")).to_pyarrow_table().to_pylist()
    assert [(r["run_id"], r["status"]) for r in runs] == [(RUN_DATE, "gate_failed")]
    spread = json.loads(runs[0]["gate_results"])["top1_score_spread"]
    assert spread["passed"] is False and spread["threshold"] == 10
    # The task's log names the gate with its measured value and limit.
    assert f"top1_score_spread = {spread['value']:.4g} (limit >= 10)" in log, log[-5000:]


def test_a_catalogue_that_has_not_landed_is_retried(rig: Rig) -> None:
    """Exit code 1 (a stage failed) is not a gate: the task goes up for retry, back-off and
    all. The run is stopped once Airflow has decided; waiting out the 5-minute delay would
    only show the same decision again."""
    conf = rig.conf("no_catalog", catalog=rig.root / "not-landed-yet.csv")
    command, env = rig.airflow_cmd("dags", "test", DAG_ID, "2026-11-23", conf=conf)
    log_path = rig.root / "no_catalog.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=rig.root,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 900
            ingest = (None, 0)
            while time.monotonic() < deadline and process.poll() is None:
                time.sleep(2)
                ingest = rig.task_instances(conf).get("ingest", (None, 0))
                if ingest[0] in ("up_for_retry", "failed"):
                    break
        finally:
            # dags test waits out the retry delay in a loop; it and its children go at once.
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
    log = log_path.read_text()
    assert ingest == ("up_for_retry", 1), log[-5000:]
    assert "catalog not found" in log
    assert "AirflowFailException" not in log
