"""The snapshot cache that the service's workers share."""

from __future__ import annotations

import threading

from lookalike.serve import snapshot
from lookalike.serve.synthetic import publish_tables, synthetic_tables
from tests.serve.published import RUN_A

RUN_B = "2026-12-02"


def test_workers_sharing_a_cache_build_a_run_once_and_answer_alike(
    published, tmp_path, monkeypatch
):
    tables_dir = published / "tables"
    run = snapshot.latest_published_run(tables_dir)
    builds = []
    real_build = snapshot.build_similar_items

    def counting_build(*args, **kwargs):
        builds.append(threading.current_thread().name)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(snapshot, "build_similar_items", counting_build)
    cache = tmp_path / "cache"
    loaded: dict[str, snapshot.Snapshot] = {}
    errors: list[BaseException] = []

    def load(name: str) -> None:
        try:
            loaded[name] = snapshot.load_snapshot(tables_dir, run, cache)
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    workers = [threading.Thread(target=load, args=(f"w{i}",), name=f"w{i}") for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert not errors, errors
    assert len(builds) == 1, f"the run was built {len(builds)} times: {builds}"
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == [run.key]
    answers = {name: s.similar.lookup("SKU-007", 10) for name, s in loaded.items()}
    assert len(answers) == 4 and answers["w0"], answers
    assert all(answer == answers["w0"] for answer in answers.values())


def test_pruning_drops_the_old_runs_folder_and_lock(published, tmp_path):
    tables_dir = published / "tables"
    cache = tmp_path / "cache"
    old = snapshot.load_snapshot(tables_dir, snapshot.latest_published_run(tables_dir), cache)
    publish_tables(published, RUN_B, synthetic_tables(600, 10, RUN_B, n_categories=20, seed=3))
    new = snapshot.load_snapshot(tables_dir, snapshot.latest_published_run(tables_dir), cache)
    assert (old.run_id, new.run_id) == (RUN_A, RUN_B)

    snapshot.prune_cache(cache, {new.run.key})

    assert sorted(p.name for p in cache.iterdir()) == [f".{new.run.key}.lock", new.run.key]
    # The pruned run's arrays stay readable through the mapping that already holds them.
    assert old.similar.lookup("SKU-007", 3)
