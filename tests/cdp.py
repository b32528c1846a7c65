"""A small driver for the system's headless Chromium over the DevTools protocol (CDP).

Chromium (Debian's ``chromium`` package, ``/usr/bin/chromium``) is started with
``--remote-debugging-port=0``; the port it picked is read from ``DevToolsActivePort`` in its
profile folder; commands go over one WebSocket (the ``websockets`` package) to a page
target attached in flat mode. Enough for tests: navigate and wait for the load event,
evaluate JavaScript, poll a condition, fill and submit a form, take a full-page screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import websockets

WAIT = 60.0


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    def __init__(self, profile: Path):
        self.profile = profile
        self.proc: subprocess.Popen | None = None
        self.ws = None
        self.session: str | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._event = asyncio.Event()
        self._reader: asyncio.Task | None = None

    async def start(self, width: int = 1400, height: int = 1000) -> "Browser":
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("no chromium on PATH (apt-get install -y chromium)")
        self.profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "--hide-scrollbars", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + WAIT
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit {self.proc.poll()})")
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self.ws = await websockets.connect(f"ws://127.0.0.1:{port}{path}", max_size=64 * 1024 * 1024)
        self._reader = asyncio.create_task(self._read())
        target = await self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, session=False)
        self.session = attached["sessionId"]
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        return self

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self._pending:
                fut = self._pending.pop(msg["id"])
                if "error" in msg:
                    fut.set_exception(RuntimeError(f"CDP error: {msg['error']}"))
                else:
                    fut.set_result(msg.get("result", {}))
            elif "method" in msg:
                self._events.append((msg["method"], msg.get("params", {})))
                self._event.set()

    async def send(self, method: str, params: dict[str, Any] | None = None, *, session: bool = True) -> dict[str, Any]:
        n = next(self._ids)
        msg: dict[str, Any] = {"id": n, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        fut = asyncio.get_running_loop().create_future()
        self._pending[n] = fut
        await self.ws.send(json.dumps(msg))
        return await asyncio.wait_for(fut, WAIT)

    async def _wait_event(self, method: str, since: int) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while True:
            for name, params in self._events[since:]:
                if name == method:
                    return params
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {method}")
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), 1.0)
            except asyncio.TimeoutError:
                pass

    async def goto(self, url: str) -> None:
        since = len(self._events)
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise AssertionError(f"navigation to {url} failed: {result['errorText']}")
        await self._wait_event("Page.loadEventFired", since)

    async def js(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise AssertionError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_js(self, expression: str, what: str, timeout: float = WAIT, *,
                      show: str = "document.body.innerText.slice(0, 2000)") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; the page shows: {await self.js(show)!r}")

    async def submit(self, form_selector: str) -> None:
        """Submit a form as a person would (its submit button) and wait for the next page."""
        since = len(self._events)
        await self.js(f"document.querySelector({json.dumps(form_selector)}).requestSubmit()")
        await self._wait_event("Page.loadEventFired", since)

    async def screenshot(self, path: Path, width: int = 1400) -> None:
        height = int(await self.js("Math.ceil(document.documentElement.scrollHeight)") or 1000)
        await self.send("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": min(height, 8000), "deviceScaleFactor": 1, "mobile": False})
        shot = await self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        await self.send("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": 1000, "deviceScaleFactor": 1, "mobile": False})

