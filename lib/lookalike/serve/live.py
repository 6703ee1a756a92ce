"""The snapshot being served, and the swap to a newer one.

``LiveSnapshot.current`` is one reference to an immutable ``Snapshot``. A request reads it once
and answers from that object only, so an answer is wholly the old run's or wholly the new
one's. ``refresh`` (called every ``serve.refresh_seconds`` from a background thread) looks for a
newer published run, builds its snapshot beside the served one, and swaps the reference in one
assignment; a run that fails to load is logged, shown on /healthz, and the old one keeps
serving. The old snapshot's arrays are released when its last request finishes.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path

from lookalike.core.storage import Location
from lookalike.serve.snapshot import (
    PublishedRun,
    Snapshot,
    load_snapshot,
    prune_cache,
    published_runs,
)

log = logging.getLogger(__name__)


class LiveSnapshot:
    def __init__(self, tables_dir: Location, cache_dir: Path | None = None) -> None:
        self.tables_dir = Location.of(tables_dir)
        self.cache_dir = Path(cache_dir or tempfile.mkdtemp(prefix="lookalike-serve-"))
        self.current: Snapshot | None = None
        # The last run that failed to load, with why: shown on /healthz, retried next time.
        self.failed: tuple[PublishedRun, str] | None = None
        self.swaps = 0
        self._refreshing = threading.Lock()

    def refresh(self) -> bool:
        """Serve the latest published run if it is not served yet; True when it swapped.

        A service that serves nothing yet (just started) and cannot load the latest run falls
        back to the newest older run that loads: yesterday's answers beat none.
        """
        with self._refreshing:
            try:
                runs = published_runs(self.tables_dir)
            except Exception as err:  # the runs table unreadable: keep serving what we have
                log.exception("cannot read the runs table under %s", self.tables_dir)
                self.failed = (None, f"runs table: {type(err).__name__}: {err}")
                return False
            served = self.current
            if not runs or (served is not None and served.run.key == runs[0].key):
                return False
            # The latest run's failure is what /healthz reports, even when an older one loads.
            self.failed = None
            for run in runs if served is None else runs[:1]:
                try:
                    self._swap_to(run, served)
                    return True
                except Exception as err:
                    log.exception(
                        "run %s could not be loaded; still serving %s",
                        run.run_id,
                        served.run_id if served else "nothing",
                    )
                    self.failed = self.failed or (run, f"{type(err).__name__}: {err}")
            return False

    def _swap_to(self, run: PublishedRun, served: Snapshot | None) -> None:
        started = time.perf_counter()
        snapshot = load_snapshot(self.tables_dir, run, self.cache_dir)
        self.current = snapshot  # the swap: one reference assignment
        self.swaps += 1
        log.info(
            "serving run %s (%s) after %.2f s; was %s",
            run.run_id,
            run.key,
            time.perf_counter() - started,
            served.run.key if served else "nothing",
        )
        # The previous build stays for requests still holding it; older ones go.
        prune_cache(self.cache_dir, {run.key} | ({served.run.key} if served else set()))

    def refresh_forever(self, every_seconds: float, stop: threading.Event) -> None:
        while not stop.wait(every_seconds):
            self.refresh()

    def health(self) -> dict:
        snapshot = self.current
        body: dict = {"status": "ok" if snapshot else "no published run yet"}
        if snapshot:
            body["serving"] = snapshot.describe()
        body["swaps"] = self.swaps
        if self.failed:
            run, reason = self.failed
            body["last_load_error"] = {"run_id": run.run_id if run else None, "reason": reason}
        return body
