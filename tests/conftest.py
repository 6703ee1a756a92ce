"""Shared fixtures: one real Spark session (local[2]) for the whole test run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The service tests' `published` fixture (one synthetic published run), for every test directory:
# a second conftest.py would shadow this one for the tests that import `conftest` by name.
pytest_plugins = ["tests.serve.published"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

# Spark's Python workers must run this interpreter (the venv's), not the system python3.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
# The weights installed by `make venv` live in the project's torch hub cache.
os.environ.setdefault("TORCH_HOME", str(REPO / ".cache" / "torch"))


@pytest.fixture(scope="session")
def spark():
    from lookalike.config import Config
    from lookalike.session import build_session

    config = Config().with_overrides(
        spark={
            "master": "local[2]",
            "app_name": "lookalike-tests",
            "conf": {
                "spark.sql.shuffle.partitions": "4",
                "spark.default.parallelism": "2",
                "spark.ui.enabled": "false",
            },
        }
    )
    session = build_session(config)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def pretrained_weights() -> Path:
    """The real ImageNet MobileNet-V2 file in the torch hub cache (installed by `make venv`)."""
    from lookalike.core.backbones import MOBILENET_V2_FILE, torch_hub_checkpoints

    path = torch_hub_checkpoints() / MOBILENET_V2_FILE
    if not path.exists():
        pytest.skip(f"pretrained weights not installed at {path}: `make venv` installs them")
    return path
