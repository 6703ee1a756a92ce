"""Published runs for the service's tests, made and published as the job publishes them."""

from __future__ import annotations

import pytest

from lookalike.config import Config
from lookalike.serve.app import Service, create_app, service_from_config
from lookalike.serve.synthetic import publish_tables, synthetic_tables

RUN_A = "2026-12-01"
N_SKUS = 600


@pytest.fixture
def published(tmp_path):
    """An output root holding one published run (600 SKUs x 10, 10 clusters, 10 mismatches)."""
    root = tmp_path / "output"
    publish_tables(root, RUN_A, synthetic_tables(N_SKUS, 10, RUN_A, n_categories=20))
    return root


def make_service(root, tmp_path, **serve) -> Service:
    config = Config().with_overrides(
        output={"root": str(root)},
        serve={"cache_dir": str(tmp_path / "serve-cache"), "refresh_seconds": 0, **serve},
    )
    return service_from_config(config)


def make_app(root, tmp_path, **serve):
    return create_app(make_service(root, tmp_path, **serve))
