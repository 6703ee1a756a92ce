"""Named points where a test can stop the job, to prove that a crash there loses nothing.

``LOOKALIKE_FAULT_POINT=<name>`` makes the process, on reaching that point, write
``<name>`` to the file named by ``LOOKALIKE_FAULT_READY`` and then wait to be killed.
Unset (always, outside the crash tests), a point costs one environment lookup.
"""

from __future__ import annotations

import os
import time


def point(name: str) -> None:
    if os.environ.get("LOOKALIKE_FAULT_POINT") != name:
        return
    ready = os.environ.get("LOOKALIKE_FAULT_READY")
    if ready:
        with open(ready, "w") as handle:
            handle.write(name)
    while True:  # the test sends SIGKILL now
        time.sleep(1)
