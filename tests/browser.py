"""A real headless Chromium driven over the DevTools protocol, for testing pages as users see them.

``open_page(url)`` loads a page and returns what a person (and the console) would see: the
console and log errors, the text of elements matching CSS selectors, and a PNG screenshot.
No mocks: the browser is the system's Chromium (``apt-get install chromium``); tests that
need it skip with the reason when it is absent.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--window-size=1280,1600",
)


@dataclass
class PageView:
    errors: list[str] = field(default_factory=list)
    texts: dict[str, list[str]] = field(default_factory=dict)
    screenshot: bytes = b""


class _DevTools:
    def __init__(self, ws_url: str) -> None:
        import websocket  # websocket-client, a dev dependency

        # No Origin header: Chromium 111+ refuses DevTools connections from an origin it was
        # not told to allow (403), and a client outside any page has none to give.
        self._ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self._next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self._next_id += 1
        self._ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {timeout} s")
            self.events.append(json.loads(self._ws.recv()))

    def close(self) -> None:
        self._ws.close()


def _errors(events: list[dict]) -> list[str]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(
                " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Runtime.exceptionThrown":
            found.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            found.append(f"{params['entry'].get('text')} {params['entry'].get('url', '')}".strip())
    return found


def open_page(url: str, selectors: tuple[str, ...] = (), settle_s: float = 0.5) -> PageView:
    """Load ``url`` in a fresh headless Chromium; errors, texts per selector, screenshot."""
    if CHROMIUM is None:
        raise RuntimeError("no chromium on PATH")
    # Chromium's helpers may still be writing the profile as they die: cleanup is best effort.
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(
            [CHROMIUM, *_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own group: the renderer and GPU processes die with it
        )
        try:
            port = _devtools_port(process)
            # Keep reading Chromium's log so a full pipe never blocks it.
            threading.Thread(target=process.stderr.read, daemon=True).start()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                target = next(t for t in json.load(r) if t.get("type") == "page")
            tools = _DevTools(target["webSocketDebuggerUrl"])
            try:
                for domain in ("Page", "Runtime", "Log"):
                    tools.call(f"{domain}.enable")
                tools.call("Page.navigate", url=url)
                tools.wait_for("Page.loadEventFired")
                time.sleep(settle_s)  # late console messages and resource errors
                texts = {}
                for selector in selectors:
                    script = (
                        f"Array.from(document.querySelectorAll({json.dumps(selector)}))"
                        ".map(e => e.textContent.trim())"
                    )
                    result = tools.call("Runtime.evaluate", expression=script, returnByValue=True)
                    texts[selector] = result["result"]["value"]
                shot = tools.call(
                    "Page.captureScreenshot", format="png", captureBeyondViewport=True
                )
                tools.call("Runtime.evaluate", expression="0")  # drain pending events
                return PageView(_errors(tools.events), texts, base64.b64decode(shot["data"]))
            finally:
                tools.close()
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _devtools_port(process: subprocess.Popen, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    assert process.stderr is not None
    for line in process.stderr:
        match = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
        if match:
            return int(match.group(1))
        if time.monotonic() > deadline:
            break
    raise RuntimeError("chromium did not start its DevTools endpoint")


def file_url(path: os.PathLike[str]) -> str:
    return Path(path).resolve().as_uri()
