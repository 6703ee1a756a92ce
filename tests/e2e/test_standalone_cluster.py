"""The whole nightly job on a real Spark standalone cluster, through ``spark-submit``.

CI starts the cluster (``.ci/spark-standalone.sh``: a master and two one-core workers on
loopback, from the venv's pyspark) and names its master in ``LOOKALIKE_TEST_SPARK_MASTER``.
Without one these tests skip with that reason; they never pass against ``local[*]``.

The claims: the job runs unchanged on a cluster (executors in their own JVMs and Python
workers, the weights found through the forwarded ``TORCH_HOME``), it publishes what a
``local[2]`` run of the same catalog publishes, and an executor killed with SIGKILL during the
embed stage costs a retry, not a row. The output root is a folder: every process of a loopback
cluster sees it, as every executor of a real one sees object storage. (The job's Spark cannot
write ``s3a://`` here: the hadoop-aws JARs are not on its classpath and Maven is unreachable,
see ``test_storage.py``.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from demo.catalog import generate_demo_catalog

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from compare_tables import compare_roots  # noqa: E402

MASTER = os.environ.get("LOOKALIKE_TEST_SPARK_MASTER", "")
MASTER_UI = os.environ.get("LOOKALIKE_TEST_SPARK_MASTER_UI", "http://127.0.0.1:8080")
RUN_DATE = "2026-12-01"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not MASTER,
        reason="no Spark standalone cluster to submit to: CI starts one "
        '(.ci/spark-standalone.sh); here: eval "$(.ci/spark-standalone.sh)", then '
        ".ci/spark-standalone.sh stop",
    ),
]


def _spark_submit() -> str:
    return str(Path(sys.executable).parent / "spark-submit")


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def night(tmp_path_factory, pretrained_weights):
    """The catalog and configuration every run of this module shares. Small model batches
    give the embed stage several tasks a core, so that there is a mid-embed to kill in."""
    folder = tmp_path_factory.mktemp("cluster")
    demo = generate_demo_catalog(folder / "demo", n_products=24)
    conf = folder / "night.yaml"
    conf.write_text(yaml.safe_dump({"model": {"batch_size": 4}, "neighbors": {"k": 5}}))
    return folder, demo.catalog_path, conf


def _job_args(conf: Path, catalog: Path, root: Path) -> list[str]:
    return ["--conf", str(conf), "--run-date", RUN_DATE, "--catalog", str(catalog)] + [
        "--output",
        str(root),
    ]


def _submit(night, root: Path, ui_port: int) -> subprocess.Popen:
    _, catalog, conf = night
    return subprocess.Popen(
        [_spark_submit(), "--master", MASTER, "--conf", f"spark.ui.port={ui_port}"]
        + ["--conf", "spark.port.maxRetries=0", str(REPO / "jobs" / "nightly.py")]
        + _job_args(conf, catalog, root),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def local_root(night) -> Path:
    """The reference: the same night on ``local[2]``, no spark-submit."""
    folder, catalog, conf = night
    root = folder / "local"
    local_conf = folder / "local.yaml"
    local_conf.write_text(
        yaml.safe_dump({**yaml.safe_load(conf.read_text()), "spark": {"master": "local[2]"}})
    )
    done = subprocess.run(
        [sys.executable, "-m", "lookalike", "nightly"] + _job_args(local_conf, catalog, root),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def _apps() -> dict[str, dict]:
    status = _get_json(f"{MASTER_UI}/json/")
    return {app["id"]: app for app in status["activeapps"] + status["completedapps"]}


def test_the_nightly_on_the_cluster_publishes_what_a_local_run_publishes(night, local_root):
    folder = night[0]
    before = set(_apps())
    process = _submit(night, folder / "cluster", ui_port=4061)
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output
    # It ran on the cluster: one new application on this master, its executors on workers.
    new = [app for app_id, app in _apps().items() if app_id not in before]
    assert len(new) == 1 and new[0]["name"] == "lookalike", new
    differences = compare_roots(local_root, folder / "cluster")
    assert differences == {}, differences


def test_an_executor_killed_mid_embed_costs_a_retry_not_a_row(night, local_root):
    folder = night[0]
    ui = "http://127.0.0.1:4062/api/v1/applications"
    process = _submit(night, folder / "killed", ui_port=4062)
    try:
        app_id, killed = None, None
        deadline = time.monotonic() + 600
        while killed is None and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.3)
            try:
                app_id = app_id or _get_json(ui)[0]["id"]
                stages = _get_json(f"{ui}/{app_id}/stages?status=active")
            except (OSError, ValueError):
                continue  # the driver's UI is not up yet ("Spark is starting up")
            embedding = [
                s
                for s in stages
                if (s.get("description") or "").startswith("lookalike embed")
                and s["numActiveTasks"] > 0
                and s["numCompleteTasks"] > 0  # the model is loaded and answering
            ]
            if embedding:
                executors = _executor_pids(app_id)
                assert len(executors) == 2, executors  # one on each worker
                killed = executors[0]
                os.kill(killed, signal.SIGKILL)
        assert killed is not None, "the embed stage was never seen running on the cluster"
        # The driver sees the executor lost; the worker starts another one.
        lost = []
        while not lost and process.poll() is None:
            executors = _get_json(f"{ui}/{app_id}/allexecutors")
            lost = [e for e in executors if e["id"] != "driver" and not e["isActive"]]
            time.sleep(0.3)
        output, _ = process.communicate(timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert lost, "no executor was reported lost after the SIGKILL"
    assert "stage embed: done" in output
    differences = compare_roots(local_root, folder / "killed")
    assert differences == {}, differences


def _executor_pids(app_id: str) -> list[int]:
    """PIDs of this application's executor JVMs (CoarseGrainedExecutorBackend), read from
    /proc: their command lines are longer than ps shows."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # not a process, or one that just ended
        if b"org.apache.spark.executor.CoarseGrainedExecutorBackend" in args and (
            app_id.encode() in args
        ):
            pids.append(int(entry.name))
    return sorted(pids)
